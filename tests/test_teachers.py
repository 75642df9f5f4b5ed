"""Teacher fleet on a real Ray Train TorchTrainer (2 CPU workers, packs of K=4)."""
from __future__ import annotations

import json

import pytest
import torch
from conftest import run_with_shared_base, tiny_test_config

from tagi_ray.jobs.train_teachers import run_teachers
from tagi_ray.training.teacher_store import MANIFEST, ROW_FILE

pytestmark = pytest.mark.timeout(900)

# Short-answer tasks (labels, counts, single words): what a tiny byte-level base can learn in a few steps.
TASKS = ["task9004_builtin_longest", "task9005_builtin_count_words", "task9006_builtin_parity",
         "task9010_builtin_nth_1", "task9013_builtin_count_letter_a", "task9020_builtin_contains_r",
         "task9021_builtin_contains_t", "task9035_builtin_first_starting_s"]


def _rows(run) -> dict[str, dict]:
    return {r["task"]: r for r in map(json.loads, (run.teachers / MANIFEST).read_text().splitlines())}


def test_fleet_trains_loads_with_peft_and_beats_base(ray_cluster, warm_run, tmp_path):
    from peft import PeftModel
    from transformers import T5ForConditionalGeneration

    run = run_with_shared_base(warm_run, tmp_path / "run")
    # 8 tasks, K=2, one pack per worker per group: two Ray Train runs, each a fresh worker group
    cfg = tiny_test_config(teachers={"tasks": TASKS, "pack_size": 2, "packs_per_worker": 1})
    rows = run_teachers(cfg, run)
    assert sorted(r["task"] for r in rows) == sorted(TASKS)
    assert all(r["status"] == "complete" and r["pack_size"] == 2 for r in rows)
    assert {r["worker"] for r in rows} == {0, 1}
    assert len({r["pid"] for r in rows}) == 4  # 2 groups x 2 worker processes

    ids = torch.tensor([[5, 6, 7, 8]])
    for task in TASKS:
        base = T5ForConditionalGeneration.from_pretrained(run.base)
        before = base(input_ids=ids, labels=ids).logits
        peft_model = PeftModel.from_pretrained(base, run.teachers / task)
        after = peft_model(input_ids=ids, labels=ids).logits
        assert not torch.allclose(before, after), f"{task}: adapter changes nothing"
    # each teacher beats the untuned base on its own held-back instances (reference loss),
    # and does at least as well on ROUGE-L on average
    for r in rows:
        assert r["held_back_loss"] < r["base_held_back_loss"], r
    mean = lambda key: sum(r[key] for r in rows) / len(rows)  # noqa: E731
    assert mean("rougeL") >= mean("base_rougeL")
    print({r["task"]: (round(r["held_back_loss"], 3), round(r["base_held_back_loss"], 3)) for r in rows})


def test_fleet_resumes_after_failure_and_records_nan_task(ray_cluster, warm_run, tmp_path):
    run = run_with_shared_base(warm_run, tmp_path / "run")
    # 1) each worker fails after writing 2 of its 4 teachers: the job fails, 4 teachers exist
    with pytest.raises(Exception):
        run_teachers(tiny_test_config(teachers={"tasks": TASKS, "fail_after_tasks": 2}), run)
    first = _rows(run)
    # each worker raised after its 2nd teacher; the other's writes may be cut short by the teardown
    assert 2 <= len(first) <= 4 and all(r["status"] == "complete" for r in first.values())
    stamps = {t: (run.teachers / t / ROW_FILE).stat().st_mtime_ns for t in first}

    # 2) rerun; one missing task's loss turns NaN: it is recorded as failed, the others finish
    missing = sorted(set(TASKS) - set(first))
    rows = _rows(run) if run_teachers(tiny_test_config(teachers={"tasks": TASKS, "inject_nan_task": missing[0]}),
                                      run) else {}
    assert rows[missing[0]]["status"] == "failed" and "non-finite" in rows[missing[0]]["error"]
    assert all(rows[t]["status"] == "complete" for t in TASKS if t != missing[0])

    # 3) rerun again: only the failed task is trained; completed teachers are never retrained
    rows = _rows(run) if run_teachers(tiny_test_config(teachers={"tasks": TASKS}), run) else {}
    assert all(rows[t]["status"] == "complete" for t in TASKS) and len(rows) == len(TASKS)
    assert {t: (run.teachers / t / ROW_FILE).stat().st_mtime_ns for t in first} == stamps
    assert all(rows[t]["time"] == first[t]["time"] for t in first)


def test_teacher_loop_runs_without_ray_reporting_through_its_context(warm_run, tmp_path):
    """The same worker loop in this process: two ranks of a world of 2, one after the other."""
    from tagi_ray.data.tables import read_table
    from tagi_ray.training.teacher_store import merge_manifest
    from tagi_ray.data.tables import select_split
    from tagi_ray.training.teachers import plan_packs, task_lengths, teacher_worker_loop
    from tagi_ray.training.worker import WorkerContext

    run = run_with_shared_base(warm_run, tmp_path / "run")
    tasks = TASKS[:4]
    cfg = tiny_test_config(teachers={"tasks": tasks, "steps": 5, "pack_size": 2})
    lengths = task_lengths(select_split(read_table(run.table), "train"))
    config = {"cfg": cfg.to_dict(), "table_path": str(run.table), "lengths": lengths, "base": str(run.base),
              "teachers_dir": str(run.teachers), "pending": tasks}
    reports: dict[int, list[dict]] = {0: [], 1: []}
    for rank in (0, 1):
        report = lambda metrics, checkpoint_dir=None, r=rank: reports[r].append(metrics)  # noqa: E731
        teacher_worker_loop(config, WorkerContext(rank, 2, torch.device("cpu"), report))
    assert [[(m["round"], m["tasks_done"], m["tasks_total"]) for m in reports[r]] for r in (0, 1)] == \
        [[(0, 2, 2)], [(0, 2, 2)]]  # one pack of K=2 per rank, reported once
    rows = merge_manifest(run.teachers)
    assert sorted(r["task"] for r in rows) == sorted(tasks)
    plan = plan_packs(tasks, 2, 2, lengths)
    assert {r["task"]: r["worker"] for r in rows} == {t: w for w, packs in enumerate(plan) for p in packs for t in p}


def test_runs_bound_the_packs_of_a_worker_process_in_length_order():
    from tagi_ray.training.teachers import plan_runs

    lengths = {"a": 900, "b": 10, "c": 500, "d": 20, "e": 510, "f": 30, "g": 5}
    runs = plan_runs(sorted(lengths), 2, 2, 1, lengths)  # 2 workers x 1 pack of 2: 4 tasks a run
    assert runs == [["g", "b", "d", "f"], ["c", "e", "a"]]
    assert plan_runs(sorted(lengths), 2, 2, 0, lengths) == [["g", "b", "d", "f", "c", "e", "a"]]  # 0: one run
    assert plan_runs([], 2, 2, 1) == []


def test_packs_group_tasks_of_similar_length_and_are_dealt_round_robin():
    """A pack's batches are padded to their longest row: packs hold tasks of similar length."""
    from tagi_ray.training.teachers import plan_packs

    lengths = {"a": 900, "b": 10, "c": 500, "d": 20, "e": 510, "f": 30, "g": 5}
    plan = plan_packs(sorted(lengths), 2, 2, lengths)
    assert plan == [[["g", "b"], ["c", "e"]], [["d", "f"], ["a"]]]
    assert plan_packs(["c", "a", "b"], 2, 2) == [[["a", "b"]], [["c"]]]  # no lengths: by name
