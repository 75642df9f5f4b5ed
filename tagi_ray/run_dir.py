"""The run directory: where every stage writes (paths only; `stages.py` and the jobs fill it).

    <run>/config.yaml            resolved config of the last command
    <run>/data/sni/              builtin suite in SNI layout (when data.source = builtin)
    <run>/data/tasks.parquet     all splits as one Arrow table (train / test)
    <run>/base/                  the frozen base (after the optional prompt warm-up)
    <run>/teachers/<task>/       one PEFT adapter per training task (+ teacher.json)
    <run>/teachers/manifest.jsonl
    <run>/teachers_r<R>/         teachers of another LoRA rank R (a sweep over lora.rank)
    <run>/sweeps/<name>/         a Tune sweep's results, best.yaml, plot and trials/<id>/ run dirs
    <run>/baselines/             tk_instruct_<fmt>/, tk_instruct_lora_<fmt>/, oracle/ (training/baselines.py)
    <run>/experiment/<fmt>/<variant>/   an experiment's per-format TAGI runs and ablations
    <run>/hypernet/              the TAGI checkpoint (config + base + hypernet.safetensors)
    <run>/ray/                   Ray Train / Tune storage (checkpoints, results)
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tagi_ray.config import TagiConfig


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
    def baselines(self) -> Path:
        return self.root / "baselines"

    @property
    def hypernet(self) -> Path:
        return self.root / "hypernet"

    @property
    def ray_storage(self) -> Path:
        return self.root / "ray"
