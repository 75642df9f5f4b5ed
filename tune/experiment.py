"""Ray job: the paper's tables on this run — TAGI, its retrained ablations and the baselines,
per prompt format (Def, Def+2Pos), with 95% CIs.

    python tune/experiment.py --config configs/tiny.yaml [--out runs/x] [--address ...]
    tagi experiment --config configs/tiny.yaml

Stages, each skipped when complete (resubmit the same command to resume): data, base, teachers
(shared by every variant), one Ray Tune grid over `experiment.variants` x `experiment.formats` —
every trial a full meta-training run (both stages, its own TorchTrainer, resumed from its last
checkpoint) that differs from `tagi` by one switch (`VARIANTS`) and is trained in its format —
then the baselines (`jobs/baselines.py`), and finally one evaluation of every row in both formats
(each method's predictions cached, so an interrupted evaluation resumes); `--stages` runs a
subset (e.g. the baselines on a free core while the teachers train). Validation tasks
(`data.val_fraction` of the training tasks, or `tune.val_tasks`) are left out of every trained
row; TAGI runs report `val_loss` on them at every checkpoint. Outputs: `<out>/experiment/`:
`<format>/<variant>/` trial runs, `metrics.json`, `predictions.jsonl`, `report.md` (rows
methods, columns formats: the layout of the paper's Tables 2 and 4; validation-loss curves).
"""
from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path
from collections.abc import Sequence
from typing import Any

from tagi_ray.config import TagiConfig
from tagi_ray.data.tables import read_table
from tagi_ray.data.validation import validation_rows, validation_tasks
from tagi_ray.edge.cluster import connect, storage_path
from tagi_ray.evaluation import Method, evaluate
from tagi_ray.jobs.baselines import run_baselines
from tagi_ray.jobs.evaluate import ORDER, ablation_section, baseline_methods, mark_ablation, write_report
from tagi_ray.jobs.job_args import job_config, job_parser
from tagi_ray.jobs.train_teachers import run_teachers
from tagi_ray.report import methods_table
from tagi_ray.run_dir import RunDir
from tagi_ray.stages import ensure_base, ensure_data, record_config
from tagi_ray.training.baselines import format_dir
from tagi_ray.training.meta import STEPS_LOG
from tagi_ray.training.worker import default_device
from tagi_ray.tune.sweep import check_cluster
from tagi_ray.tune.trial import trial_config, trial_run

# each ablation: the one switch that differs from full TAGI (the paper's Table 4)
VARIANTS: dict[str, dict[str, Any]] = {
    "tagi": {},
    "tagi_no_fusion": {"instruction.fusion": False},
    "tagi_no_kl": {"loss.lambda_kl": 0.0},
    "tagi_no_ins": {"loss.lambda_ins": 0.0},
    "tagi_no_pretrain": {"train.pretrain_steps": 0},
    "tagi_no_hypernet": {"hypernet.kind": "shared_lora"},
}
FORMATS = {"def": 0, "def+2pos": 2}


def variant_config(base: dict, variant: str, fmt: str, meta_steps: int | None = None) -> TagiConfig:
    """The experiment's config with the variant's switch, the format's prompt and (for the
    ablation grid's budget) its meta steps."""
    steps = {"train.meta_steps": meta_steps} if meta_steps else {}
    return trial_config(base, {**VARIANTS[variant], "data.prompt": fmt, **steps})


def variant_dir(run: RunDir, variant: str, fmt: str, budget: str = "headline") -> Path:
    """`<run>/experiment/<format>/<variant>`; the ablation grid's own budget under `ablation/`."""
    root = run.root / "experiment" / format_dir(fmt)
    return root / variant if budget == "headline" else root / "ablation" / variant


def ablation_budget(cfg: TagiConfig) -> int | None:
    """The ablation grid's meta steps when it differs from the headline's, else None (one table)."""
    steps = cfg.experiment.ablation_meta_steps
    return steps if steps and steps != cfg.train.meta_steps else None


def trial_specs(cfg: TagiConfig) -> list[dict[str, str]]:
    """Every TAGI run of the experiment: {"variant", "format", "budget"}. One table: each variant
    at train.meta_steps; with an ablation budget, full TAGI at train.meta_steps (the headline) and
    every variant, full TAGI included, at experiment.ablation_meta_steps."""
    fmts, variants = cfg.experiment.formats, cfg.experiment.variants
    if ablation_budget(cfg) is None:
        return [{"variant": v, "format": f, "budget": "headline"} for f in fmts for v in variants]
    return ([{"variant": "tagi", "format": f, "budget": "headline"} for f in fmts]
            + [{"variant": v, "format": f, "budget": "ablation"} for f in fmts for v in variants])


