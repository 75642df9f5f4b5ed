"""Markdown tables of evaluation results (one column per method)."""
from __future__ import annotations


def metrics_table(results: dict[str, dict], by: str = "per_task", metric: str = "rougeL") -> str:
    """A markdown table: rows are groups (`per_task`/`per_category`) plus 'overall',
    columns are methods, cells are `metric` (ROUGE-L by default)."""
    methods = list(results)
    groups = sorted({g for r in results.values() for g in r[by]})
    lines = [f"| {by.replace('per_', '')} | " + " | ".join(methods) + " |",
             "|---|" + "---|" * len(methods)]
    for g in groups:
        cells = [f"{results[m][by][g][metric]:.1f}" if g in results[m][by] else "-" for m in methods]
        lines.append(f"| {g} | " + " | ".join(cells) + " |")
    lines.append("| **overall** | " + " | ".join(f"**{results[m]['overall'][metric]:.1f}**" for m in methods) + " |")
    return "\n".join(lines)
