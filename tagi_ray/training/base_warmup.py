"""The run's frozen base: the configured model, optionally warmed up first.

The warm-up is multi-task instruction tuning of the whole base with the Tk-Instruct prompt
(`train.prompt_tuning_steps`); it turns a tiny random-init model into a usable base. A
pretrained base (SmolLM2, T5) needs none (steps 0): it is saved as is.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pyarrow as pa
import torch

from tagi_ray.config import TagiConfig
from tagi_ray.data.prompts import parse_prompt_format
from tagi_ray.data.tables import select_split
from tagi_ray.models.base import BaseBundle, load_base, save_base
from tagi_ray.tagi import TagiModel
from tagi_ray.training.examples import random_batches, table_examples
from tagi_ray.training.loop import run_steps
from tagi_ray.training.steps import prompt_chunks, prompt_step


def build_model(cfg: TagiConfig, bundle: BaseBundle | None = None) -> tuple[TagiModel, object]:
    """The configured base wrapped as a TagiModel (hypernetwork seeded by train.seed)."""
    bundle = bundle or load_base(cfg.model)
    torch.manual_seed(cfg.train.seed)
    return TagiModel(bundle, cfg.lora, cfg.hypernet, cfg.instruction), bundle.tokenizer


def prompt_tune_base(model: TagiModel, tokenizer, cfg: TagiConfig, table: pa.Table, steps: int,
                     lr: float | None = None, num_pos: int | None = None, desc: str = "base warm-up (prompt)",
                     micro_batch: int = 0) -> list[dict]:
    """Multi-task fine-tuning of the whole base with the instruction in the prompt (Tk-Instruct's
    recipe) on the training tasks; `lr` default `train.prompt_tuning_lr`, `num_pos` default
    `data.prompt`'s; `micro_batch` > 0: each step in length-sorted chunks of that many (same
    gradient, less activation memory)."""
    num_pos = parse_prompt_format(cfg.data.prompt) if num_pos is None else num_pos
    examples = table_examples(select_split(table, "train"), num_pos)
    batches = random_batches(examples, cfg.train.batch_size, cfg.train.seed)
    model.base.requires_grad_(True)
    try:
        return run_steps(lambda b: prompt_step(model, b), list(model.base.parameters()), batches, steps,
                         lr or cfg.train.prompt_tuning_lr, cfg.train.weight_decay, cfg.train.warmup_steps, desc=desc,
                         split=prompt_chunks(model, tokenizer, cfg.model, micro_batch, model.device))
    finally:
        model.base.requires_grad_(False)


def warm_up_base(cfg: TagiConfig, table: pa.Table, out: Path) -> Path:
    """Build the base, warm it up for `train.prompt_tuning_steps`, and save it to `out`
    atomically (with `prompt_tuning.json`: seconds and loss history)."""
    model, tokenizer = build_model(cfg)
    start = time.time()
    steps = cfg.train.prompt_tuning_steps
    history = prompt_tune_base(model, tokenizer, cfg, table, steps) if steps else []
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)  # left over from an interrupted run
    save_base(BaseBundle(model.base, tokenizer, model.arch), tmp)
    (tmp / "prompt_tuning.json").write_text(json.dumps({"seconds": time.time() - start, "history": history}))
    tmp.rename(out)
    return out
