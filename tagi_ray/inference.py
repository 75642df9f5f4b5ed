"""Text in, text out: instructions -> generated adapters, and generation with them.

`generate_adapters` is THE instruction -> adapter function (export, serving, evaluation and
the CLI all call it): each distinct instruction is tokenized, encoded once by the frozen base
(or the instruction encoder) and turned into one adapter by the hypernetwork.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from tagi_ray.batching import instruction_batch, prompt_batch
from tagi_ray.config import ModelConfig
from tagi_ray.lora import LoraWeights
from tagi_ray.tagi import Instruction, TagiModel


@dataclass
class GeneratedAdapters:
    """N distinct instructions, encoded (for fusion) and turned into N adapters; `index[i]` is
    the row of the i-th input instruction, `tokens[j]` the length of instruction j."""

    instruction: Instruction
    weights: LoraWeights
    index: torch.Tensor
    tokens: list[int]


@torch.no_grad()
def generate_adapters(model: TagiModel, tokenizer, max_instruction_length: int,
                      instructions: Sequence[str]) -> GeneratedAdapters:
    """Encode each distinct instruction once (base, no adapter) and generate its adapter."""
    ids, mask, index = instruction_batch(tokenizer, model.is_encoder_decoder, instructions, max_instruction_length)
    device = model.device
    encoded = model.encode_instruction(ids.to(device), mask.to(device))
    return GeneratedAdapters(encoded, model.generate_adapter(encoded), index.to(device), mask.sum(1).tolist())


@torch.no_grad()
def generate_with_instructions(model: TagiModel, tokenizer, mcfg: ModelConfig, instructions: Sequence[str],
                               sources: Sequence[str], max_new_tokens: int, use_adapter: bool = True,
                               fuse: bool | None = None) -> list[str]:
    """TAGI inference: every source is generated with its own instruction's adapter, in one batch."""
    gen = generate_adapters(model, tokenizer, mcfg.max_instruction_length, instructions)
    src_ids, src_mask = prompt_batch(tokenizer, model.is_encoder_decoder, sources, mcfg.max_source_length)
    tokens = model.generate(src_ids.to(model.device), src_mask.to(model.device), gen.weights if use_adapter else None,
                            gen.index, gen.instruction, max_new_tokens, fuse=fuse)
    return tokenizer.batch_decode(tokens, skip_special_tokens=True)


@torch.no_grad()
def generate_plain(model: TagiModel, tokenizer, sources: Sequence[str], max_source: int,
                   max_new_tokens: int, adapter: LoraWeights | None = None, index: torch.Tensor | None = None
                   ) -> list[str]:
    """The base alone, or with given adapters (e.g. teachers), no fusion: sources are whole prompts."""
    ids, mask = prompt_batch(tokenizer, model.is_encoder_decoder, sources, max_source)
    tokens = model.generate(ids.to(model.device), mask.to(model.device), adapter, index, None, max_new_tokens,
                            fuse=False)
    return tokenizer.batch_decode(tokens, skip_special_tokens=True)


@torch.no_grad()
def fit_hypernet_input_stats(model: TagiModel, tokenizer, mcfg: ModelConfig, instructions: Sequence[str],
                             batch_size: int = 32, cache: Path | None = None) -> None:
    """Pool every distinct training instruction with the (frozen) base and set the
    hypernetwork's input standardisation from them. `cache`: a file holding the pooled vectors
    of exactly this computation (the caller keys it by base, encoder, pooling and texts): read
    when present, else written, so runs that share them pool once."""
    if not model.hypernet.reads_instruction:
        return  # e.g. the shared-LoRA ablation: nothing to fit
    if cache is not None and cache.is_file():
        model.hypernet.fit_input_stats(load_file(str(cache))["pooled"].to(model.device))
        return
    uniq = sorted(set(instructions))
    pooled = []
    for i in range(0, len(uniq), batch_size):
        ids, mask, _ = instruction_batch(tokenizer, model.is_encoder_decoder, uniq[i:i + batch_size],
                                         mcfg.max_instruction_length)
        pooled.append(model.encode_instruction(ids.to(model.device), mask.to(model.device)).pooled)
    pooled = torch.cat(pooled)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
        save_file({"pooled": pooled.detach().float().cpu().contiguous()}, str(tmp))
        tmp.replace(cache)
    model.hypernet.fit_input_stats(pooled)
