"""Token batches for the TAGI model from plain texts (instructions, sources, targets).

T5: encoder input = source + EOS, labels = target + EOS. Causal LMs: input = source + target +
EOS with labels -100 over the source; generation prompts are left-padded. Instructions are
right-padded (their key/values become the fusion prefix) and deduplicated per batch: `index`
maps every example to its instruction row.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch

IGNORE = -100


def pad(seqs: Sequence[Sequence[int]], value: int, left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask) padded to the longest sequence, on the right (default) or the left."""
    width = max(1, max(len(s) for s in seqs))
    ids = torch.full((len(seqs), width), value, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if not s:
            continue
        sl = slice(width - len(s), width) if left else slice(0, len(s))
        ids[i, sl] = torch.tensor(list(s), dtype=torch.long)
        mask[i, sl] = 1
    return ids, mask


def tokenize(tokenizer, texts: Sequence[str], max_len: int, eos: bool) -> list[list[int]]:
    """Token ids without special tokens, truncated to `max_len` (EOS appended within it)."""
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    keep = max_len - 1 if eos else max_len
    return [x[:keep] + ([tokenizer.eos_token_id] if eos else []) for x in ids]


@dataclass
class Batch:
    """Everything one forward needs; `index[i]` = instruction/adapter row of example i."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    instr_ids: torch.Tensor | None = None
    instr_mask: torch.Tensor | None = None
    index: torch.Tensor | None = None
    task_ids: torch.Tensor | None = None  # bank row per example (packed teachers)

    @property
    def num_tokens(self) -> int:
        """Padded token positions this batch computes over: inputs, labels, instructions."""
        n = self.input_ids.numel() + self.labels.numel()
        return n + (self.instr_ids.numel() if self.instr_ids is not None else 0)

    def to(self, device) -> Batch:
        return Batch(**{f.name: (None if getattr(self, f.name) is None else getattr(self, f.name).to(device))
                        for f in fields(self)})


def dedup(items: Sequence[str]) -> tuple[list[str], torch.Tensor]:
    """Unique items in first-seen order and the index of each original item."""
    uniq: dict[str, int] = {}
    index = [uniq.setdefault(x, len(uniq)) for x in items]
    return list(uniq), torch.tensor(index, dtype=torch.long)


def train_batch(tokenizer, is_encoder_decoder: bool, sources: Sequence[str], targets: Sequence[str],
                max_source: int, max_target: int, instructions: Sequence[str] | None = None,
                max_instruction: int = 512) -> Batch:
    """Teacher-forcing batch; with `instructions`, also the deduplicated instruction tokens."""
    tgt = tokenize(tokenizer, targets, max_target, eos=True)
    pad_id = tokenizer.pad_token_id
    if is_encoder_decoder:
        ids, mask = pad(tokenize(tokenizer, sources, max_source, eos=True), pad_id)
        labels, _ = pad(tgt, IGNORE)
    else:
        src = tokenize(tokenizer, sources, max_source, eos=False)
        ids, mask = pad([s + t for s, t in zip(src, tgt)], pad_id)
        labels, _ = pad([[IGNORE] * len(s) + t for s, t in zip(src, tgt)], IGNORE)
    batch = Batch(ids, mask, labels.contiguous())
    if instructions is not None:
        batch.instr_ids, batch.instr_mask, batch.index = instruction_batch(
            tokenizer, is_encoder_decoder, instructions, max_instruction)
    return batch


def instruction_batch(tokenizer, is_encoder_decoder: bool, instructions: Sequence[str],
                      max_instruction: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, mask, index): unique instructions right-padded, and each example's row."""
    uniq, index = dedup(instructions)
    ids, mask = pad(tokenize(tokenizer, uniq, max_instruction, eos=is_encoder_decoder), tokenizer.pad_token_id)
    return ids, mask, index


def prompt_batch(tokenizer, is_encoder_decoder: bool, sources: Sequence[str], max_source: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Generation inputs: T5 right-padded with EOS; causal LMs left-padded without."""
    if is_encoder_decoder:
        return pad(tokenize(tokenizer, sources, max_source, eos=True), tokenizer.pad_token_id)
    return pad(tokenize(tokenizer, sources, max_source, eos=False), tokenizer.pad_token_id, left=True)