def experiment_trial(params: dict[str, Any], setup: dict) -> None:
    """Ray Tune function trainable: one variant in one format at one budget, both meta-training stages."""
    from tagi_ray.jobs.meta_train import run_meta_training

    spec = params["run"]
    steps = setup["ablation_steps"] if spec["budget"] == "ablation" else None
    cfg = variant_config(setup["cfg"], spec["variant"], spec["format"], steps)
    main = RunDir(Path(setup["run"]))
    run = trial_run(variant_dir(main, spec["variant"], spec["format"], spec["budget"]), main,
                    main.teachers if cfg.loss.uses_teachers else None)
    record_config(cfg, run)
    val_tasks = setup["val_tasks"]
    val = validation_rows(read_table(run.table), val_tasks, cfg.tune.val_instances) if val_tasks else None
    run_meta_training(cfg, run, exclude_tasks=set(val_tasks), val_data=val,
                      name=f"exp-{format_dir(spec['format'])}-{spec['variant']}"
                           + ("-ablation" if spec["budget"] == "ablation" else ""),
                      shared_stage1=main.root / "experiment" / "stage1" / stage1_key(cfg))


def stage1_key(cfg: TagiConfig) -> str:
    """What stage 1 (text pretraining, L_ce only) depends on: everything but the loss weights,
    the meta steps and the sections that do not train it. Variants with equal keys (full TAGI
    at both budgets, w/o L_kl, w/o L_ins, per format) share one stage 1."""
    d = cfg.to_dict()
    for section in ("loss", "teachers", "baselines", "serve", "tune", "experiment", "ray"):
        d.pop(section, None)
    d["train"] = {k: v for k, v in d["train"].items() if k not in ("meta_steps", "checkpoint_every", "out_dir")}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def experiment_val_tasks(cfg: TagiConfig, table) -> list[str]:
    """The training tasks split off for validation ([] when data.val_fraction is 0 and no
    tune.val_tasks are named); never test tasks."""
    if not cfg.data.val_fraction and not cfg.tune.val_tasks:
        return []
    return validation_tasks(table, cfg.data.val_fraction, cfg.data.seed, cfg.tune.val_tasks)


def val_loss_table(cfg: TagiConfig, run: RunDir) -> list[str]:
    """Markdown: validation loss (L_ce of the generated adapters on the validation tasks) at every
    checkpoint of each TAGI run, one column per run."""
    curves: dict[str, dict[int, float]] = {}
    for spec in trial_specs(cfg):
        log = variant_dir(run, spec["variant"], spec["format"], spec["budget"]) / "meta" / "meta_log" / STEPS_LOG
        if log.is_file():
            records = [json.loads(x) for x in log.read_text().splitlines() if x.strip()]
            label = f"{spec['format']} {spec['variant']}" + (" (ablation budget)" if spec["budget"] == "ablation" else "")
            curves[label] = {r["step"]: r["val_loss"] for r in records if "val_loss" in r}
    steps = sorted({s for c in curves.values() for s in c})
    if not steps:
        return []
    lines = ["| meta step | " + " | ".join(curves) + " |", "|---" * (len(curves) + 1) + "|"]
    lines += [f"| {s} | " + " | ".join(f"{c[s]:.3f}" if s in c else "" for c in curves.values()) + " |" for s in steps]
    return ["", "## Validation loss during meta-training (L_ce on the validation tasks)", "", *lines]


def run_grid(cfg: TagiConfig, run: RunDir, val_tasks: list[str]) -> None:
    """The variants x formats grid as one Ray Tune run (trials skip what is already trained)."""
    from ray import tune

    specs = trial_specs(cfg)
    todo = [s for s in specs
            if not (variant_dir(run, s["variant"], s["format"], s["budget"]) / "hypernet" / "hypernet.safetensors").is_file()]
    print(f"experiment: {len(todo)} of {len(specs)} TAGI runs to train: "
          f"{[(s['variant'], s['format'], s['budget']) for s in todo]}", flush=True)
    if not todo:
        return
    connect(cfg.ray.address)
    check_cluster(cfg)  # a trial that does not fit would wait forever
    setup = {"cfg": cfg.to_dict(), "run": str(run.root), "val_tasks": val_tasks, "ablation_steps": ablation_budget(cfg)}
    trainable = tune.with_resources(tune.with_parameters(experiment_trial, setup=setup), {"CPU": cfg.tune.driver_cpus})
    grid = {"run": tune.grid_search(todo)}
    results = tune.Tuner(
        trainable, param_space=grid,
        tune_config=tune.TuneConfig(max_concurrent_trials=cfg.tune.max_concurrent_trials or None),
        run_config=tune.RunConfig(name=f"experiment-{int(time.time())}",
                                  storage_path=storage_path(cfg.ray.storage_path, str(run.ray_storage))),
    ).fit()
    errors = [r.error for r in results if r.error]
    if errors:
        raise RuntimeError(f"experiment: {len(errors)} trial(s) failed (resubmit to resume); first: {errors[0]}")


STAGES = ("teachers", "grid", "baselines", "evaluation")


