"""Markdown tables of evaluation results (`evaluation.evaluate`'s output).

- `methods_table`: the paper's layout (Tables 2 and 4): rows are methods, columns the prompt
  formats, each cell ROUGE-L [95% CI] and exact match, plus TAGI minus the method [CI];
- `metrics_table`: rows are tasks or categories, columns methods;
- `distinct_table`: per task, each method's share of distinct predictions.
"""
from __future__ import annotations


def _ci(values: list[float]) -> str:
    return f"[{values[0]:.1f}, {values[1]:.1f}]"


def in_order(names: list[str], order: list[str]) -> list[str]:
    """`names` in `order`, those not in it after them as they came."""
    return [m for m in order if m in names] + [m for m in names if m not in order]


def methods_table(results: dict, order: list[str] | None = None) -> str:
    """Rows: methods (in `order`, default first-seen), columns: per format ROUGE-L [CI] / EM /
    TAGI − method [CI]."""
    formats = list(results["formats"])
    methods: list[str] = []
    for fmt in formats:
        methods += [m for m in results["formats"][fmt] if m not in methods]
    if order:
        methods = in_order(methods, order)
    head = "| method | " + " | ".join(f"{f}: ROUGE-L [95% CI] | {f}: EM | {f}: TAGI − method [95% CI]"
                                      for f in formats) + " |"
    lines = [head, "|---|" + "---|---|---|" * len(formats)]
    for m in methods:
        cells = []
        for fmt in formats:
            r = results["formats"][fmt].get(m)
            if r is None:
                cells += ["-", "-", "-"]
                continue
            o = r["overall"]
            diff = r.get("tagi_minus")
            cells += [f"{o['rougeL']:.1f} {_ci(o['rougeL_ci'])}", f"{o['exact_match']:.1f}",
                      f"{diff['rougeL']:+.1f} {_ci(diff['rougeL_ci'])}" if diff else ""]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def metrics_table(by_method: dict[str, dict], by: str = "per_task", metric: str = "rougeL") -> str:
    """Rows are groups (`per_task`/`per_category`) plus 'overall', columns are methods."""
    methods = list(by_method)
    groups = sorted({g for r in by_method.values() for g in r[by]})
    lines = [f"| {by.replace('per_', '')} | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for g in groups:
        cells = [f"{by_method[m][by][g][metric]:.1f}" if g in by_method[m][by] else "-" for m in methods]
        lines.append(f"| {g} | " + " | ".join(cells) + " |")
    lines.append("| **overall** | " + " | ".join(f"**{by_method[m]['overall'][metric]:.1f}**" for m in methods) + " |")
    return "\n".join(lines)


def distinct_table(by_method: dict[str, dict]) -> str:
    """Per task, each method's share of distinct predictions (a constant answer shows as 1/n)."""
    methods = [m for m in by_method if m not in ("copy_input", "copy_demo")]
    tasks = sorted({t for r in by_method.values() for t in r["per_task"]})
    lines = ["| task | n | " + " | ".join(methods) + " |", "|---|---|" + "---|" * len(methods)]
    for t in tasks:
        n = next(r["per_task"][t]["n"] for r in by_method.values() if t in r["per_task"])
        cells = [f"{by_method[m]['per_task'][t]['distinct']:.2f}" if t in by_method[m]["per_task"] else "-"
                 for m in methods]
        lines.append(f"| {t} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
