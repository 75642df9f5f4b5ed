"""Held-out evaluation: every method on the test tasks, for Def and Def+kPos instructions.

Methods (columns of the report):
- `tagi`: the generated adapter + instruction fusion (when the model was trained with fusion);
- `tagi_no_fusion`: the same generated adapter with fusion switched off at inference;
- `base`: the frozen base without adapter, reading the instance only;
- `prompt`: the instruction-in-prompt baseline (Tk-Instruct style: the multi-task prompt-tuned
  base, reading definition + examples + instance);
- `teacher`: the task's teacher LoRA, where one exists for a held-out task.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import torch
from tqdm.auto import tqdm

from tagi_ray.config import TagiConfig
from tagi_ray.data.prompts import parse_prompt_format
from tagi_ray.data.tables import select_split
from tagi_ray.inference import generate_plain, generate_with_instructions
from tagi_ray.metrics import grouped_metrics
from tagi_ray.tagi import TagiModel
from tagi_ray.training.examples import Example, table_examples
from tagi_ray.training.teacher_store import completed_tasks, load_teacher_bank

METHODS = ("tagi", "tagi_no_fusion", "base", "prompt", "teacher")


def prompt_formats(cfg: TagiConfig) -> dict[str, int]:
    """'def' and the configured 'def+kpos' (k from data.prompt, at least 2)."""
    k = max(2, parse_prompt_format(cfg.data.prompt))
    return {"def": 0, f"def+{k}pos": k}


def _chunks(items: Sequence, size: int):
    for i in range(0, len(items), size):
        yield items[i:i + size]


def predict(model: TagiModel, tokenizer, cfg: TagiConfig, method: str, examples: Sequence[Example],
            batch_size: int, teachers_dir: Path | None = None) -> list[str]:
    """Greedy predictions of one method for `examples` (batched)."""
    m, out = cfg.model, []
    for chunk in _chunks(list(examples), batch_size):
        if method in ("tagi", "tagi_no_fusion"):
            fuse = cfg.instruction.fusion and method == "tagi"
            out += generate_with_instructions(model, tokenizer, m, [e.instruction for e in chunk],
                                              [e.source for e in chunk], m.max_target_length, fuse=fuse)
        elif method == "base":
            out += generate_plain(model, tokenizer, [e.source for e in chunk], m.max_source_length, m.max_target_length)
        elif method == "prompt":
            out += generate_plain(model, tokenizer, [e.prompt for e in chunk],
                                  m.max_source_length + m.max_instruction_length, m.max_target_length)
        elif method == "teacher":
            out += _teacher_predict(model, tokenizer, cfg, chunk, teachers_dir)
        else:
            raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    return out


def _teacher_predict(model: TagiModel, tokenizer, cfg: TagiConfig, chunk: Sequence[Example], teachers_dir: Path):
    tasks = sorted({e.task for e in chunk})
    bank, rows = load_teacher_bank(teachers_dir, tasks, cfg.lora.rank, cfg.lora.alpha)
    index = torch.tensor([rows[e.task] for e in chunk], device=model.device)
    return generate_plain(model, tokenizer, [e.source for e in chunk], cfg.model.max_source_length,
                          cfg.model.max_target_length, bank.to(model.device), index)


def evaluate(model: TagiModel, tokenizer, cfg: TagiConfig, table: pa.Table, methods: Sequence[str] = METHODS,
             teachers_dir: Path | None = None, split: str = "test", batch_size: int = 32) -> dict:
    """{format: {method: grouped metrics (per_task, per_category, overall)}} on `split` tasks.
    `teacher` is evaluated only on tasks that have a complete teacher under `teachers_dir`."""
    rows = select_split(table, split)
    with_teacher = completed_tasks(teachers_dir) if teachers_dir else set()
    results: dict[str, dict] = {}
    model.eval()
    for fmt, k in prompt_formats(cfg).items():
        examples = table_examples(rows, k)
        results[fmt] = {}
        for method in tqdm(methods, desc=f"eval {fmt}", dynamic_ncols=True):
            subset = [e for e in examples if e.task in with_teacher] if method == "teacher" else examples
            if not subset:
                continue
            preds = predict(model, tokenizer, cfg, method, subset, batch_size, teachers_dir)
            results[fmt][method] = grouped_metrics(preds, [list(e.outputs) for e in subset],
                                                   [e.task for e in subset], [e.category for e in subset])
            results[fmt][method]["examples"] = [{"task": e.task, "input": e.source, "prediction": p,
                                                 "reference": e.outputs[0]} for e, p in zip(subset[:3], preds[:3])]
    return results
