"""Uncertainty of held-out scores: bootstrap confidence intervals, resampling instances within
tasks (the task set is fixed: it is the benchmark), and paired differences between methods.

The statistic is the one the tables report: the mean over all scored instances (SNI's
`compute_metrics`, as in the official TAGI code), x100.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def _resampled_means(scores_by_task: Mapping[str, Sequence[float]], n_boot: int, seed: int) -> np.ndarray:
    """(n_boot,) instance means, each from one stratified resample (instances within tasks)."""
    rng = np.random.default_rng(seed)
    total, count = np.zeros(n_boot), 0
    for task in sorted(scores_by_task):
        scores = np.asarray(scores_by_task[task], dtype=float)
        if scores.size == 0:
            continue
        picks = rng.integers(0, scores.size, size=(n_boot, scores.size))
        total += scores[picks].sum(1)
        count += scores.size
    return total / max(1, count)


def bootstrap_ci(scores_by_task: Mapping[str, Sequence[float]], n_boot: int = 1000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile CI of the instance mean, resampling instances within each task."""
    means = _resampled_means(scores_by_task, n_boot, seed)
    tail = (1 - level) / 2 * 100
    return float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


def paired_difference_ci(a_by_task: Mapping[str, Sequence[float]], b_by_task: Mapping[str, Sequence[float]],
                         n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """(mean(a) - mean(b), CI low, CI high) over the same instances, resampled together."""
    if set(a_by_task) != set(b_by_task) or any(len(a_by_task[t]) != len(b_by_task[t]) for t in a_by_task):
        raise ValueError("paired difference: both methods must be scored on the same instances")
    diff = {t: np.asarray(a_by_task[t], float) - np.asarray(b_by_task[t], float) for t in a_by_task}
    n = sum(len(v) for v in diff.values())
    point = float(sum(v.sum() for v in diff.values()) / max(1, n))
    low, high = bootstrap_ci(diff, n_boot, seed, level)
    return point, low, high


def distinct_share(predictions: Sequence[str]) -> float:
    """Share of distinct predictions (1 = all different, 1/n = one constant answer)."""
    return len(set(predictions)) / len(predictions) if predictions else 0.0
