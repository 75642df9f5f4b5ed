"""Ray Tune sweeps: a real 4-trial sweep (TorchTrainer per trial, ASHA) and the validation-split guard."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from conftest import run_with_shared_base, tiny_test_config

from tagi_ray.config import ConfigError, load_config
from tagi_ray.data.tables import read_table, select_split
from tagi_ray.data.validation import validation_tasks
from tagi_ray.run_dir import RunDir
from tagi_ray.stages import ensure_data
from tagi_ray.training.meta import STEPS_LOG
from tagi_ray.training.teacher_store import MANIFEST
from tagi_ray.tune.space import parse_space
from tagi_ray.tune.sweep import run_sweep

pytestmark = pytest.mark.timeout(900)

# 2 ranks x 2 learning rates (grids) = 4 trials; the loss weights are sampled (seeded). The two
# learning rates are orders of magnitude apart, so the trials' val_loss differ and ASHA cuts some.
SPACE = {"space": {
    "loss.lambda_kl": {"choice": [0.0, 5.0]},
    "loss.lambda_ins": {"choice": [0.0, 1.0, "sigmoid"]},
    "lora.rank": {"grid": [4, 8]},
    "train.lr": {"grid": [1.0e-7, 3.0e-3]},
}}
META_STEPS, EVERY = 9, 3
SPACES = Path(__file__).resolve().parent.parent / "tune" / "spaces"


def _sweep_cfg(**tune):
    return tiny_test_config(
        train={"pretrain_steps": 0, "meta_steps": META_STEPS, "checkpoint_every": EVERY, "batch_size": 8},
        teachers={"max_tasks": 6, "steps": 5, "pack_size": 8},
        tune={"num_samples": 1, "max_concurrent_trials": 2, "workers_per_trial": 1, "val_instances": 4, **tune})


def test_sweep_four_trials_asha_outputs_and_restore(ray_cluster, warm_run, tmp_path):
    cfg = _sweep_cfg()
    assert cfg.lora.rank == 8  # configs/tiny.yaml: rank 8 uses <run>/teachers, rank 4 <run>/teachers_r4
    run = run_with_shared_base(warm_run, tmp_path / "run")
    space = parse_space(SPACE, cfg, "test.yaml")
    out = run_sweep(cfg, run, space, name="t4")

    rows = out.rows
    assert len(rows) == 4 and len({r["trial_id"] for r in rows}) == 4
    assert not [r for r in rows if r["status"] == "error"], rows
    assert {(r["lora.rank"], r["train.lr"]) for r in rows} == {(4, 1e-7), (4, 3e-3), (8, 1e-7), (8, 3e-3)}
    # ASHA stopped at least one trial before its last meta step
    early = [r for r in rows if r["step"] < META_STEPS]
    assert early and all(r["status"] == "stopped early" for r in early), rows
    assert any(r["status"] == "completed" and r["step"] == META_STEPS for r in rows)
    assert all(r["reports"] == r["step"] // EVERY for r in rows)  # one Tune result per checkpoint
    values = [r["val_loss"] for r in rows]

    # outputs: Tune's experiment, CSV + markdown sorted by val_loss, best preset, plot
    assert (run.ray_storage / "t4").is_dir()
    with (out.dir / "sweep_results.csv").open() as f:
        assert [r["trial_id"] for r in csv.DictReader(f)] == [r["trial_id"] for r in rows]
    md = (out.dir / "sweep_results.md").read_text()
    assert md.count("| stopped early |") + md.count("| completed |") == 4
    best = load_config(out.best_config)
    top = next(r for r in rows if r["status"] == "completed")
    assert (best.lora.rank, best.train.lr, best.loss.lambda_kl) == \
        (top["lora.rank"], top["train.lr"], top["loss.lambda_kl"])
    assert best.train.out_dir != cfg.train.out_dir  # a fresh run directory for the final training
    assert (out.dir / "sweep.png").stat().st_size > 0

    # validation tasks: training tasks, never trained on (no teachers, not in any trial's data)
    table = read_table(run.table)
    val = json.loads((out.dir / "val_tasks.json").read_text())
    assert val and set(val) <= set(select_split(table, "train").column("task").to_pylist())
    # rank-specific teacher fleets, without the validation tasks
    fleets = {8: run.teachers, 4: run.root / "teachers_r4"}
    for rank, fleet in fleets.items():
        manifest = [json.loads(x) for x in (fleet / MANIFEST).read_text().splitlines()]
        assert len(manifest) == 6 and {m["rank"] for m in manifest} == {rank}
        assert not {m["task"] for m in manifest} & set(val)
    for r in rows:
        trial = RunDir(out.dir / "trials" / r["trial_id"])
        uses = r["loss.lambda_kl"] > 0 or r["loss.lambda_ins"] != 0
        assert (trial.teachers.resolve() == fleets[r["lora.rank"]].resolve()) if uses else not trial.teachers.exists()
        log = [json.loads(x) for x in (trial.root / "meta" / "meta_log" / STEPS_LOG).read_text().splitlines()]
        assert [x["step"] for x in log if "val_loss" in x][:r["reports"]] == list(range(EVERY, r["step"] + 1, EVERY))
        # the table's metric is the trial's own last validation loss, as its worker logged it
        assert r["val_loss"] == pytest.approx(next(x["val_loss"] for x in log if x["step"] == r["step"]))
    completed = [r for r in rows if r["status"] == "completed"]
    assert all(r["checkpoint"] for r in completed)

    # resubmitting restores the finished experiment: the same trials, none rerun
    again = run_sweep(cfg, run, space, name="t4")
    assert sorted(r["trial_id"] for r in again.rows) == sorted(r["trial_id"] for r in rows)
    assert [r["val_loss"] for r in again.rows] == values


def test_a_test_task_in_the_validation_set_is_refused(warm_run, tmp_path):
    run = run_with_shared_base(warm_run, tmp_path / "run")
    table = ensure_data(tiny_test_config(), run)
    test_task = sorted(set(select_split(table, "test").column("task").to_pylist()))[0]
    cfg = _sweep_cfg(val_tasks=[test_task])
    with pytest.raises(ValueError, match=f"validation task '{test_task}' is in the test split"):
        run_sweep(cfg, run, parse_space(SPACE, cfg, "test.yaml"), name="bad")
    assert not (run.ray_storage / "bad").exists()  # refused before any trial or teacher


def test_default_validation_tasks_are_a_seeded_share_of_training_tasks(warm_run):
    table = read_table(warm_run.table)
    train = set(select_split(table, "train").column("task").to_pylist())
    val = validation_tasks(table, 0.1, seed=0)
    assert val == validation_tasks(table, 0.1, seed=0) and set(val) <= train
    assert len(val) == round(0.1 * len(train))
    with pytest.raises(ValueError, match="not a training task"):
        validation_tasks(table, 0.1, 0, explicit=["task_nope"])


@pytest.mark.parametrize("space, needle", [
    ({"space": {"train.lrr": {"choice": [1e-3]}}}, "unknown key 'train.lrr'"),
    ({"space": {"lora.rank": {"randint": [2, 9]}}}, "lora.rank: use a constant, choice or grid"),
    ({"space": {"loss.lambda_ins": {"choice": [0.0, "cosine"]}}}, "space: loss.lambda_ins: 'cosine': is neither"),
    ({"space": {"train.lr": {"loguniform": [0.0, 1e-3]}}}, "need 0 < low < high"),
    ({"space": {"ray.num_workers": 2}}, "not searched"),
    ({"space": {"train.lr": {"normal": [0, 1]}}}, "expected a value or one of"),
    ({"tune": {"max_concurrent_trials": -1}, "space": {"train.lr": 1e-3}}, "tune.max_concurrent_trials"),
    ({"space": {}}, "non-empty 'space:'"),
])
def test_space_errors_name_the_entry(space, needle):
    with pytest.raises(ConfigError) as info:
        parse_space(space, load_config(None), "s.yaml")
    assert needle in str(info.value)


def test_shipped_spaces_load():
    from tagi_ray.tune.sweep import resolve_config

    cfg, space = resolve_config(None, str(SPACES / "tiny.yaml"), ["tune.num_samples=1"])
    assert cfg.tune.num_samples == 1 and cfg.train.checkpoint_every == 10  # --set over the space file's sections
    assert set(space.keys) == {"loss.lambda_kl", "loss.lambda_ins", "lora.rank", "train.lr"}
    assert space.possible("lora.rank", cfg) == [4, 8]
    _, paper = resolve_config(None, str(SPACES / "paper.yaml"), [])
    assert paper.possible("lora.rank", cfg) == [8, 16, 32]


def test_experiment_grid_retrains_every_ablation_as_its_own_run(ray_cluster, warm_run, tmp_path):
    """`tagi experiment`'s Ray Tune grid: each variant is a full meta-training run of its own,
    with its switch in its recorded config, trained without the validation tasks and reporting
    val_loss on them; a resubmission trains nothing again."""
    from safetensors.torch import load_file

    from tagi_ray.data.tables import read_table
    from tagi_ray.tune.experiment import experiment_val_tasks, run_grid, val_loss_table, variant_dir

    run = run_with_shared_base(warm_run, tmp_path / "run")
    variants = ["tagi_no_fusion", "tagi_no_hypernet"]  # every switch's config: test_evaluation.py
    cfg = tiny_test_config(train={"pretrain_steps": 0, "meta_steps": 2, "checkpoint_every": 0, "batch_size": 4},
                           loss={"lambda_kl": 0.0, "lambda_ins": 0.0},
                           experiment={"variants": variants, "formats": ["def"]},
                           tune={"max_concurrent_trials": 2, "workers_per_trial": 1, "cpus_per_worker": 0.9})
    val_tasks = experiment_val_tasks(cfg, read_table(run.table))
    assert val_tasks and experiment_val_tasks(cfg.model_copy(update={"data": cfg.data.model_copy(
        update={"val_fraction": 0.0})}), read_table(run.table)) == []
    run_grid(cfg, run, val_tasks)
    trained = {v: variant_dir(run, v, "def") for v in variants}
    configs = {v: load_config(d / "config.yaml") for v, d in trained.items()}
    assert all(c.data.prompt == "def" for c in configs.values())
    assert not configs["tagi_no_fusion"].instruction.fusion and configs["tagi_no_hypernet"].instruction.fusion
    assert configs["tagi_no_hypernet"].hypernet.kind == "shared_lora" and configs["tagi_no_fusion"].hypernet.kind == "mlp"
    weights = {v: load_file(str(d / "hypernet" / "hypernet.safetensors")) for v, d in trained.items()}
    assert all(k.startswith("bank.") for k in weights["tagi_no_hypernet"])  # one trained LoRA, no MLP
    assert any(k.startswith("heads.") for k in weights["tagi_no_fusion"])
    steps = [json.loads(x) for x in (trained["tagi_no_hypernet"] / "meta" / "meta_log" / STEPS_LOG).read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2]  # its own meta-training run
    assert "val_loss" in steps[-1] and steps[-1]["val_loss"] > 0  # on the tasks left out
    table = val_loss_table(cfg, run)
    assert "| 2 |" in table[-1] and "def tagi_no_fusion" in table[-3]
    stamps = {v: (d / "hypernet" / "hypernet.safetensors").stat().st_mtime_ns for v, d in trained.items()}
    run_grid(cfg, run, val_tasks)  # resubmitted: every variant is complete, nothing retrains
    assert {v: (d / "hypernet" / "hypernet.safetensors").stat().st_mtime_ns for v, d in trained.items()} == stamps
