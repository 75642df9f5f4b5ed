"""Meta-training with real DeepSpeed inside a real TorchTrainer (2 CPU workers), and evaluation."""
from __future__ import annotations

import json
import random

import pyarrow as pa
import pytest
import torch
from conftest import run_with_shared_base, tiny_test_config

from tagi_ray.jobs.baselines import run_baselines
from tagi_ray.jobs.evaluate import run_evaluation
from tagi_ray.jobs.meta_train import run_meta_training
from tagi_ray.jobs.train_teachers import run_teachers
from tagi_ray.checkpoint import load_checkpoint
from tagi_ray.training.meta import STEPS_LOG, worker_shard
from tagi_ray.training.pretrain_text import split_text

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def teacher_run(ray_cluster, warm_run, tmp_path_factory):
    """8 quick teachers on the shared base (the KL / L_ins targets)."""
    run = run_with_shared_base(warm_run, tmp_path_factory.mktemp("meta") / "run")
    run_teachers(tiny_test_config(teachers={"max_tasks": 8, "steps": 10}), run)
    return run


def _meta_cfg(**train):
    return tiny_test_config(teachers={"max_tasks": 8}, data={"max_eval_instances": 4},
                            train={"pretrain_steps": 4, "meta_steps": 6, "checkpoint_every": 3, "batch_size": 8, **train})


def _steps(run, stage):
    return [json.loads(x) for x in (run.root / "meta" / f"{stage}_log" / STEPS_LOG).read_text().splitlines()]


