"""One run directory holds every stage's outputs; each stage is skipped when they are complete.

    <run>/config.yaml            resolved config of the last command
    <run>/data/sni/              builtin suite in SNI layout (when data.source = builtin)
    <run>/data/tasks.parquet     all splits as one Arrow table (train / test)
    <run>/base/                  the frozen base (after the optional prompt warm-up)
    <run>/teachers/<task>/       one PEFT adapter per training task (+ teacher.json)
    <run>/teachers/manifest.jsonl
    <run>/teachers_r<R>/         teachers of another LoRA rank R (a sweep over lora.rank)
    <run>/sweeps/<name>/         a Tune sweep's results, best.yaml, plot and trials/<id>/ run dirs
    <run>/hypernet/              the TAGI checkpoint (config + base + hypernet.safetensors)
    <run>/ray/                   Ray Train / Tune storage (checkpoints, results)
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from tagi_ray.config import TagiConfig, save_config
from tagi_ray.data.builtin import write_suite
from tagi_ray.data.export import build_table
from tagi_ray.data.tables import read_table, write_table


@dataclass(frozen=True)
class RunDir:
    root: Path

    @classmethod
    def of(cls, cfg: TagiConfig, out: str | Path | None = None) -> RunDir:
        return cls(Path(out or cfg.train.out_dir).resolve())

    @property
    def table(self) -> Path:
        return self.root / "data" / "tasks.parquet"

    @property
    def base(self) -> Path:
        return self.root / "base"

    @property
    def teachers(self) -> Path:
        return self.root / "teachers"

    @property
    def hypernet(self) -> Path:
        return self.root / "hypernet"

    @property
    def ray_storage(self) -> Path:
        return self.root / "ray"


def ensure_data(cfg: TagiConfig, run: RunDir) -> pa.Table:
    """The run's task table: read it if present, else build it from the configured source."""
    if run.table.is_file():
        return read_table(run.table)
    sni_dir = (write_suite(run.root / "data" / "sni", seed=cfg.data.builtin_seed)
               if cfg.data.source == "builtin" else Path(cfg.data.source))
    table, errors = build_table(sni_dir, ("train", "test"), cfg.data.max_instances_per_task,
                                cfg.data.max_eval_instances, cfg.data.seed)
    for err in errors:
        print(f"warning: skipped task file: {err}")
    write_table(table, run.table)
    return table


def ensure_base(cfg: TagiConfig, run: RunDir, table: pa.Table) -> Path:
    """The frozen base of this run: the configured model, after `train.prompt_tuning_steps` of
    multi-task instruction-in-prompt tuning (also the Tk-Instruct-style baseline). Cached."""
    if (run.base / "config.json").is_file():
        return run.base
    from tagi_ray.models.base import BaseBundle, save_base
    from tagi_ray.training.local import build_model, prompt_tune_base

    run.root.mkdir(parents=True, exist_ok=True)
    model, tokenizer = build_model(cfg)
    start = time.time()
    history = prompt_tune_base(model, tokenizer, cfg, table, cfg.train.prompt_tuning_steps) \
        if cfg.train.prompt_tuning_steps else []
    tmp = run.root / ".base.tmp"
    shutil.rmtree(tmp, ignore_errors=True)  # left over from an interrupted run
    save_base(BaseBundle(model.base, tokenizer, model.arch), tmp)
    (tmp / "prompt_tuning.json").write_text(json.dumps({"seconds": time.time() - start, "history": history}))
    tmp.rename(run.base)
    return run.base


def record_config(cfg: TagiConfig, run: RunDir) -> None:
    run.root.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run.root / "config.yaml")
