"""Validation tasks: split off the TRAINING tasks, never the test tasks.

Sweeps (and anything else that selects hyperparameters) score trials on these tasks; the test
split stays unseen until the final evaluation. `check_validation_tasks` is the guard: it
refuses any task of the test split with a clear error.
"""
from __future__ import annotations

import random
from collections.abc import Sequence

import pyarrow as pa
import pyarrow.compute as pc

from tagi_ray.data.tables import select_split


def _tasks_of(table: pa.Table, split: str) -> set[str]:
    return set(select_split(table, split).column("task").to_pylist())


def check_validation_tasks(table: pa.Table, tasks: Sequence[str]) -> None:
    """Raise ValueError if a validation task is a test task or not a training task of `table`."""
    test, train = _tasks_of(table, "test"), _tasks_of(table, "train")
    for task in tasks:
        if task in test:
            raise ValueError(f"validation task {task!r} is in the test split: validation tasks must come "
                             f"from the training tasks, test tasks are never seen by a sweep")
        if task not in train:
            raise ValueError(f"validation task {task!r} is not a training task of this run's table")


def validation_tasks(table: pa.Table, fraction: float, seed: int, explicit: Sequence[str] = ()) -> list[str]:
    """`explicit` (checked), else a seeded `fraction` of the training tasks (at least one)."""
    if explicit:
        tasks = sorted(set(explicit))
    else:
        train = sorted(_tasks_of(table, "train"))
        if fraction <= 0 or len(train) < 2:
            raise ValueError(f"no validation tasks: data.val_fraction={fraction} of {len(train)} training tasks "
                             f"(set data.val_fraction > 0 or tune.val_tasks)")
        k = min(len(train) - 1, max(1, round(fraction * len(train))))
        tasks = sorted(random.Random(seed).sample(train, k))
    check_validation_tasks(table, tasks)
    return tasks


def validation_rows(table: pa.Table, tasks: Sequence[str], per_task: int) -> pa.Table:
    """The first `per_task` rows of each validation task (train split only), in table order."""
    check_validation_tasks(table, tasks)
    rows = select_split(table, "train")
    rows = rows.filter(pc.is_in(rows.column("task"), value_set=pa.array(list(tasks), pa.string())))
    seen: dict[str, int] = {}
    keep = []
    for i, task in enumerate(rows.column("task").to_pylist()):
        seen[task] = seen.get(task, 0) + 1
        if seen[task] <= per_task:
            keep.append(i)
    return rows.take(keep)
