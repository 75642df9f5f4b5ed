"""Ray job: a Ray Tune sweep over meta-training hyperparameters (λ1, λ2, LoRA rank, lr, ...).

    python tune/sweep.py --config configs/tiny.yaml --space tune/spaces/tiny.yaml [--out runs/x]
    tagi tune --config configs/tiny.yaml --space tune/spaces/tiny.yaml

Validation tasks are split off the training tasks (`data.val_fraction` or `tune.val_tasks`);
a test task there is refused. Before the trials, a teacher fleet is trained per LoRA rank of
the space (tune/teachers.py). Each trial is a Tune function that fits a TorchTrainer (both
meta-training stages) and reports `val_loss` with every checkpoint through
`TuneReportCallback`; ASHA stops weak trials early. Results go to `<out>/ray/<name>/` (Tune's
experiment, restored with `Tuner.restore` when the job is resubmitted) and `<out>/sweeps/<name>/`
(sweep_results.csv, sweep_results.md, best.yaml, sweep.png, trials/<id>/).
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tagi_ray.config import ConfigError, TagiConfig, config_from_dict, load_config
from tagi_ray.data.validation import validation_tasks
from tagi_ray.edge.cluster import connect, resources, storage_path
from tagi_ray.jobs.job_args import job_parser
from tagi_ray.run_dir import RunDir
from tagi_ray.stages import ensure_base, ensure_data, record_config
from tagi_ray.tune.plot import sweep_plot
from tagi_ray.tune.results import METRIC, MODE, best_row, trial_rows, write_best_config, write_csv, write_markdown
from tagi_ray.tune.space import Space, apply_params, load_space, with_overrides
from tagi_ray.tune.teachers import ensure_fleets
from tagi_ray.tune.trial import sweep_trial


@dataclass(frozen=True)
class SweepOutputs:
    results: object  # ray.tune.ResultGrid
    rows: list[dict]
    dir: Path
    best_config: Path | None


def check_budget(cfg: TagiConfig) -> None:
    """ASHA needs several reports per trial: one per `train.checkpoint_every` meta steps."""
    t = cfg.train
    if t.meta_steps < 1:
        raise ConfigError("train.meta_steps: a sweep needs at least one meta-training step")
    if not 0 < t.checkpoint_every < t.meta_steps:
        raise ConfigError(f"train.checkpoint_every: {t.checkpoint_every} gives one report per trial; a sweep "
                          f"reports val_loss every checkpoint_every steps, so it must be in (0, {t.meta_steps})")
    if (cfg.tune.grace_period or t.checkpoint_every) > t.meta_steps:
        raise ConfigError(f"tune.grace_period: {cfg.tune.grace_period} exceeds train.meta_steps={t.meta_steps}")


def trial_resources(cfg: TagiConfig) -> tuple[float, float]:
    """(CPUs, GPUs) one trial holds: its driver plus its Ray Train workers."""
    workers = cfg.tune.workers_per_trial
    gpus = workers * (cfg.ray.gpus_per_worker or 1.0) if cfg.ray.use_gpu else 0.0
    return cfg.tune.driver_cpus + workers * cfg.tune.cpus_per_worker, gpus


def check_cluster(cfg: TagiConfig) -> None:
    """A trial must fit the cluster; say how many run at once."""
    have = resources()
    cpus, gpus = trial_resources(cfg)
    if cpus > have.get("CPU", 0) or gpus > have.get("GPU", 0):
        raise ValueError(f"one trial needs {cpus:g} CPUs and {gpus:g} GPUs (tune.driver_cpus + tune.workers_per_trial "
                         f"x tune.cpus_per_worker), the cluster has {have.get('CPU', 0):g} / {have.get('GPU', 0):g}")
    fit = int(have.get("CPU", 0) // cpus)
    want = cfg.tune.max_concurrent_trials or fit
    print(f"tune: {cpus:g} CPUs per trial, {min(want, fit)} trials at a time on this cluster "
          f"(tune.max_concurrent_trials={cfg.tune.max_concurrent_trials})", flush=True)


def _search_alg(cfg: TagiConfig, space: Space):
    """Seeded random/grid search (with its own concurrency limit), or Optuna if installed."""
    if cfg.tune.search == "random":
        from ray.tune.search.basic_variant import BasicVariantGenerator

        return BasicVariantGenerator(max_concurrent=cfg.tune.max_concurrent_trials, random_state=cfg.tune.seed)
    try:
        import optuna  # noqa: F401  (optional: not a dependency of tagi-ray)
        from ray.tune.search.optuna import OptunaSearch
    except ImportError:
        raise ConfigError("tune.search: 'optuna' needs the optuna package (pip install optuna); "
                          "or use tune.search=random") from None
    if space.has_grid():
        raise ConfigError("tune.search: optuna cannot search a grid; use choice instead of grid in the space")
    return OptunaSearch(seed=cfg.tune.seed)


def _tuner(cfg: TagiConfig, space: Space, trainable, exp_dir: Path, name: str):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    if tune.Tuner.can_restore(str(exp_dir)):
        print(f"tune: restoring the experiment in {exp_dir} (unfinished and errored trials resume; "
              f"its search space is the one it started with: use --fresh to start over)", flush=True)
        return tune.Tuner.restore(str(exp_dir), trainable=trainable, resume_unfinished=True, resume_errored=True)
    # time unit: meta steps; a trial that reaches max_t is not stopped but finishes (and exports)
    scheduler = ASHAScheduler(
        time_attr="step", max_t=cfg.train.meta_steps, grace_period=cfg.tune.grace_period or cfg.train.checkpoint_every,
        reduction_factor=cfg.tune.reduction_factor, stop_last_trials=False)
    limit = cfg.tune.max_concurrent_trials if cfg.tune.search != "random" else 0  # random: in the generator
    return tune.Tuner(
        trainable, param_space=space.param_space(),
        tune_config=tune.TuneConfig(metric=METRIC, mode=MODE, num_samples=cfg.tune.num_samples,
                                    max_concurrent_trials=limit or None, search_alg=_search_alg(cfg, space),
                                    scheduler=scheduler),
        run_config=tune.RunConfig(name=name, storage_path=str(exp_dir.parent)),
    )


def resolve_config(config: str | None, space_path: str, overrides: list[str]) -> tuple[TagiConfig, Space]:
    """The sweep's config: the preset, then the space file's config sections, then --set."""
    base = load_config(config)
    space = load_space(space_path, base)
    return config_from_dict(with_overrides(base, space).to_dict(), overrides), space


def run_sweep(cfg: TagiConfig, run: RunDir, space: Space, name: str = "", fresh: bool = False) -> SweepOutputs:
    """Run (or resume) the sweep; write and return its outputs. `cfg` is the resolved config
    (`resolve_config`: the space file's own config sections are not applied here)."""
    from ray import tune

    name = name or cfg.tune.name or Path(space.source).stem or "sweep"
    check_budget(cfg)
    table = ensure_data(cfg, run)
    val = validation_tasks(table, cfg.data.val_fraction, cfg.data.seed, cfg.tune.val_tasks)  # refuses test tasks
    sweep_dir = run.root / "sweeps" / name
    exp_dir = Path(storage_path(cfg.ray.storage_path, str(run.ray_storage))) / name
    if fresh:
        shutil.rmtree(exp_dir, ignore_errors=True)
        shutil.rmtree(sweep_dir, ignore_errors=True)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    (sweep_dir / "val_tasks.json").write_text(json.dumps(val, indent=1))
    print(f"tune: {len(val)} validation tasks (split off the training tasks): {val}", flush=True)
    ensure_base(cfg, run, table)
    start = time.time()
    fleets: dict[int, Path] = {}
    if _may_use_teachers(space, cfg):
        fleets = ensure_fleets(cfg, run, table, space.possible("lora.rank", cfg), set(val))
        print(f"tune: teacher fleets ready for ranks {sorted(fleets)} ({time.time() - start:.0f} s)", flush=True)
    connect(cfg.ray.address)
    check_cluster(cfg)
    setup = {"cfg": cfg.to_dict(), "run": str(run.root), "trials": str(sweep_dir / "trials"), "name": name,
             "val_tasks": val, "fleets": {r: str(p) for r, p in fleets.items()}}
    trainable = tune.with_resources(tune.with_parameters(sweep_trial, setup=setup), {"CPU": cfg.tune.driver_cpus})
    start = time.time()
    results = _tuner(cfg, space, trainable, exp_dir, name).fit()
    print(f"tune: {len(results)} trials done ({time.time() - start:.0f} s)", flush=True)
    return write_outputs(cfg, space, results, sweep_dir, name)


def _may_use_teachers(space: Space, cfg: TagiConfig) -> bool:
    """Unless every trial has lambda_kl = lambda_ins = 0, teachers are needed."""
    kl, ins = space.possible("loss.lambda_kl", cfg), space.possible("loss.lambda_ins", cfg)
    if kl is None or ins is None:
        return True
    data = cfg.to_dict()
    return any(apply_params(data, {"loss.lambda_kl": k, "loss.lambda_ins": i}).loss.uses_teachers
               for k in kl for i in ins)


def write_outputs(cfg: TagiConfig, space: Space, results, sweep_dir: Path, name: str) -> SweepOutputs:
    """sweep_results.csv / .md, best.yaml and sweep.png from a ResultGrid."""
    rows = trial_rows(results, space.keys, cfg.train.meta_steps, sweep_dir / "trials")
    write_csv(rows, sweep_dir / "sweep_results.csv")
    best = best_row(rows)
    best_yaml = sweep_dir / "best.yaml" if best is not None else None
    if best is not None:
        run_root = sweep_dir.parent.parent
        write_best_config(cfg.to_dict(), best, space.keys, best_yaml, space.source or name,
                          str(run_root.parent / f"{run_root.name}_{name}_best"))
    curves = {}
    for result in results:
        df = result.metrics_dataframe
        if df is not None and METRIC in df and "step" in df:
            trial_id = (result.metrics or {}).get("trial_id") or Path(result.path).name
            curves[trial_id] = [(int(s), float(v)) for s, v in zip(df["step"], df[METRIC]) if v == v]
    defaults = {"loss.lambda_kl": cfg.loss.lambda_kl, "loss.lambda_ins": cfg.loss.lambda_ins,
                "lora.rank": cfg.lora.rank}
    sweep_plot(rows, curves, defaults, sweep_dir / "sweep.png")
    md = write_markdown(rows, space.keys, sweep_dir / "sweep_results.md", f"Sweep `{name}`", best, best_yaml)
    print("\n" + md.read_text(), flush=True)
    errors = [r for r in results if r.error]
    if errors:
        print(f"tune: {len(errors)} trial(s) failed; e.g. {errors[0].error}", flush=True)
    unfinished = [r for r in rows if r["status"] == "unfinished"]
    if unfinished:
        print(f"tune: {len(unfinished)} trial(s) unfinished: rerun the same command to resume the sweep", flush=True)
    return SweepOutputs(results, rows, sweep_dir, best_yaml)


def main(argv: list[str] | None = None) -> int:
    p = job_parser(__doc__.split("\n")[0], prog="tagi tune")
    p.add_argument("--space", required=True, help="search space YAML, e.g. tune/spaces/tiny.yaml")
    p.add_argument("--name", default="", help="experiment name (default: tune.name or the space file's stem)")
    p.add_argument("--fresh", action="store_true", help="delete this experiment's previous results and start over")
    args = p.parse_args(argv)
    cfg, space = resolve_config(args.config, args.space, args.overrides)
    cfg.ray.address = args.address or cfg.ray.address
    run = RunDir.of(cfg, args.out)
    record_config(cfg, run)
    out = run_sweep(cfg, run, space, args.name, args.fresh)
    return 1 if not out.rows or any(r["status"] in ("error", "unfinished") for r in out.rows) else 0


if __name__ == "__main__":
    sys.exit(main())
