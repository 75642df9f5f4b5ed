"""One sweep trial: a Ray Tune function that meta-trains with a TorchTrainer (Ray Train V2).

The Tune function is a light driver (`tune.driver_cpus`); it builds the trial's config from the
sampled parameters, prepares a trial run directory that shares the sweep run's table, base and
the teacher fleet of its rank, and fits both meta-training stages with Ray Train workers
(`tune.workers_per_trial`). Stage 2 gets the validation rows and Ray Tune's
`TuneReportCallback`, so every checkpoint's record, with `val_loss`, reaches Tune (and ASHA).

A trial's Ray Train runs have stable names (`<experiment>-<trial id>-<stage>`), so a trial
restarted by `Tuner.restore` resumes from its last checkpoint.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from tagi_ray.config import TagiConfig
from tagi_ray.data.tables import read_table
from tagi_ray.data.validation import check_validation_tasks, validation_rows
from tagi_ray.run_dir import RunDir
from tagi_ray.stages import record_config
from tagi_ray.tune.space import apply_params


def trial_config(base: dict, params: dict[str, Any]) -> TagiConfig:
    """The sampled parameters applied to the sweep's config; Ray Train resources from `tune:`."""
    cfg = apply_params(base, params)
    cfg.ray.num_workers = cfg.tune.workers_per_trial
    cfg.ray.cpus_per_worker = cfg.tune.cpus_per_worker
    return cfg


def _link(path: Path, target: Path) -> None:
    if path.is_symlink() or path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(target)


def trial_run(root: Path, main: RunDir, teachers: Path | None) -> RunDir:
    """A run directory for one trial: its own meta/ and hypernet/, the sweep run's table and base,
    and (when its losses use teachers) the fleet of its rank."""
    run = RunDir(root)
    _link(run.table, main.table)
    _link(run.base, main.base)
    if main.baselines.is_dir():  # instruction.encoder: tk_instruct reads the tk_instruct baseline
        _link(run.baselines, main.baselines)
    if teachers is not None:
        _link(run.teachers, teachers)
    return run


def sweep_trial(params: dict[str, Any], setup: dict) -> None:
    """Ray Tune function trainable. `setup` (via tune.with_parameters): {"cfg": config dict,
    "run": sweep run root, "trials": trials directory, "name": experiment name,
    "val_tasks": [task], "fleets": {rank: teachers dir}}."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from tagi_ray.jobs.meta_train import run_meta_training

    cfg = trial_config(setup["cfg"], params)
    trial_id = tune.get_context().get_trial_id()
    main = RunDir(Path(setup["run"]))
    fleet = setup["fleets"].get(cfg.lora.rank) if cfg.loss.uses_teachers else None
    if cfg.loss.uses_teachers and fleet is None:
        raise RuntimeError(f"trial {trial_id}: no teacher fleet for lora.rank={cfg.lora.rank}")
    run = trial_run(Path(setup["trials"]) / trial_id, main, Path(fleet) if fleet else None)
    record_config(cfg, run)
    table = read_table(run.table)
    val_tasks = list(setup["val_tasks"])
    check_validation_tasks(table, val_tasks)  # never a test task, whatever the caller passed
    val = validation_rows(table, val_tasks, cfg.tune.val_instances)
    run_meta_training(cfg, run, exclude_tasks=set(val_tasks), val_data=val, callbacks=[TuneReportCallback()],
                      name=f"{setup['name']}-{trial_id}")
