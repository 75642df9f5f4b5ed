"""The pipeline's first two stages, each skipped when its output in the run directory exists:
the task table (`<run>/data/tasks.parquet`) and the frozen base (`<run>/base/`)."""
from __future__ import annotations

from functools import partial
from pathlib import Path

import pyarrow as pa

from tagi_ray.config import TagiConfig, save_config
from tagi_ray.data.builtin import write_suite
from tagi_ray.data.lexicon import write_lexicon
from tagi_ray.data.export import build_table
from tagi_ray.data.tables import read_table, write_table
from tagi_ray.run_dir import RunDir
from tagi_ray.training.base_warmup import warm_up_base


def ensure_data(cfg: TagiConfig, run: RunDir) -> pa.Table:
    """The run's task table: read it if present, else build it from the configured source."""
    if run.table.is_file():
        return read_table(run.table)
    generated = {"builtin": partial(write_suite, n_train=cfg.data.builtin_tasks),
                 "lexicon": write_lexicon}.get(cfg.data.source)
    sni_dir = (generated(run.root / "data" / "sni", seed=cfg.data.builtin_seed) if generated
               else Path(cfg.data.source))
    table, errors = build_table(sni_dir, ("train", "test"), cfg.data.max_instances_per_task,
                                cfg.data.max_eval_instances, cfg.data.seed)
    for err in errors:
        print(f"warning: skipped task file: {err}")
    write_table(table, run.table)
    return table


def ensure_base(cfg: TagiConfig, run: RunDir, table: pa.Table) -> Path:
    """The run's frozen base, built (and warmed up) once."""
    if (run.base / "config.json").is_file():
        return run.base
    run.root.mkdir(parents=True, exist_ok=True)
    return warm_up_base(cfg, table, run.base)


def record_config(cfg: TagiConfig, run: RunDir) -> None:
    """The resolved config of the last command, as `<run>/config.yaml`."""
    run.root.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run.root / "config.yaml")
