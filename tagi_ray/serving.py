"""Serving primitives without Ray: adapter ids, adapter creation, and one
generation over requests that carry *different* adapters (the batched-LoRA mechanism), each
with its own decoding options (greedy by default).

    factory = AdapterFactory(model, tokenizer, cfg, checkpoint_hash(ckpt))
    entry = factory.create("Reverse the words.", examples=[{"input": .., "output": ..}])
    outputs = generate_mixed(model, tokenizer, cfg, [entry_a, entry_b], ["in a", "in b"], [16, 16])
    done = complete_mixed(model, tokenizer, cfg, entries, prompts, max_new, decoding, streams)  # + counts

Ray Serve's deployments (serve/) are thin wrappers around these.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch

from tagi_ray.adapters import CONFIG_NAME, WEIGHTS_NAME
from tagi_ray.batching import dedup, instruction_batch, prompt_batch
from tagi_ray.config import TagiConfig
from tagi_ray.data.prompts import instance_text, instruction_text
from tagi_ray.decoding import GREEDY, Decoding, RowStream, cut_at_stop, finish_stream, generate_options
from tagi_ray.inference import generate_adapters
from tagi_ray.lora import LoraWeights
from tagi_ray.peft_upload import lora_from_peft
from tagi_ray.tagi import Instruction, TagiModel


def checkpoint_hash(ckpt_dir: str | Path) -> str:
    """sha256 over a checkpoint's files (config, hypernetwork, base weights and tokenizer)."""
    h = hashlib.sha256()
    root = Path(ckpt_dir)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode())
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def adapter_id(ckpt_hash: str, instruction: str, examples: Sequence[Mapping[str, str]]) -> str:
    """Content hash of (checkpoint, instruction, examples): equal requests share one adapter."""
    payload = json.dumps({"ckpt": ckpt_hash, "instruction": instruction,
                          "examples": [{"input": e["input"], "output": e["output"]} for e in examples]},
                         sort_keys=True)
    return "tagi-" + hashlib.sha256(payload.encode()).hexdigest()[:24]


@dataclass
class AdapterEntry:
    """One generated adapter: LoRA weights (N=1) plus the encoded instruction for fusion."""

    adapter_id: str
    weights: LoraWeights
    instruction: Instruction
    instruction_tokens: int

    def nbytes(self) -> int:
        ins = self.instruction.states.numel() * self.instruction.states.element_size()
        return self.weights.nbytes() + ins


class AdapterFactory:
    """Instruction (+ positive examples) -> AdapterEntry: the instruction is encoded once and the
    hypernetwork runs once; the entry is what every later instance of the task reuses."""

    def __init__(self, model: TagiModel, tokenizer, cfg: TagiConfig, ckpt_hash: str):
        self.model, self.tokenizer, self.cfg, self.ckpt_hash = model, tokenizer, cfg, ckpt_hash

    def adapter_id(self, instruction: str, examples: Sequence[Mapping[str, str]] = ()) -> str:
        return adapter_id(self.ckpt_hash, instruction, examples)

    def create(self, instruction: str, examples: Sequence[Mapping[str, str]] = ()) -> AdapterEntry:
        text = instruction_text(instruction, list(examples), len(examples))
        gen = generate_adapters(self.model, self.tokenizer, self.cfg.model.max_instruction_length, [text])
        return AdapterEntry(self.adapter_id(instruction, examples), gen.weights.detach().to("cpu"),
                            gen.instruction.to("cpu"), gen.tokens[0])

    def from_peft(self, files: dict[str, bytes], base_sha256: str, base_names: Sequence[str]) -> tuple[AdapterEntry, dict]:
        """An uploaded PEFT LoRA (`peft_upload.read_archive`'s files) as an entry: its weights at
        this model's rank, and an instruction that is entirely masked, so it adds nothing (the
        model then computes exactly the base + this LoRA, as PEFT does). Raises UploadError."""
        weights, config = lora_from_peft(files, self.model.targets, self.cfg.lora.rank, self.cfg.lora.alpha,
                                         base_sha256, base_names)
        digest = hashlib.sha256(self.ckpt_hash.encode() + files[CONFIG_NAME] + files[WEIGHTS_NAME]).hexdigest()
        return AdapterEntry("peft-" + digest[:24], weights, self.no_instruction, 0), config

    @cached_property
    def no_instruction(self) -> Instruction:
        """One masked-out instruction position (the fusion shapes of this model, no content);
        computed once, shared (read-only) by every uploaded adapter."""
        ids, mask, _ = instruction_batch(self.tokenizer, self.model.is_encoder_decoder, ["-"], 4)
        with torch.no_grad():
            ins = self.model.encode_instruction(ids.to(self.model.device), mask.to(self.model.device)).to("cpu")
        ins = ins.select(torch.tensor([0]))
        keep = slice(0, 1)
        past = None if ins.past is None else tuple((k[:, :, keep].zero_(), v[:, :, keep].zero_()) for k, v in ins.past)
        return Instruction(ins.states[:, keep].zero_(), torch.zeros_like(ins.mask[:, keep]),
                           torch.zeros_like(ins.pooled), past)


