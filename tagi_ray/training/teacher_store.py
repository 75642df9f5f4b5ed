"""The teacher fleet on disk: one PEFT adapter directory per training task, plus a manifest.

    <teachers>/<task>/adapter_config.json, adapter_model.safetensors   (PEFT format)
    <teachers>/<task>/teacher.json        its manifest row (scores, timings, worker)
    <teachers>/<task>/logits_topk.safetensors   its stored top-k logits (teacher_logits.py)
    <teachers>/_failed/<task>.json        a task whose training failed (retried on the next run)
    <teachers>/manifest.jsonl             all rows, rewritten by `merge_manifest`

A teacher directory is written to a temp name and renamed into place, so presence means
complete: a rerun trains only the tasks without one.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pyarrow as pa

from tagi_ray.adapters import export_peft, import_peft
from tagi_ray.config import TagiConfig
from tagi_ray.data.tables import select_split
from tagi_ray.lora import LoraTarget, LoraWeights

MANIFEST = "manifest.jsonl"
ROW_FILE = "teacher.json"
FAILED_DIR = "_failed"


def completed_tasks(teachers_dir: Path | None) -> set[str]:
    """Tasks whose adapter directory is complete."""
    if teachers_dir is None or not teachers_dir.is_dir():
        return set()
    return {p.name for p in teachers_dir.iterdir() if (p / ROW_FILE).is_file() and not p.name.startswith((".", "_"))}


def write_teacher(teachers_dir: Path, task: str, weights: LoraWeights, targets: list[LoraTarget], cfg: TagiConfig,
                  arch: str, base_path: Path, row: dict, extra: Callable[[Path], object] | None = None) -> None:
    """One teacher (weights.n == 1) as a PEFT directory + its manifest row, atomically;
    `extra(tmp_dir)` writes more files into it first (the stored teacher logits)."""
    tmp = teachers_dir / f".{task}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    export_peft(weights, targets, cfg.lora.rank, cfg.lora.alpha, arch, str(base_path), tmp)
    if extra is not None:
        extra(tmp)
    (tmp / ROW_FILE).write_text(json.dumps(row))
    final = teachers_dir / task
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    (teachers_dir / FAILED_DIR / f"{task}.json").unlink(missing_ok=True)


def record_failure(teachers_dir: Path, task: str, error: str, worker: int) -> dict:
    row = {"task": task, "status": "failed", "error": error, "worker": worker, "time": time.time()}
    (teachers_dir / FAILED_DIR).mkdir(parents=True, exist_ok=True)
    (teachers_dir / FAILED_DIR / f"{task}.json").write_text(json.dumps(row))
    return row


def merge_manifest(teachers_dir: Path) -> list[dict]:
    """Rewrite manifest.jsonl from the per-teacher rows (complete first, then failures)."""
    teachers_dir.mkdir(parents=True, exist_ok=True)
    rows = [json.loads((teachers_dir / t / ROW_FILE).read_text()) for t in sorted(completed_tasks(teachers_dir))]
    failed_dir = teachers_dir / FAILED_DIR
    if failed_dir.is_dir():
        rows += [json.loads(p.read_text()) for p in sorted(failed_dir.glob("*.json"))]
    tmp = teachers_dir / f".{MANIFEST}.tmp"
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(teachers_dir / MANIFEST)
    return rows


def load_teacher_bank(teachers_dir: Path, tasks: Sequence[str], rank: int, alpha: float) -> tuple[LoraWeights, dict[str, int]]:
    """Stack the teachers of `tasks` (those that exist) into one LoraWeights; returns task -> row.
    Meta-training uses the rows as L_ins targets and, through the batched LoRA, for L_kl logits."""
    done = completed_tasks(teachers_dir)
    present = [t for t in tasks if t in done]
    if not present:
        raise FileNotFoundError(f"no complete teachers under {teachers_dir} for the {len(tasks)} requested tasks")
    weights = [import_peft(teachers_dir / t, rank=rank, alpha=alpha)[0] for t in present]
    return LoraWeights.cat(weights), {t: i for i, t in enumerate(present)}


def pending_tasks(cfg: TagiConfig, table: pa.Table, teachers_dir: Path) -> tuple[list[str], list[str]]:
    """(wanted, pending): the training tasks this config asks teachers for, and those not complete."""
    names = sorted(set(select_split(table, "train").column("task").to_pylist()))
    if cfg.teachers.tasks:
        unknown = sorted(set(cfg.teachers.tasks) - set(names))
        if unknown:
            raise ValueError(f"teachers.tasks: {unknown} are not training tasks of this run's table")
        names = [n for n in names if n in set(cfg.teachers.tasks)]
    if cfg.teachers.max_tasks:
        names = names[:cfg.teachers.max_tasks]
    done = completed_tasks(teachers_dir)
    return names, [n for n in names if n not in done]