def test_both_stages_then_evaluation(teacher_run):
    cfg = _meta_cfg()
    ckpt = run_meta_training(cfg, teacher_run)
    model, _, ckpt_cfg = load_checkpoint(ckpt)  # standalone: no DeepSpeed involved
    assert ckpt_cfg.lora.rank == cfg.lora.rank
    pre, meta = _steps(teacher_run, "pretrain"), _steps(teacher_run, "meta")
    assert [r["step"] for r in pre] == [1, 2, 3, 4] and [r["step"] for r in meta] == list(range(1, 7))
    assert "loss_kl" not in pre[0] and "loss_ins" not in pre[0]  # stage 1 is L_ce only
    assert {"loss_ce", "loss_kl", "loss_ins", "lambda_ins"} <= set(meta[0])  # every term logged separately
    assert all(r["tokens"] > 0 and 0 <= r["data_seconds"] <= r["seconds"] for r in pre + meta)  # throughput inputs

    # every method is a row: the baselines are trained (in this process, tiny budgets), then evaluated
    cfg.baselines.tk_instruct_steps = cfg.baselines.tk_instruct_lora_steps = cfg.baselines.oracle_steps = 3
    cfg.teachers.pack_size = 16  # the oracle folds are packed like teachers
    run_baselines(cfg, teacher_run, {"def+2pos": 2}, on_ray=False)
    results = run_evaluation(cfg, teacher_run)
    metrics = json.loads((teacher_run.root / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(results))
    rows = metrics["formats"]["def+2pos"]  # scored in the format the checkpoint was trained with
    assert set(metrics["formats"]) == {"def+2pos"}
    assert set(rows) == {"copy_input", "copy_demo", "base", "prompt_zero_shot", "tk_instruct", "tk_instruct_lora",
                         "oracle", "tagi"}
    n = metrics["protocol"]["scored_instances"]
    for name, row in rows.items():
        o = row["overall"]
        assert o["n"] == n  # every method on the same instances
        for metric in ("rougeL", "exact_match"):  # CIs present and around the point estimate
            assert o[f"{metric}_ci"][0] <= o[metric] <= o[f"{metric}_ci"][1], (name, o)
        assert all(0 < t["distinct"] <= 1 for t in row["per_task"].values())
        if name != "tagi":
            d = row["tagi_minus"]
            assert d["rougeL_ci"][0] <= d["rougeL"] <= d["rougeL_ci"][1]
            assert d["rougeL"] == pytest.approx(rows["tagi"]["overall"]["rougeL"] - o["rougeL"], abs=1e-3)
    predictions = (teacher_run.root / "predictions.jsonl").read_text().splitlines()
    assert len(predictions) == n * len(rows)
    report = (teacher_run.root / "report.md").read_text()
    assert "| tk_instruct_lora |" in report and "95% CI" in report and "distinct predictions" in report
    assert (teacher_run.root / "training_curves.png").stat().st_size > 0

    # a finished run is skipped when resubmitted
    assert run_meta_training(cfg, teacher_run) == ckpt and len(_steps(teacher_run, "meta")) == 6


def test_worker_failure_mid_stage2_resumes_from_last_checkpoint(teacher_run, warm_run, tmp_path):
    run = run_with_shared_base(warm_run, tmp_path / "run")
    run.teachers.symlink_to(teacher_run.teachers)
    cfg = _meta_cfg(pretrain_steps=0, meta_steps=8, checkpoint_every=3, fail_at_step=5)
    cfg.ray.max_failures = 1
    run_meta_training(cfg, run)
    steps = _steps(run, "meta")
    first = [r["step"] for r in steps if not r["restored"]]
    again = [r["step"] for r in steps if r["restored"]]
    assert first == [1, 2, 3, 4, 5]  # the failure came after step 5 ...
    assert again == [4, 5, 6, 7, 8]  # ... and the run resumed after the step-3 checkpoint
    assert len(steps) - 8 <= cfg.train.checkpoint_every  # re-done steps: at most one interval
    assert (run.hypernet / "hypernet.safetensors").is_file()


def test_pretraining_split_keeps_every_word_in_order():
    rng = random.Random(0)
    text = "one two three four five six seven eight"
    for _ in range(20):
        e = split_text(text, rng)
        assert e.instruction and e.source and e.target
        assert " ".join([e.instruction, e.source, e.target]) == text


def test_worker_shards_partition_the_rows():
    table = pa.table({"row": list(range(23))})
    for world in (1, 2, 3, 4):
        shards = [worker_shard(table, rank, world) for rank in range(world)]
        rows = [r for s in shards for r in s.column("row").to_pylist()]
        assert rows == list(range(23))  # disjoint, nothing lost, order kept
        assert max(s.num_rows for s in shards) - min(s.num_rows for s in shards) <= 1


def test_meta_loop_runs_without_ray_and_resumes_from_its_own_checkpoints(warm_run, tmp_path):
    """meta_worker_loop in this process (DeepSpeed on a world-size-1 gloo group): it reports
    through its context, keeps checkpoints locally, and a longer rerun resumes from the last one."""
    from tagi_ray.data.tables import read_table, select_split
    from tagi_ray.training.examples import table_examples
    from tagi_ray.training.meta import meta_worker_loop
    from tagi_ray.training.worker import run_in_process

    train = select_split(read_table(warm_run.table), "train")
    cfg = tiny_test_config(train={"meta_steps": 4, "checkpoint_every": 2, "batch_size": 4},
                           loss={"lambda_kl": 0.0, "lambda_ins": 0.0})
    config = {"cfg": cfg.to_dict(), "stage": "meta", "base": str(warm_run.base), "init_hypernet": None,
              "instructions": [e.instruction for e in table_examples(train, 2)], "teachers_dir": None,
              "teacher_tasks": [], "log_dir": str(tmp_path / "log"), "data": train}
    first = run_in_process(meta_worker_loop, config, tmp_path / "ckpt")
    assert [m["step"] for m in first.metrics] == [2, 4] and not any(m["restored"] for m in first.metrics)
    with first.as_directory() as d:
        assert (d / "export" / "hypernet.safetensors").is_file()  # the last checkpoint holds the export
    cfg.train.meta_steps = 6
    again = run_in_process(meta_worker_loop, {**config, "cfg": cfg.to_dict()}, tmp_path / "ckpt")
    assert [m["step"] for m in again.metrics] == [6] and again.metrics[0]["restored"]
    log = [json.loads(x)["step"] for x in (tmp_path / "log" / STEPS_LOG).read_text().splitlines()]
    assert log == [1, 2, 3, 4, 5, 6]  # steps 5-6 continued after step 4, nothing redone


def test_input_standardisation_is_fitted_once_and_kept_by_stage_2(warm_run, tmp_path):
    """Stage 1 fits the hypernetwork's input stats on both stages' instructions; stage 2 keeps them."""
    from safetensors.torch import load_file

    from tagi_ray.inference import fit_hypernet_input_stats

    run = run_with_shared_base(warm_run, tmp_path / "run")
    cfg = tiny_test_config(train={"pretrain_steps": 2, "meta_steps": 2, "checkpoint_every": 0, "batch_size": 4},
                           loss={"lambda_kl": 0.0, "lambda_ins": 0.0})
    run_meta_training(cfg, run, on_ray=False)
    stage1 = load_file(str(run.root / "meta" / "pretrain" / "hypernet.safetensors"))
    stage2 = load_file(str(run.root / "meta" / "meta" / "hypernet.safetensors"))
    for key in ("in_mean", "in_std"):
        assert torch.equal(stage1[key], stage2[key]), key  # no shift of the inputs between stages
    # and they are not the task instructions' alone (stage 1's fragments count too), nor the defaults
    model, tokenizer, _ = load_checkpoint(run.hypernet)
    from tagi_ray.data.tables import read_table, select_split
    from tagi_ray.training.examples import table_examples

    instructions = [e.instruction for e in table_examples(select_split(read_table(run.table), "train"), 2)]
    fit_hypernet_input_stats(model, tokenizer, cfg.model, instructions)
    assert not torch.allclose(model.hypernet.in_mean, stage2["in_mean"])
    assert not torch.allclose(stage2["in_std"], torch.ones_like(stage2["in_std"]))
