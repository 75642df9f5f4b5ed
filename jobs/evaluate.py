"""Evaluate a TAGI checkpoint on the held-out tasks; write metrics.json, report.md and plots.

    python jobs/evaluate.py --config configs/tiny.yaml [--out runs/x] [--checkpoint DIR]
    tagi eval --config configs/tiny.yaml

Runs in the job's own process (one model, batched generation); tasks are the table's test
split, never seen in training or tuning.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from tagi_ray.checkpoint import load_checkpoint
from tagi_ray.config import TagiConfig
from tagi_ray.evaluation import METHODS, evaluate
from tagi_ray.jobs.job_args import job_config, job_parser
from tagi_ray.plots import per_task_bars, training_curves
from tagi_ray.report import metrics_table
from tagi_ray.run_dir import RunDir
from tagi_ray.stages import ensure_data
from tagi_ray.training.meta import STEPS_LOG


def write_report(run: RunDir, results: dict, title: str = "tagi-ray evaluation") -> Path:
    """metrics.json, report.md (tables per instruction format) and PNG plots in the run dir."""
    (run.root / "metrics.json").write_text(json.dumps(results, indent=1))
    lines = [f"# {title}", "", f"Run directory: `{run.root}`. Held-out (test split) tasks; ROUGE-L / exact match "
             "(SNI conventions), mean x100.", ""]
    for fmt, by_method in results.items():
        table = {m: r for m, r in by_method.items()}
        lines += [f"## {fmt}: ROUGE-L per category", "", metrics_table(table, "per_category"), "",
                  f"## {fmt}: exact match per category", "", metrics_table(table, "per_category", "exact_match"), "",
                  f"## {fmt}: ROUGE-L per task", "", metrics_table(table, "per_task"), ""]
        png = per_task_bars(table, run.root / f"per_task_{fmt.replace('+', '_')}.png", title=f"{fmt}: ROUGE-L per task")
        lines += [f"![{fmt} per task]({png.name})", ""]
        examples = table.get("tagi", {}).get("examples", [])
        if examples:
            lines += [f"### {fmt}: TAGI sample outputs", ""] + [
                f"- `{e['task']}`: predicted `{e['prediction']!r}`, reference `{e['reference']!r}`" for e in examples] + [""]
    curves = training_curves({s: run.root / "meta" / f"{s}_log" / STEPS_LOG for s in ("pretrain", "meta")},
                             run.root / "training_curves.png")
    if curves:
        lines += ["## Meta-training curves", "", f"![training curves]({curves.name})", ""]
    teachers = run.teachers / "manifest.jsonl"
    if teachers.is_file():
        rows = [json.loads(x) for x in teachers.read_text().splitlines() if x.strip()]
        ok = [r for r in rows if r["status"] == "complete"]
        if ok:
            mean = lambda k: sum(r[k] for r in ok) / len(ok)  # noqa: E731
            lines += ["## Teachers", "", f"{len(ok)} complete, {len(rows) - len(ok)} failed. On their held-back "
                      f"training instances: ROUGE-L {mean('rougeL'):.1f} (base {mean('base_rougeL'):.1f}), "
                      f"reference loss {mean('held_back_loss'):.3f} (base {mean('base_held_back_loss'):.3f}).", ""]
    out = run.root / "report.md"
    out.write_text("\n".join(lines))
    return out


def run_evaluation(cfg: TagiConfig, run: RunDir, checkpoint: Path | None = None) -> dict:
    """Evaluate every method on the test split; returns the results and writes the report."""
    model, tokenizer, ckpt_cfg = load_checkpoint(checkpoint or run.hypernet)
    table = ensure_data(cfg, run)
    ckpt_cfg.data = cfg.data  # evaluation formats/limits from the current config
    results = evaluate(model, tokenizer, ckpt_cfg, table, METHODS, run.teachers)
    report = write_report(run, results)
    for fmt, by_method in results.items():
        print(f"\n{fmt}: held-out ROUGE-L per category\n" + metrics_table(by_method, "per_category"))
    print(f"\nreport -> {report}")
    return results


def main(argv: list[str] | None = None) -> int:
    p = job_parser(__doc__.split("\n")[0], address=False, prog="tagi eval")
    p.add_argument("--checkpoint", default=None, help="TAGI checkpoint (default: <out>/hypernet)")
    args = p.parse_args(argv)
    cfg, run = job_config(args)
    run_evaluation(cfg, run, Path(args.checkpoint) if args.checkpoint else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
