"""The sweep's PNG: the metric against lambda_kl and against the LoRA rank (one point per trial,
colour = lambda_ins, hollow = stopped early by ASHA), and every trial's validation curve."""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from tagi_ray.tune.results import METRIC  # noqa: E402

AXES = (("loss.lambda_kl", "λ1 = lambda_kl"), ("lora.rank", "LoRA rank"))


def _scatter(ax, rows: list[dict], key: str, label: str, defaults: dict) -> None:
    groups = sorted({str(r.get("loss.lambda_ins", defaults.get("loss.lambda_ins"))) for r in rows})
    colors = {g: plt.cm.tab10(i % 10) for i, g in enumerate(groups)}
    for r in rows:
        if math.isnan(r[METRIC]):
            continue
        x = r.get(key, defaults.get(key))
        group = str(r.get("loss.lambda_ins", defaults.get("loss.lambda_ins")))
        done = r["status"] == "completed"
        ax.scatter([float(x)], [r[METRIC]], s=45, edgecolors=colors[group],
                   facecolors=colors[group] if done else "none", linewidths=1.5)
    xs = sorted({float(r.get(key, defaults.get(key))) for r in rows})
    if len(xs) <= 8:
        ax.set_xticks(xs)
    for g in groups:
        ax.scatter([], [], color=colors[g], label=f"λ2 = {g}")
    ax.scatter([], [], facecolors="none", edgecolors="grey", label="stopped early")
    ax.set_xlabel(label)
    ax.set_ylabel(f"{METRIC} (last report)")
    ax.legend(fontsize=7)


def sweep_plot(rows: list[dict], curves: dict[str, list[tuple[int, float]]], defaults: dict, out: Path) -> Path:
    """`rows` from tagi_ray.tune.results.trial_rows; `curves`: trial id -> [(step, metric)];
    `defaults`: values of unsearched keys (from the sweep's config)."""
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for ax, (key, label) in zip(axes, AXES):
        _scatter(ax, rows, key, label, defaults)
    ax = axes[2]
    for trial_id, points in curves.items():
        if points:
            ax.plot(*zip(*points), marker=".", label=trial_id.split("_")[-1])
    ax.set_xlabel("meta step")
    ax.set_ylabel(METRIC)
    ax.set_title("validation curves (ASHA stops the weak)")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
