"""PNG plots for the run report: per-task bars per method, and training curves."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def per_task_bars(results: dict[str, dict], out: Path, metric: str = "rougeL", title: str = "") -> Path:
    """Grouped bars: one group per task, one bar per method."""
    methods = list(results)
    tasks = sorted({t for r in results.values() for t in r["per_task"]})
    width = 0.8 / max(1, len(methods))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(tasks) * max(1, len(methods)) / 2), 4))
    for i, m in enumerate(methods):
        values = [results[m]["per_task"].get(t, {}).get(metric, 0.0) for t in tasks]
        ax.bar([x + i * width for x in range(len(tasks))], values, width, label=m)
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(tasks))])
    ax.set_xticklabels([t.split("_", 1)[-1][:28] for t in tasks], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel(metric)
    ax.set_title(title or f"held-out {metric} per task")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def training_curves(logs: dict[str, Path], out: Path) -> Path | None:
    """Loss terms per step for each stage log (steps.jsonl written by meta-training)."""
    series = {}
    for stage, path in logs.items():
        if path.is_file():
            series[stage] = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not series:
        return None
    fig, axes = plt.subplots(1, len(series), figsize=(5 * len(series), 3.5), squeeze=False)
    for ax, (stage, rows) in zip(axes[0], series.items()):
        for key in ("loss", "loss_ce", "loss_kl", "loss_ins"):
            points = [(r["step"], r[key]) for r in rows if key in r]
            if points:
                ax.plot(*zip(*points), label=key, marker="." if len(points) < 30 else None)
        ax.set_title(stage)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
