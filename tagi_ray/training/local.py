"""Single-process training: base warm-up (instruction in prompt), then the hypernetwork (L_ce).

The base warm-up is multi-task instruction tuning with the Tk-Instruct prompt; it turns a tiny
random-init model into a usable base, and the result is also the instruction-in-prompt
baseline. The hypernetwork stage freezes the base again and trains only the hypernetwork.
Ray Train / DeepSpeed wrap the same step functions (`training/steps.py`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa
import torch

from tagi_ray.config import LossConfig, TagiConfig
from tagi_ray.data.prompts import parse_prompt_format
from tagi_ray.data.tables import select_split
from tagi_ray.inference import fit_hypernet_input_stats
from tagi_ray.models.base import BaseBundle, load_base
from tagi_ray.tagi import TagiModel
from tagi_ray.training.examples import random_batches, table_examples
from tagi_ray.training.loop import run_steps
from tagi_ray.training.steps import make_batch, prompt_step, tagi_step


@dataclass
class LocalRun:
    model: TagiModel
    tokenizer: object
    history: dict[str, list[dict]] = field(default_factory=dict)


def build_model(cfg: TagiConfig, bundle: BaseBundle | None = None) -> tuple[TagiModel, object]:
    bundle = bundle or load_base(cfg.model)
    torch.manual_seed(cfg.train.seed)
    return TagiModel(bundle, cfg.lora, cfg.hypernet), bundle.tokenizer


def prompt_tune_base(model: TagiModel, tokenizer, cfg: TagiConfig, table: pa.Table, steps: int) -> list[dict]:
    """Multi-task fine-tuning of the whole base with the instruction in the prompt."""
    examples = table_examples(select_split(table, "train"), parse_prompt_format(cfg.data.prompt))
    batches = random_batches(examples, cfg.train.batch_size, cfg.train.seed)
    model.base.requires_grad_(True)
    try:
        return run_steps(lambda b: prompt_step(model, make_batch(model, tokenizer, b, cfg.model, with_prompt=True)),
                         list(model.base.parameters()), batches, steps, cfg.train.prompt_tuning_lr,
                         cfg.train.weight_decay, cfg.train.warmup_steps, desc="base warm-up (prompt)")
    finally:
        model.base.requires_grad_(False)


def train_hypernet_ce(model: TagiModel, tokenizer, cfg: TagiConfig, table: pa.Table, steps: int) -> list[dict]:
    """Hypernetwork training with L_ce only (no teachers), base frozen."""
    examples = table_examples(select_split(table, "train"), parse_prompt_format(cfg.data.prompt))
    fit_hypernet_input_stats(model, tokenizer, cfg.model, [e.instruction for e in examples])
    batches = random_batches(examples, cfg.train.batch_size, cfg.train.seed + 1)
    ce_only = LossConfig(lambda_ce=1.0, lambda_kl=0.0, lambda_ins=0.0, temperature=cfg.loss.temperature)
    return run_steps(lambda b: tagi_step(model, make_batch(model, tokenizer, b, cfg.model, with_prompt=False), ce_only),
                     list(model.hypernet.parameters()), batches, steps, cfg.train.lr, cfg.train.weight_decay,
                     cfg.train.warmup_steps, desc="hypernetwork (L_ce)")


def train_local(cfg: TagiConfig, table: pa.Table, prompt_steps: int | None = None,
                hypernet_steps: int | None = None) -> LocalRun:
    """Both stages in this process; returns the trained model and the loss histories."""
    model, tokenizer = build_model(cfg)
    model.train()
    run = LocalRun(model, tokenizer)
    steps_a = cfg.train.prompt_tuning_steps if prompt_steps is None else prompt_steps
    steps_b = cfg.train.meta_steps if hypernet_steps is None else hypernet_steps
    if steps_a:
        run.history["prompt_tuning"] = prompt_tune_base(model, tokenizer, cfg, table, steps_a)
    if steps_b:
        run.history["hypernet"] = train_hypernet_ce(model, tokenizer, cfg, table, steps_b)
    model.eval()
    return run
