"""Encoded instructions by text, computed once per run by the frozen encoder.

A training task's instruction (its Definition, + k examples) is the same at every meta step,
and the model that encodes it (the frozen base, or `instruction.encoder: tk_instruct`) does not
change, so its states, pooled vector and fusion key/values are computed once and reused.
Meta-training encodes every instruction of the run up front, on every rank in the same order
(under ZeRO-3 a forward of the base is collective); `encode` also fills in any it has not seen. Each entry is stored without padding; a batch's rows are
right-padded again by `Instruction.cat` (what a fresh encoding of the batch would give: the
padding is masked, and causal prefixes are right-padded anyway). Not for runs that train the
encoder's layer norms (`train.train_layer_norms` with the base as encoder): there the encoding
changes every step.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from tagi_ray.batching import instruction_batch
from tagi_ray.tagi import Instruction, TagiModel


def _trim(instr: Instruction, length: int) -> Instruction:
    """One encoded instruction without its right padding (contiguous copies, so the batch
    tensor it came from can be freed)."""
    past = None if instr.past is None else tuple((k[:, :, :length].clone(), v[:, :, :length].clone())
                                                 for k, v in instr.past)
    return Instruction(instr.states[:, :length].clone(), instr.mask[:, :length].clone(), instr.pooled.clone(), past)


class InstructionCache:
    """`encode(texts)` -> the Instruction rows of `texts`, each encoded at most once."""

    def __init__(self, model: TagiModel, tokenizer, max_length: int, encode_batch: int = 16):
        self.model, self.tokenizer, self.max_length, self.encode_batch = model, tokenizer, max_length, encode_batch
        self._rows: dict[str, Instruction] = {}
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._rows)

    @torch.no_grad()
    def _encode_missing(self, texts: Sequence[str]) -> None:
        device = self.model.device
        for i in range(0, len(texts), self.encode_batch):
            part = list(texts[i:i + self.encode_batch])
            ids, mask, _ = instruction_batch(self.tokenizer, self.model.is_encoder_decoder, part, self.max_length)
            encoded = self.model.encode_instruction(ids.to(device), mask.to(device))
            for j, text in enumerate(part):
                self._rows[text] = _trim(encoded.select(torch.tensor([j], device=device)), int(mask[j].sum()))

    def encode(self, texts: Sequence[str]) -> Instruction:
        missing = [t for t in dict.fromkeys(texts) if t not in self._rows]
        self.misses += len(missing)
        self.hits += len(texts) - len(missing)
        if missing:
            self._encode_missing(missing)
        return Instruction.cat([self._rows[t] for t in texts])
