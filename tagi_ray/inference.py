"""Text in, text out: greedy generation with generated adapters or instruction-in-prompt."""
from __future__ import annotations

from collections.abc import Sequence

import torch

from tagi_ray.batching import instruction_batch, prompt_batch
from tagi_ray.config import ModelConfig
from tagi_ray.tagi import TagiModel


@torch.no_grad()
def generate_with_instructions(model: TagiModel, tokenizer, mcfg: ModelConfig, instructions: Sequence[str],
                               sources: Sequence[str], max_new_tokens: int, use_adapter: bool = True,
                               fuse: bool | None = None) -> list[str]:
    """TAGI inference: each distinct instruction is encoded once and turned into one adapter;
    every source is generated with its own instruction's adapter, in one batch."""
    ids, mask, index = instruction_batch(tokenizer, model.is_encoder_decoder, instructions,
                                         mcfg.max_instruction_length)
    instr = model.encode_instruction(ids, mask)
    adapter = model.generate_adapter(instr) if use_adapter else None
    src_ids, src_mask = prompt_batch(tokenizer, model.is_encoder_decoder, sources, mcfg.max_source_length)
    tokens = model.generate(src_ids, src_mask, adapter, index, instr, max_new_tokens, fuse=fuse)
    return tokenizer.batch_decode(tokens, skip_special_tokens=True)


@torch.no_grad()
def generate_plain(model: TagiModel, tokenizer, sources: Sequence[str], max_source: int,
                   max_new_tokens: int) -> list[str]:
    """The base alone (e.g. the instruction-in-prompt baseline: sources are full prompts)."""
    ids, mask = prompt_batch(tokenizer, model.is_encoder_decoder, sources, max_source)
    return tokenizer.batch_decode(model.generate(ids, mask, max_new_tokens=max_new_tokens), skip_special_tokens=True)


@torch.no_grad()
def fit_hypernet_input_stats(model: TagiModel, tokenizer, mcfg: ModelConfig, instructions: Sequence[str],
                             batch_size: int = 32) -> None:
    """Pool every distinct training instruction with the (frozen) base and set the
    hypernetwork's input standardisation from them."""
    uniq = sorted(set(instructions))
    pooled = []
    for i in range(0, len(uniq), batch_size):
        ids, mask, _ = instruction_batch(tokenizer, model.is_encoder_decoder, uniq[i:i + batch_size],
                                         mcfg.max_instruction_length)
        pooled.append(model.encode_instruction(ids, mask).pooled)
    model.hypernet.fit_input_stats(torch.cat(pooled))
