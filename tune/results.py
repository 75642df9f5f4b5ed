"""What a sweep leaves in `<run>/sweeps/<name>/`: one row per trial, as CSV and a markdown table
sorted by the metric, the best config as a ready YAML preset, and a PNG plot.

The ranking uses each trial's last reported `val_loss`. The best config is the best trial that
ran all its meta steps (one stopped early by ASHA was judged on fewer steps); if none did, the
best of all.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import yaml

from tagi_ray.config import TagiConfig
from tagi_ray.tune.space import apply_params

METRIC, MODE = "val_loss", "min"


def trial_rows(results, keys: list[str], max_step: int, trials_dir: Path) -> list[dict[str, Any]]:
    """One dict per trial of a Ray Tune ResultGrid, sorted by the metric (best first)."""
    rows = []
    for result in results:
        metrics = result.metrics or {}
        history = result.metrics_dataframe
        values = [] if history is None or METRIC not in history else [v for v in history[METRIC] if v == v]
        trial_id = metrics.get("trial_id") or Path(result.path).name
        step = int(metrics.get("step", 0) or 0)
        # Tune marks a trial's last result done when it returned or ASHA stopped it
        status = "error" if result.error else "unfinished" if not metrics.get("done") \
            else "completed" if step >= max_step else "stopped early"
        ckpt = trials_dir / trial_id / "hypernet"
        rows.append({
            "trial_id": trial_id, **{k: _config(result).get(k) for k in keys},
            METRIC: float(metrics[METRIC]) if METRIC in metrics else math.nan,
            f"best_{METRIC}": min(values) if values else math.nan,
            "step": step, "reports": int(metrics.get("training_iteration", 0) or 0), "status": status,
            "checkpoint": str(ckpt) if (ckpt / "hypernet.safetensors").is_file() else "",
        })
    return sorted(rows, key=lambda r: (math.isnan(r[METRIC]), r[METRIC] if MODE == "min" else -r[METRIC]))


def _config(result) -> dict:
    """A trial's sampled parameters (from params.json when it has reported nothing yet)."""
    if result.config:
        return result.config
    params = Path(result.path) / "params.json"
    return json.loads(params.read_text()) if params.is_file() else {}


def best_row(rows: list[dict]) -> dict | None:
    """The best completed trial (rows are sorted), else the best with a metric at all."""
    scored = [r for r in rows if not math.isnan(r[METRIC])]
    completed = [r for r in scored if r["status"] == "completed"]
    return (completed or scored or [None])[0]


def write_csv(rows: list[dict], path: Path) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["trial_id"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def markdown_table(rows: list[dict], keys: list[str]) -> str:
    cols = ["trial_id", *keys, METRIC, f"best_{METRIC}", "step", "status"]
    lines = ["| # | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 1)]
    for i, r in enumerate(rows, 1):
        lines.append(f"| {i} | " + " | ".join(_cell(r[c]) for c in cols) + " |")
    return "\n".join(lines)


def write_markdown(rows: list[dict], keys: list[str], path: Path, title: str, best: dict | None,
                   best_yaml: Path | None) -> Path:
    lines = [f"# {title}", "", f"Trials sorted by `{METRIC}` (last report; {MODE} is best): L_ce of the generated "
             "adapters on the validation tasks (split off the training tasks; test tasks are never used).", "",
             markdown_table(rows, keys), ""]
    if best is not None:
        lines += [f"Best completed trial: `{best['trial_id']}` ({METRIC} {_cell(best[METRIC])}): "
                  + ", ".join(f"`{k}={best[k]}`" for k in keys) + "."]
        if best_yaml is not None:
            lines += ["", f"Preset: `{best_yaml.name}` (train it on all training tasks and evaluate: "
                      f"`tagi pipeline --config {best_yaml}`)."]
        if best["checkpoint"]:
            lines += ["", f"Its checkpoint: `{best['checkpoint']}`."]
    lines += ["", "![sweep](sweep.png)", ""]
    path.write_text("\n".join(lines))
    return path


def write_best_config(base: dict, best: dict, keys: list[str], path: Path, source: str, out_dir: str) -> TagiConfig:
    """The best trial's parameters on the sweep's config, as a preset `load_config` reads, with
    its own `train.out_dir` (a fresh run: all training tasks, its own teachers, then evaluation)."""
    cfg = apply_params(base, {**{k: best[k] for k in keys}, "train.out_dir": out_dir})
    header = (f"# Best trial {best['trial_id']} of sweep {source}: {METRIC}={_cell(best[METRIC])}\n"
              f"# searched: " + ", ".join(f"{k}={best[k]}" for k in keys) + "\n"
              f"# train it on all training tasks and evaluate on the test tasks: tagi pipeline --config {path}\n")
    path.write_text(header + yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    return cfg
