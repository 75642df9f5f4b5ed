"""Teachers per LoRA rank for sweeps over `lora.rank`.

L_ins is the MSE between the generated and the teacher LoRA matrices, so it needs teachers of
the trial's rank; and `load_teacher_bank` refuses a teacher whose rank differs from the model's
(`import_peft` checks it), so even L_kl's teacher logits come from a bank of the trial's rank.
Rather than changing the objective for some trials (which would confound rank with the loss
terms), a sweep trains one teacher fleet per rank in its space, before any trial starts:

    <run>/teachers/        the configured rank (shared with `tagi teachers` / `tagi pipeline`)
    <run>/teachers_r<R>/   every other rank R of the space

Fleets are cached and resumable like `tagi teachers` (a rerun trains only missing teachers).
Validation tasks get no teacher: they are never trained on.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from tagi_ray.jobs.train_teachers import run_teachers
from tagi_ray.config import TagiConfig, config_from_dict
from tagi_ray.data.tables import select_split
from tagi_ray.run_dir import RunDir


@dataclass(frozen=True)
class FleetRun(RunDir):
    """A run directory whose teacher fleet lives elsewhere (`<run>/teachers_r<R>`)."""

    fleet: Path = Path()

    @property
    def teachers(self) -> Path:
        return self.fleet


def teachers_dir(run: RunDir, cfg: TagiConfig, rank: int) -> Path:
    """Where the teachers of `rank` live for this run."""
    return run.teachers if rank == cfg.lora.rank else run.root / f"teachers_r{rank}"


def fleet_config(cfg: TagiConfig, table: pa.Table, rank: int, exclude: set[str]) -> TagiConfig:
    """`cfg` for training the teachers of `rank`: the training tasks (or teachers.tasks) minus `exclude`."""
    data = cfg.to_dict()
    data["lora"]["rank"] = rank
    names = cfg.teachers.tasks or sorted(set(select_split(table, "train").column("task").to_pylist()))
    data["teachers"]["tasks"] = [t for t in names if t not in exclude]
    return config_from_dict(data)


def ensure_fleets(cfg: TagiConfig, run: RunDir, table: pa.Table, ranks: list[int],
                  exclude: set[str]) -> dict[int, Path]:
    """Train the missing teachers of every rank (one Ray Train job per rank); rank -> directory."""
    out = {}
    for rank in sorted(set(ranks)):
        fleet = teachers_dir(run, cfg, rank)
        print(f"tune: teachers for rank {rank} -> {fleet}", flush=True)
        run_teachers(fleet_config(cfg, table, rank, exclude), FleetRun(run.root, fleet))
        out[rank] = fleet
    return out
