"""Ray job: the paper's tables on this run — TAGI, its retrained ablations and the baselines,
per prompt format (Def, Def+2Pos), with 95% CIs.

    python tune/experiment.py --config configs/tiny.yaml [--out runs/x] [--address ...]
    tagi experiment --config configs/tiny.yaml

Stages, each skipped when complete (resubmit the same command to resume): data, base, teachers
(shared by every variant), baselines (`jobs/baselines.py`), then one Ray Tune grid over
`experiment.variants` x `experiment.formats` — every trial a full meta-training run (both
stages, its own TorchTrainer) that differs from `tagi` by one switch (`VARIANTS`) and is trained
in its format — and finally one evaluation of every row in both formats. Outputs:
`<out>/experiment/`: `<format>/<variant>/` trial runs, `metrics.json`, `predictions.jsonl`,
`report.md` (rows methods, columns formats: the layout of the paper's Tables 2 and 4).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from tagi_ray.config import TagiConfig
from tagi_ray.edge.cluster import connect, storage_path
from tagi_ray.evaluation import Method, evaluate
from tagi_ray.jobs.baselines import run_baselines
from tagi_ray.jobs.evaluate import ORDER, baseline_methods, write_report
from tagi_ray.jobs.job_args import job_config, job_parser
from tagi_ray.jobs.train_teachers import run_teachers
from tagi_ray.report import methods_table
from tagi_ray.run_dir import RunDir
from tagi_ray.stages import ensure_base, ensure_data, record_config
from tagi_ray.training.baselines import format_dir
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


def variant_config(base: dict, variant: str, fmt: str) -> TagiConfig:
    """The experiment's config with the variant's switch and the format's prompt."""
    return trial_config(base, {**VARIANTS[variant], "data.prompt": fmt})


def variant_dir(run: RunDir, variant: str, fmt: str) -> Path:
    return run.root / "experiment" / format_dir(fmt) / variant


def experiment_trial(params: dict[str, Any], setup: dict) -> None:
    """Ray Tune function trainable: one variant in one format, both meta-training stages."""
    from tagi_ray.jobs.meta_train import run_meta_training

    cfg = variant_config(setup["cfg"], params["variant"], params["format"])
    main = RunDir(Path(setup["run"]))
    run = trial_run(variant_dir(main, params["variant"], params["format"]), main,
                    main.teachers if cfg.loss.uses_teachers else None)
    record_config(cfg, run)
    run_meta_training(cfg, run, name=f"exp-{format_dir(params['format'])}-{params['variant']}")


def run_grid(cfg: TagiConfig, run: RunDir) -> None:
    """The variants x formats grid as one Ray Tune run (trials skip what is already trained)."""
    from ray import tune

    todo = [(v, f) for f in cfg.experiment.formats for v in cfg.experiment.variants
            if not (variant_dir(run, v, f) / "hypernet" / "hypernet.safetensors").is_file()]
    print(f"experiment: {len(todo)} of {len(cfg.experiment.variants) * len(cfg.experiment.formats)} TAGI runs "
          f"to train: {todo}", flush=True)
    if not todo:
        return
    connect(cfg.ray.address)
    check_cluster(cfg)  # a trial that does not fit would wait forever
    setup = {"cfg": cfg.to_dict(), "run": str(run.root)}
    trainable = tune.with_resources(tune.with_parameters(experiment_trial, setup=setup), {"CPU": cfg.tune.driver_cpus})
    grid = {"variant": tune.grid_search(cfg.experiment.variants), "format": tune.grid_search(cfg.experiment.formats)}
    results = tune.Tuner(
        trainable, param_space=grid,
        tune_config=tune.TuneConfig(max_concurrent_trials=cfg.tune.max_concurrent_trials or None),
        run_config=tune.RunConfig(name=f"experiment-{int(time.time())}",
                                  storage_path=storage_path(cfg.ray.storage_path, str(run.ray_storage))),
    ).fit()
    errors = [r.error for r in results if r.error]
    if errors:
        raise RuntimeError(f"experiment: {len(errors)} trial(s) failed (resubmit to resume); first: {errors[0]}")


def run_experiment(cfg: TagiConfig, run: RunDir) -> dict:
    """Every stage (each skipped when complete), then the evaluation; returns the results."""
    timings: dict[str, float] = {}

    def stage(name: str, fn):
        start = time.time()
        print(f"\n=== {name} ===", flush=True)
        out = fn()
        timings[name] = round(time.time() - start, 1)
        return out

    table = stage("data", lambda: ensure_data(cfg, run))
    stage("base", lambda: ensure_base(cfg, run, table))
    configs = [variant_config(cfg.to_dict(), v, f) for v in cfg.experiment.variants for f in cfg.experiment.formats]
    if any(c.loss.uses_teachers for c in configs):
        stage("teachers", lambda: run_teachers(cfg, run))
    formats = {f: FORMATS[f] for f in cfg.experiment.formats}
    stage("baselines", lambda: run_baselines(cfg, run, formats))
    stage("TAGI variants (Ray Tune grid)", lambda: run_grid(cfg, run))
    methods = {f: baseline_methods(run, f) + [Method(v, "tagi", variant_dir(run, v, f) / "hypernet")
                                                   for v in cfg.experiment.variants]
               for f in cfg.experiment.formats}
    results, records = stage("evaluation", lambda: evaluate(cfg, table, methods, run.base,
                                                            default_device(cfg.ray.use_gpu)))
    results["timings_s"] = timings
    out = RunDir(run.root / "experiment")
    switches = ", ".join(f"`{v}`: {s or 'full TAGI'}" for v, s in VARIANTS.items() if v in cfg.experiment.variants)
    report = write_report(out, results, records, title="tagi-ray experiment: TAGI, ablations and baselines",
                          preamble=["", f"Variants (each a full meta-training run with one switch): {switches}.",
                                    f"Stage wall times (s): {json.dumps(timings)}."], source=run)
    print("\n" + methods_table(results, ORDER) + f"\n\nreport -> {report}\nstage seconds: {timings}", flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    cfg, run = job_config(job_parser(__doc__.split("\n")[0], prog="tagi experiment").parse_args(argv))
    record_config(cfg, run)
    run_experiment(cfg, run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