@dataclass
class Completion:
    """One row's result: its text, why it ended ("stop": EOS or a stop string; "length": its
    token budget), and its token counts."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


@torch.no_grad()
def complete_mixed(model: TagiModel, tokenizer, cfg: TagiConfig, entries: Sequence[AdapterEntry],
                   prompts: Sequence[str], max_new_tokens: Sequence[int],
                   decoding: Sequence[Decoding] | None = None,
                   streams: Sequence[RowStream | None] | None = None) -> list[Completion]:
    """Completions for prompts (already in the model's input format) that each carry their own
    adapter, in ONE batched generation: distinct adapters are stacked, every row gathers its own
    (no loop over adapters). Row i ends at `max_new_tokens[i]`, decodes with `decoding[i]`
    (default greedy; `decoding.py`) and, when `streams[i]` is given, streams its text there
    (a cancelled stream's row stops at the next step)."""
    n_rows = len(prompts)
    decoding = list(decoding) if decoding is not None else [GREEDY] * n_rows
    streams = list(streams) if streams is not None else [None] * n_rows
    if not (len(entries) == n_rows == len(max_new_tokens) == len(decoding) == len(streams)):
        raise ValueError("entries, prompts, max_new_tokens, decoding and streams must have the same length")
    device = model.device
    by_id = {e.adapter_id: e for e in entries}
    ids, index = dedup([e.adapter_id for e in entries])
    index = index.to(device)
    weights = LoraWeights.cat([by_id[i].weights for i in ids]).to(device)
    instruction = Instruction.cat([by_id[i].instruction for i in ids]).to(device)
    ids, mask = prompt_batch(tokenizer, model.is_encoder_decoder, list(prompts), cfg.model.max_source_length)
    tokens = model.generate(ids.to(device), mask.to(device), weights, index, instruction,
                            max_new_tokens=max(max_new_tokens),
                            **generate_options(tokenizer, decoding, max_new_tokens, streams))
    out = []
    for row, n, d, stream, used in zip(tokens, max_new_tokens, decoding, streams, mask.sum(1).tolist()):
        full = tokenizer.decode(row[:n], skip_special_tokens=True)
        text = cut_at_stop(full, d.stop)
        if stream is not None:
            finish_stream(stream, text)
        out.append(Completion(text, "length" if len(row) >= n and text == full else "stop", int(used),
                              min(len(row), n)))
    return out


def generate_mixed(model: TagiModel, tokenizer, cfg: TagiConfig, entries: Sequence[AdapterEntry],
                   inputs: Sequence[str], max_new_tokens: Sequence[int],
                   decoding: Sequence[Decoding] | None = None) -> list[str]:
    """Answers for task instances (`inputs`, put in the instance format) that each carry their own
    adapter, in one batched generation (`complete_mixed`); each output is cut at its own
    max_new_tokens and stop strings."""
    return [c.text for c in complete_mixed(model, tokenizer, cfg, entries, [instance_text(x) for x in inputs],
                                           max_new_tokens, decoding)]
