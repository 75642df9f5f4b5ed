"""`tagi demo`: the embedded default, end to end. Today it stops after data + metrics."""
from __future__ import annotations

import json
from pathlib import Path

from tagi_ray.config import TagiConfig, save_config
from tagi_ray.data.builtin import write_suite
from tagi_ray.data.export import build_table
from tagi_ray.data.tables import select_split, write_table
from tagi_ray.metrics import grouped_metrics
from tagi_ray.report import metrics_table


def resolve_sni_dir(cfg: TagiConfig, run_dir: Path) -> Path:
    """The SNI directory a run reads: the embedded suite written under the run, or `data.source`."""
    if cfg.data.source == "builtin":
        return write_suite(run_dir / "data" / "sni", seed=cfg.data.builtin_seed)
    return Path(cfg.data.source)


def run_demo(cfg: TagiConfig, run_dir: Path) -> int:
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    sni_dir = resolve_sni_dir(cfg, run_dir)
    table, errors = build_table(sni_dir, ("train", "test"), cfg.data.max_instances_per_task,
                                cfg.data.max_eval_instances, cfg.data.seed)
    for err in errors:
        print(f"warning: {err}")
    write_table(table, run_dir / "data" / "tasks.parquet")
    test = select_split(table, "test").to_pydict()
    n_train = len(set(select_split(table, "train").column("task").to_pylist()))
    print(f"data: {n_train} training tasks, {len(set(test['task']))} held-out tasks, "
          f"{table.num_rows} instances -> {run_dir / 'data' / 'tasks.parquet'}")

    # Reference points that need no model: copying the input, and an oracle (first reference).
    results = {
        "copy_input": grouped_metrics(test["input"], test["outputs"], test["task"], test["category"]),
        "oracle": grouped_metrics([o[0] for o in test["outputs"]], test["outputs"], test["task"], test["category"]),
    }
    (run_dir / "metrics.json").write_text(json.dumps(results, indent=1))
    print(metrics_table(results, by="per_category"))
    print("\nteachers, meta-training, evaluation of TAGI and serving: not implemented yet "
          "(later issues); the demo stops after data + metrics.")
    return 0