def run_experiment(cfg: TagiConfig, run: RunDir, stages: Sequence[str] = STAGES) -> dict | None:
    """Every stage (each skipped when complete), then the evaluation; returns the results.
    `stages`: only these of STAGES (data and base are always ensured); without "evaluation",
    returns None after the training stages (e.g. baselines on one core while teachers train)."""
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        raise ValueError(f"experiment stages: unknown {unknown}; choose from {list(STAGES)}")
    timings: dict[str, float] = {}

    def stage(name: str, fn):
        start = time.time()
        print(f"\n=== {name} ===", flush=True)
        out = fn()
        timings[name] = round(time.time() - start, 1)
        return out

    table = stage("data", lambda: ensure_data(cfg, run))
    stage("base", lambda: ensure_base(cfg, run, table))
    val_tasks = experiment_val_tasks(cfg, table)
    (run.root / "experiment").mkdir(parents=True, exist_ok=True)
    (run.root / "experiment" / "val_tasks.json").write_text(json.dumps(val_tasks, indent=1))
    print(f"experiment: {len(val_tasks)} validation tasks, left out of training: {val_tasks}", flush=True)
    configs = [variant_config(cfg.to_dict(), v, f) for v in cfg.experiment.variants for f in cfg.experiment.formats]
    if "teachers" in stages and any(c.loss.uses_teachers for c in configs):
        stage("teachers", lambda: run_teachers(cfg, run))
    formats = {f: FORMATS[f] for f in cfg.experiment.formats}
    if "grid" in stages:
        stage("TAGI variants (Ray Tune grid)", lambda: run_grid(cfg, run, val_tasks))
    if "baselines" in stages:
        stage("baselines", lambda: run_baselines(cfg, run, formats, exclude_tasks=val_tasks))
    if "evaluation" not in stages:
        print(f"experiment: stages {list(stages)} done; stage seconds: {timings}", flush=True)
        return None
    budget = ablation_budget(cfg)
    headline = ["tagi"] if budget else cfg.experiment.variants
    methods = {f: baseline_methods(run, f) + [Method(v, "tagi", variant_dir(run, v, f) / "hypernet") for v in headline]
               for f in cfg.experiment.formats}
    device, cache = default_device(cfg.ray.use_gpu), run.root / "experiment" / "predictions_cache"
    results, records = stage("evaluation", lambda: evaluate(cfg, table, methods, run.base, device, cache_dir=cache))
    appendix: list[str] = []
    if budget:  # the ablation table: every variant and its own full-TAGI reference at the ablation budget
        ablations = {f: [Method(v, "tagi", variant_dir(run, v, f, "ablation") / "hypernet")
                         for v in cfg.experiment.variants] for f in cfg.experiment.formats}
        abl, abl_records = stage("evaluation (ablations)",
                                 lambda: evaluate(cfg, table, ablations, run.base, device, cache_dir=cache))
        results["ablations"] = abl["formats"]
        records += mark_ablation(abl_records)
        appendix = ablation_section(abl["formats"], f"Ablations ({budget} meta steps each, full TAGI retrained "
                                                    f"at the same budget; TAGI − method against that reference)")
    results["timings_s"] = timings
    out = RunDir(run.root / "experiment")
    switches = ", ".join(f"`{v}`: {s or 'full TAGI'}" for v, s in VARIANTS.items() if v in cfg.experiment.variants)
    b = cfg.baselines
    budgets = (f"Budgets (steps of batch {cfg.train.batch_size}): TAGI {cfg.train.meta_steps} meta steps after "
               f"{cfg.train.pretrain_steps} stage-1 steps; tk_instruct {b.tk_instruct_steps or cfg.train.meta_steps}, "
               f"tk_instruct_lora {b.tk_instruct_lora_steps or cfg.train.meta_steps}; the ablation table "
               f"{budget or cfg.train.meta_steps} meta steps per variant.")
    report = write_report(out, results, records, title="tagi-ray experiment: TAGI, ablations and baselines",
                          preamble=["", f"Variants (each a full meta-training run with one switch): {switches}.",
                                    budgets, f"Validation tasks (left out of every trained row): {val_tasks}.",
                                    f"Stage wall times of this invocation (s; a stage completed earlier is skipped): "
                                    f"{json.dumps(timings)}.", *val_loss_table(cfg, run)],
                          appendix=appendix, source=run)
    print("\n" + methods_table(results, ORDER) + "\n\n" + "\n".join(appendix)
          + f"\nreport -> {report}\nstage seconds: {timings}", flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    p = job_parser(__doc__.split("\n")[0], prog="tagi experiment")
    p.add_argument("--stages", default=",".join(STAGES),
                   help=f"comma-separated subset of {','.join(STAGES)} to run (default: all, in that order)")
    args = p.parse_args(argv)
    cfg, run = job_config(args)
    stages = [s for s in args.stages.split(",") if s]
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        p.error(f"--stages: unknown {unknown}; choose from {','.join(STAGES)}")
    record_config(cfg, run)
    run_experiment(cfg, run, stages)
    return 0


if __name__ == "__main__":
    sys.exit(main())
