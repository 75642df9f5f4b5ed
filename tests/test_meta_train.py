"""Meta-training with real DeepSpeed inside a real TorchTrainer (2 CPU workers), and evaluation."""
from __future__ import annotations

import json
import random

import pyarrow as pa
import pytest
from conftest import run_with_shared_base, tiny_test_config

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

    results = run_evaluation(cfg, teacher_run)
    metrics = json.loads((teacher_run.root / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(results))
    assert set(metrics) == {"def", "def+2pos"}
    assert {"tagi", "tagi_no_fusion", "base", "prompt"} <= set(metrics["def+2pos"])
    assert (teacher_run.root / "report.md").read_text().count("| **overall** |") >= 4
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
