"""Evaluate a TAGI checkpoint and the baselines on the held-out tasks; write metrics.json,
predictions.jsonl, report.md and plots.

    python jobs/evaluate.py --config configs/tiny.yaml [--out runs/x] [--checkpoint DIR]
    tagi eval --config configs/tiny.yaml

Runs in the job's own process (models on `ray.use_gpu`'s device, batched generation); tasks are
the table's test split, never seen in training or tuning. The checkpoint is scored in the
prompt format it was trained with (`data.prompt`); `tagi experiment` trains and scores both.
"""
from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from tagi_ray.checkpoint import check_checkpoint
from tagi_ray.config import TagiConfig, load_config
from tagi_ray.data.prompts import format_name, parse_prompt_format
from tagi_ray.evaluation import Method, evaluate
from tagi_ray.jobs.job_args import job_config, job_parser
from tagi_ray.plots import per_task_bars, training_curves
from tagi_ray.report import distinct_table, in_order, methods_table, metrics_table
from tagi_ray.run_dir import RunDir
from tagi_ray.stages import ensure_data
from tagi_ray.training.baselines import BaselinePaths
from tagi_ray.training.meta import STEPS_LOG
from tagi_ray.training.worker import default_device

ORDER = ["copy_input", "copy_demo", "base", "prompt_zero_shot", "tk_instruct", "tk_instruct_lora", "tagi",
         "tagi_no_fusion", "tagi_no_kl", "tagi_no_ins", "tagi_no_pretrain", "tagi_no_hypernet", "oracle"]
ABLATION = "@ablation"  # a predictions record of the ablation table (its own budget) has method "<variant>@ablation"


def mark_ablation(records: list[dict]) -> list[dict]:
    """The ablation table's records, named so they sit beside the headline's in one predictions file."""
    return [{**r, "method": r["method"] + ABLATION} for r in records]


def split_ablation(records: list[dict]) -> tuple[list[dict], list[dict]]:
    """(headline records, ablation records with their plain method names) of a predictions file."""
    abl = [r for r in records if r["method"].endswith(ABLATION)]
    return ([r for r in records if not r["method"].endswith(ABLATION)],
            [{**r, "method": r["method"].removesuffix(ABLATION)} for r in abl])


def ablation_section(formats: dict, heading: str) -> list[str]:
    """The report's ablation table (TAGI − method against full TAGI at the ablation budget)."""
    return [f"## {heading}", "", methods_table({"formats": formats}, ORDER), ""]


def baseline_methods(run: RunDir, fmt: str) -> list[Method]:
    """Every baseline this run has: the untrained ones always, the trained ones when present."""
    paths = BaselinePaths(run.baselines)
    rows = [Method("copy_input", "copy_input"), Method("copy_demo", "copy_demo"), Method("base", "base"),
            Method("prompt_zero_shot", "prompt_zero_shot")]
    if paths.done("tk_instruct", fmt):
        rows.append(Method("tk_instruct", "tk_instruct", paths.tk_instruct(fmt)))
    if paths.done("tk_instruct_lora", fmt):
        rows.append(Method("tk_instruct_lora", "tk_instruct_lora", paths.tk_instruct_lora(fmt)))
    if paths.oracle.is_dir():
        rows.append(Method("oracle", "oracle", paths.oracle))
    return rows


def write_report(run: RunDir, results: dict, records: list[dict], title: str = "tagi-ray evaluation",
                 preamble: Sequence[str] = (), source: RunDir | None = None, appendix: Sequence[str] = ()) -> Path:
    """metrics.json, predictions.jsonl, report.md (methods table, `appendix`, per-task tables) and
    PNGs in `run`; training curves and teachers are read from `source` (default `run`)."""
    source = source or run
    (run.root / "metrics.json").write_text(json.dumps(results, indent=1))
    (run.root / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    p = results["protocol"]
    lines = [f"# {title}", "", f"Run directory: `{run.root}`.", *preamble, "",
             f"Held-out (test split) tasks: {p['tasks']} tasks, {p['scored_instances']} scored instances "
             f"({p['instances']}). Scores: {p['aggregation']}. CIs: {p['ci']}. TAGI − method: {p['difference']}.", "",
             "## Methods", "", methods_table(results, ORDER), "", *appendix]
    for fmt, by_method in results["formats"].items():
        by_method = {m: by_method[m] for m in in_order(list(by_method), ORDER)}
        lines += [f"## {fmt}: ROUGE-L per category", "", metrics_table(by_method, "per_category"), "",
                  f"## {fmt}: ROUGE-L per task", "", metrics_table(by_method, "per_task"), "",
                  f"## {fmt}: share of distinct predictions per task ({p['distinct']})", "",
                  distinct_table(by_method), ""]
        png = per_task_bars(by_method, run.root / f"per_task_{fmt.replace('+', '_')}.png",
                            title=f"{fmt}: ROUGE-L per task")
        lines += [f"![{fmt} per task]({png.name})", ""]
        examples = by_method.get("tagi", {}).get("examples", [])
        if examples:
            lines += [f"### {fmt}: TAGI sample outputs", ""] + [
                f"- `{e['task']}`: predicted `{e['prediction']!r}`, reference `{e['reference']!r}`" for e in examples] + [""]
    curves = training_curves({s: source.root / "meta" / f"{s}_log" / STEPS_LOG for s in ("pretrain", "meta")},
                             run.root / "training_curves.png")
    if curves:
        lines += ["## Meta-training curves", "", f"![training curves]({curves.name})", ""]
    teachers = source.teachers / "manifest.jsonl"
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
    """Evaluate the checkpoint (in the format it was trained with) and every baseline of the run."""
    checkpoint = check_checkpoint(checkpoint or run.hypernet)
    ckpt_cfg = load_config(checkpoint / "config.yaml")
    fmt = format_name(parse_prompt_format(ckpt_cfg.data.prompt))
    table = ensure_data(cfg, run)
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"prompt": ckpt_cfg.data.prompt})})
    methods = {fmt: baseline_methods(run, fmt) + [Method("tagi", "tagi", checkpoint)]}
    results, records = evaluate(cfg, table, methods, run.base, default_device(cfg.ray.use_gpu),
                                cache_dir=run.root / "eval_cache")
    report = write_report(run, results, records)
    print("\n" + methods_table(results, ORDER))
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
