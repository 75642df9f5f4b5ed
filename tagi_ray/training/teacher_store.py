"""The teacher fleet on disk: one PEFT adapter directory per training task, plus a manifest.

    <teachers>/<task>/adapter_config.json, adapter_model.safetensors   (PEFT format)
    <teachers>/<task>/teacher.json        its manifest row (scores, timings, worker)
    <teachers>/<task>/logits_topk.safetensors   its stored top-k logits (teacher_logits.py)
    <teachers>/_failed/<task>.json        a task whose training failed (retried on the next run)
    <teachers>/manifest.jsonl             all rows, rewritten by `merge_manifest`

A teacher directory is written to a temp name and renamed into place, so presence means
complete: a rerun trains only the tasks without one. Meta-training reads the fleet through a
`TeacherStore`: only the teachers of the current batch, with at most `teachers.resident` of them
(weights and stored logits) in a worker's memory, however large the fleet.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

import pyarrow as pa

from tagi_ray.adapters import export_peft, import_peft
from tagi_ray.config import TagiConfig
from tagi_ray.data.tables import select_split
from tagi_ray.losses import TeacherTopK
from tagi_ray.lru_cache import LruCache
from tagi_ray.lora import LoraTarget, LoraWeights
from tagi_ray.training.examples import Example
from tagi_ray.training.teacher_logits import FILE as TOPK_FILE
from tagi_ray.training.teacher_logits import gather_topk, read_topk, topk_matches

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


class TeacherStore:
    """The teachers meta-training compares with, loaded on demand: `bank(tasks)` stacks the
    teachers of one batch (rows in the order given), `topk(examples)` their stored distributions
    (None when the teachers must run live). At most `resident` teachers stay in memory (least
    recently used evicted), so a worker's memory does not grow with the fleet. `loads` and
    `hits` count disk reads and cache hits."""

    def __init__(self, load: Callable[[str], tuple[LoraWeights, dict | None]], tasks: Sequence[str],
                 resident: int, device: torch.device | str = "cpu", has_topk: bool = False):
        if resident < 1:
            raise ValueError(f"teachers.resident must be >= 1, got {resident}")
        self._load, self.tasks, self.resident, self.device = load, list(tasks), resident, torch.device(device)
        self.has_topk = has_topk
        self._cache = LruCache(resident)  # task -> (weights on device, stored logits or None)
        self.loads = 0

    @classmethod
    def open(cls, teachers_dir: Path, tasks: Sequence[str], cfg: TagiConfig, device: torch.device | str = "cpu",
             resident: int | None = None) -> TeacherStore:
        """The complete teachers of `tasks` under `teachers_dir` (at least one). Stored logits are
        used when every one of them has a file that matches the run (`teacher_logits.py`)."""
        done = completed_tasks(teachers_dir)
        present = [t for t in tasks if t in done]
        if not present:
            raise FileNotFoundError(f"no complete teachers under {teachers_dir} for the {len(tasks)} requested tasks")
        use_topk = bool(cfg.teachers.logits_topk) and cfg.loss.uses_kl and all(
            topk_matches(teachers_dir / t / TOPK_FILE, cfg) for t in present)

        def load(task: str) -> tuple[LoraWeights, dict | None]:
            weights = import_peft(teachers_dir / task, rank=cfg.lora.rank, alpha=cfg.lora.alpha)[0]
            return weights, read_topk(teachers_dir / task / TOPK_FILE) if use_topk else None

        return cls(load, present, resident or cfg.teachers.resident, device, use_topk)

    @classmethod
    def in_memory(cls, weights: LoraWeights, rows: dict[str, int],
                  topk: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None) -> TeacherStore:
        """Teachers already stacked in memory (tests, benchmarks): row `rows[task]` of `weights`."""
        def load(task: str) -> tuple[LoraWeights, dict | None]:
            return weights.select(rows[task]), topk
        return cls(load, list(rows), len(rows), next(iter(weights.A.values())).device, topk is not None)

    def _entry(self, task: str) -> tuple[LoraWeights, dict | None]:
        entry = self._cache.get(task)
        if entry is None:
            if task not in self.tasks:
                raise KeyError(f"no teacher for task {task!r} in this store")
            weights, topk = self._load(task)
            self.loads += 1
            entry = (weights.to(self.device), topk)
            self._cache.put(task, entry)
        return entry

    @property
    def hits(self) -> int:
        return self._cache.hits

    def bank(self, tasks: Sequence[str]) -> tuple[LoraWeights, dict[str, int]]:
        """The teachers of `tasks` (distinct, in first-seen order) stacked; task -> row."""
        order = list(dict.fromkeys(tasks))
        if len(order) > self.resident:
            raise ValueError(f"a batch of {len(order)} tasks needs teachers.resident >= {len(order)} (is {self.resident})")
        return LoraWeights.cat([self._entry(t)[0] for t in order]), {t: i for i, t in enumerate(order)}

    def topk(self, examples: Sequence[Example]) -> TeacherTopK | None:
        """The stored distributions of the batch's scored tokens, or None (teachers run live)."""
        if not self.has_topk:
            return None
        stored: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for task in dict.fromkeys(e.task for e in examples):
            stored.update(self._entry(task)[1])
        return gather_topk(stored, examples)

    @property
    def resident_tasks(self) -> list[str]:
        return self._cache.keys()
