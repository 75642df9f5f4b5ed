"""Base models: tiny random-init T5 / Llama built from the config, or a local/hub-cached model.

Nothing is ever downloaded: hub names resolve only from the local Hugging Face cache
(`local_files_only=True`); a missing model raises `ModelNotFoundError` saying what to do.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (AutoConfig, AutoModelForCausalLM, AutoTokenizer, ByT5Tokenizer, LlamaConfig,
                          LlamaForCausalLM, PreTrainedModel, T5Config, T5ForConditionalGeneration)

from tagi_ray.config import ModelConfig
from tagi_ray.models.attention import use_grouped_sdpa

TINY_MODELS = {"tiny-t5": "t5", "tiny-llama": "llama"}
# Named pretrained sources: model.name -> module with `load(ModelConfig) -> BaseBundle` (imported
# on use; each may need an optional extra and raises a ModelNotFoundError naming its install).
NAMED_MODELS = {"smollm2-135m": "tagi_ray.models.smollm2"}
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelNotFoundError(FileNotFoundError):
    """The configured base model is neither a tiny builder, a local directory, nor in the local HF cache."""


@dataclass
class BaseBundle:
    """A frozen base model, its tokenizer, and whether it is an encoder-decoder ("t5") or causal ("llama")."""

    model: PreTrainedModel
    tokenizer: object
    arch: str

    def __post_init__(self) -> None:
        if self.arch != "t5":
            use_grouped_sdpa(self.model)  # grouped K/V straight into SDPA on CPU (no repeat_kv copies)

    @property
    def is_encoder_decoder(self) -> bool:
        return self.arch == "t5"


def load_tokenizer(name: str):
    """"byt5" needs no files; anything else is a local path or a cached hub tokenizer."""
    if name == "byt5":
        return ByT5Tokenizer()
    try:
        tok = AutoTokenizer.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(f"tokenizer {name!r} not found locally (no downloads at run time): {exc}") from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def _tiny_config(cfg: ModelConfig, arch: str, tokenizer) -> T5Config | LlamaConfig:
    vocab = len(tokenizer)
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    if arch == "t5":
        return T5Config(vocab_size=vocab, d_model=cfg.d_model, d_kv=cfg.d_model // cfg.num_heads, d_ff=cfg.d_ff,
                        num_layers=cfg.num_layers, num_decoder_layers=cfg.num_layers, num_heads=cfg.num_heads,
                        feed_forward_proj="gated-gelu", tie_word_embeddings=False, dropout_rate=0.0,
                        decoder_start_token_id=pad, pad_token_id=pad, eos_token_id=eos)
    return LlamaConfig(vocab_size=vocab, hidden_size=cfg.d_model, intermediate_size=cfg.d_ff,
                       num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
                       num_key_value_heads=max(1, cfg.num_heads // 2), max_position_embeddings=4096,
                       pad_token_id=pad, eos_token_id=eos, bos_token_id=None, tie_word_embeddings=False)


def build_tiny(cfg: ModelConfig, arch: str | None = None) -> BaseBundle:
    """A small random-init model (seeded by `cfg.init_seed`) with the configured dims."""
    arch = arch or TINY_MODELS[cfg.name]
    tokenizer = load_tokenizer(cfg.tokenizer)
    config = _tiny_config(cfg, arch, tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.init_seed)
        model = T5ForConditionalGeneration(config) if arch == "t5" else LlamaForCausalLM(config)
        if arch == "t5":  # HF inits an untied T5 lm_head with std 1: start from unit-scale logits instead
            with torch.no_grad():
                model.lm_head.weight.mul_(cfg.d_model ** -0.5)
    return BaseBundle(model.to(_DTYPES[cfg.dtype]), tokenizer, arch)


def _arch_of(model_type: str) -> str:
    if model_type in ("t5", "mt5", "umt5"):
        return "t5"
    return "llama"  # decoder-only causal LM (Llama family and others loaded with AutoModelForCausalLM)


def load_pretrained(name: str, dtype: str = "float32", tokenizer: str | None = None) -> BaseBundle:
    """Load a model directory (or a hub id already in the local cache) without any download."""
    try:
        config = AutoConfig.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError) as exc:
        hint = "a local directory" if Path(name).exists() else "a directory or a model in the local HF cache"
        raise ModelNotFoundError(
            f"base model {name!r} not found: expected {hint} (tagi-ray never downloads at run time; "
            f"use model.name: tiny-t5 / tiny-llama / {' / '.join(NAMED_MODELS)}, or copy the model locally). "
            f"Cause: {exc}") from None
    arch = _arch_of(config.model_type)
    cls = T5ForConditionalGeneration if arch == "t5" else AutoModelForCausalLM
    model = cls.from_pretrained(name, local_files_only=True, dtype=_DTYPES[dtype])
    tok_name = name if tokenizer in (None, "", "auto") else tokenizer
    return BaseBundle(model, load_tokenizer(tok_name), arch)


def load_base(cfg: ModelConfig) -> BaseBundle:
    """The base model named by the config: a tiny builder, a named source, a local path, or a cached hub id."""
    if cfg.name in TINY_MODELS:
        bundle = build_tiny(cfg)
    elif cfg.name in NAMED_MODELS:
        bundle = importlib.import_module(NAMED_MODELS[cfg.name]).load(cfg)
    else:
        bundle = load_pretrained(cfg.name, cfg.dtype, None if cfg.tokenizer == "byt5" else cfg.tokenizer)
    if cfg.arch != "auto" and cfg.arch != bundle.arch:
        raise ValueError(f"model.arch: config says {cfg.arch!r} but {cfg.name!r} is a {bundle.arch!r} model")
    return bundle


def save_base(bundle: BaseBundle, out_dir: str | Path) -> Path:
    """Save weights (safetensors), config and tokenizer so `load_pretrained(out_dir)` restores it.

    Written here rather than with `save_pretrained`, which silently writes nothing on a process
    whose torch.distributed rank is not 0 (any Ray Train worker but the first); tied weights
    are stored once (`safetensors.torch.save_model`) and re-tied by `from_pretrained`."""
    from safetensors.torch import save_model

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = bundle.model
    model.config.save_pretrained(out)
    if getattr(model, "generation_config", None) is not None and model.can_generate():
        model.generation_config.save_pretrained(out)
    save_model(model, str(out / "model.safetensors"), metadata={"format": "pt"})
    bundle.tokenizer.save_pretrained(out)
    return out
