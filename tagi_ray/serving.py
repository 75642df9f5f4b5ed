"""Serving primitives without Ray: adapter ids, adapter creation, and one
generation over requests that carry *different* adapters (the batched-LoRA mechanism), each
with its own decoding options (greedy by default).

    factory = AdapterFactory(model, tokenizer, cfg, checkpoint_hash(ckpt))
    entry = factory.create("Reverse the words.", examples=[{"input": .., "output": ..}])
    outputs = generate_mixed(model, tokenizer, cfg, [entry_a, entry_b], ["in a", "in b"], [16, 16])

Ray Serve's deployments (serve/) are thin wrappers around these.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from tagi_ray.batching import dedup, prompt_batch
from tagi_ray.config import TagiConfig
from tagi_ray.data.prompts import instance_text, instruction_text
from tagi_ray.decoding import GREEDY, Decoding, cut_at_stop, generate_options
from tagi_ray.inference import generate_adapters
from tagi_ray.lora import LoraWeights
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


@torch.no_grad()
def generate_mixed(model: TagiModel, tokenizer, cfg: TagiConfig, entries: Sequence[AdapterEntry],
                   inputs: Sequence[str], max_new_tokens: Sequence[int],
                   decoding: Sequence[Decoding] | None = None) -> list[str]:
    """Answers for instances that each carry their own adapter, in ONE batched generation:
    distinct adapters are stacked, every instance gathers its own row (no loop over adapters).
    `entries[i]` is instance i's adapter; each output is cut at its own max_new_tokens.
    `decoding[i]`: instance i's sampling options and stop strings (default greedy; `decoding.py`)."""
    decoding = list(decoding) if decoding is not None else [GREEDY] * len(inputs)
    if not (len(entries) == len(inputs) == len(max_new_tokens) == len(decoding)):
        raise ValueError("entries, inputs, max_new_tokens and decoding must have the same length")
    device = model.device
    by_id = {e.adapter_id: e for e in entries}
    ids, index = dedup([e.adapter_id for e in entries])
    index = index.to(device)
    weights = LoraWeights.cat([by_id[i].weights for i in ids]).to(device)
    instruction = Instruction.cat([by_id[i].instruction for i in ids]).to(device)
    ids, mask = prompt_batch(tokenizer, model.is_encoder_decoder, [instance_text(x) for x in inputs],
                             cfg.model.max_source_length)
    tokens = model.generate(ids.to(device), mask.to(device), weights, index, instruction,
                            max_new_tokens=max(max_new_tokens), **generate_options(tokenizer, decoding))
    texts = tokenizer.batch_decode([t[:n] for t, n in zip(tokens, max_new_tokens)], skip_special_tokens=True)
    return [cut_at_stop(t, d.stop) for t, d in zip(texts, decoding)]
