"""Load the splits of an SNI directory into one Arrow table (what `tagi data --sni` writes)."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa

from tagi_ray.data.sni import TaskFileError, load_split
from tagi_ray.data.tables import tasks_to_table, write_table


def build_table(sni_dir: str | Path, splits: Sequence[str] = ("train", "test"), max_instances: int = 100,
                max_eval_instances: int = 100, seed: int = 0) -> tuple[pa.Table, list[TaskFileError]]:
    """All requested splits as one table; training tasks are sampled (seeded), test tasks keep
    their first `max_eval_instances`. Returns the table and the per-file load errors."""
    tables, errors = [], []
    for split in splits:
        limit = max_eval_instances if split == "test" else max_instances
        result = load_split(sni_dir, split, max_instances=limit, seed=seed)
        tables.append(tasks_to_table(result.tasks, split))
        errors += result.errors
    return pa.concat_tables(tables), errors


def export_sni_table(sni_dir: str | Path, out: str | Path, splits: Sequence[str] = ("train", "test"),
                     max_instances: int = 100, max_eval_instances: int = 100, seed: int = 0) -> dict:
    """Write `build_table(...)` to `out` (.parquet or .arrow) and return a summary dict."""
    table, errors = build_table(sni_dir, splits, max_instances, max_eval_instances, seed)
    write_table(table, out)
    split_col, task_col = table.column("split").to_pylist(), table.column("task").to_pylist()
    return {
        "out": str(out),
        "rows": table.num_rows,
        "tasks": {s: len({t for t, sp in zip(task_col, split_col) if sp == s}) for s in splits},
        "errors": [str(e) for e in errors],
    }
