"""Meta-training with real DeepSpeed inside a real TorchTrainer (2 CPU workers), and evaluation."""
from __future__ import annotations

import json
import random

import pyarrow as pa
import pytest
from conftest import run_with_shared_base, tiny_test_config

from jobs.evaluate import run_evaluation
from jobs.meta_train import run_meta_training
from jobs.train_teachers import run_teachers
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
