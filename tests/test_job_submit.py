"""The tiny pipeline as a real Ray job: a Ray head started with the `ray` CLI on 127.0.0.1, the
job submitted with `ray job submit`, outputs checked; then only that head is stopped.

`ray stop` is never used: it stops every Ray process of the user on the machine (there is no
option to scope it), including the test session's own in-process cluster and other people's.
Instead the head is a `tagi_ray.edge.local_node.LocalRayNode`: `ray start --head --block` (a
child of this test, in its own session) with its own temp dir and ports, stopped as `ray stop`
would (SIGTERM, a grace period, SIGKILL) but by pid, only its own processes. Ray processes of
the test session that are not this head (the in-process cluster of other tests) are checked to
be alive afterwards."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psutil
import pytest

from tagi_ray.edge.local_node import LocalRayNode
from tagi_ray.ports import free_ports

REPO = Path(__file__).resolve().parent.parent
RAY = str(Path(sys.executable).parent / "ray")
TINY_BUDGET = [  # the embedded default with test-sized budgets
    "train.prompt_tuning_steps=20", "teachers.max_tasks=8", "teachers.pack_size=4", "teachers.steps=20",
    "train.pretrain_steps=4", "train.meta_steps=8", "train.checkpoint_every=0", "data.max_eval_instances=4",
    "baselines.methods=[]",
    "ray.num_workers=2",
]


def _env() -> dict:
    """This process's env (tests/conftest.py's RAY_AUTH_MODE=disabled etc.) with this venv first on
    PATH: a job's `python` is the one on the PATH that `ray start` saw."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env.pop("RAY_ADDRESS", None)
    return env


def _descendants(pid: int) -> dict[int, psutil.Process]:
    try:
        return {p.pid: p for p in psutil.Process(pid).children(recursive=True)}
    except psutil.NoSuchProcess:
        return {}


@pytest.fixture()
def ray_head():
    """`ray start --head --block` on loopback with its own ports and temp dir (LocalRayNode);
    afterwards stops exactly the processes of this head."""
    temp_dir = tempfile.mkdtemp(prefix="trj", dir="/tmp")  # short: Ray's socket paths must stay < 108 chars
    head = LocalRayNode(RAY, temp_dir, _env(), num_cpus=2)
    # Ray processes of this test session that are not this head (the in-process cluster of
    # ray.init() when other tests ran first): they must survive the teardown.
    others: list[psutil.Process] = []
    survived: list[int] = []
    try:
        head.wait_ready(120)
        mine = head.processes()
        others = [p for pid, p in _descendants(os.getpid()).items() if pid not in mine and pid != head.proc.pid]
        yield head
    finally:
        start = time.time()
        try:
            survived = head.stop()
        finally:
            shutil.rmtree(temp_dir, ignore_errors=True)
        print(f"test Ray head stopped in {time.time() - start:.1f} s")
    assert not survived, f"processes of the test's Ray head survived: {survived}"
    survivors = [p for p in others if p.is_running()]
    assert len(survivors) == len(others), "stopping the test's head touched other Ray processes"


def test_pipeline_as_ray_job(ray_head, tmp_path):
    from ray.job_submission import JobStatus, JobSubmissionClient

    out = tmp_path / "run"
    submission = f"tagi-test-{uuid.uuid4().hex[:8]}"
    cmd = [RAY, "job", "submit", "--address", ray_head.dashboard, "--submission-id", submission,
           "--working-dir", str(REPO), "--runtime-env-json", '{"excludes": [".git", ".venv", "runs"]}', "--",
           "python", "jobs/pipeline.py", "--config", "configs/tiny.yaml", "--out", str(out)]
    for item in TINY_BUDGET:
        cmd += ["--set", item]
    submit = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=900)  # blocks, streams logs

    client = JobSubmissionClient(ray_head.dashboard)
    status = client.get_job_status(submission)
    logs = client.get_job_logs(submission)
    assert status == JobStatus.SUCCEEDED, (status, submit.stdout[-4000:], submit.stderr[-2000:])
    # the driver joined this cluster (RAY_ADDRESS set by the job supervisor), not a new local one
    assert ray_head.gcs in logs and "Started a local Ray instance" not in logs, logs[-3000:]
    rows = [json.loads(r) for r in (out / "teachers" / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and all(r["status"] == "complete" and (out / "teachers" / r["task"]).is_dir() for r in rows)
    assert all((out / "teachers" / r["task"] / "adapter_config.json").is_file() for r in rows)  # PEFT dirs
    assert (out / "hypernet" / "hypernet.safetensors").is_file() and (out / "hypernet" / "config.yaml").is_file()
    assert (out / "report.md").is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["formats"]) == {"def+2pos"} and "tagi" in metrics["formats"]["def+2pos"]  # evaluation results

    # the same cluster serves the result with Serve's own CLI and serve/config.yaml
    import requests
    import yaml

    config = yaml.safe_load((REPO / "serve" / "config.yaml").read_text())
    port = free_ports(1)[0]
    config["http_options"]["port"] = port
    config["applications"][0]["args"]["checkpoint"] = str(out / "hypernet")
    (tmp_path / "serve.yaml").write_text(yaml.safe_dump(config))
    serve_cli = str(Path(sys.executable).parent / "serve")
    subprocess.run([serve_cli, "deploy", "--address", ray_head.dashboard, str(tmp_path / "serve.yaml")], env=_env(),
                   check=True, timeout=120, capture_output=True)
    deadline, answer = time.time() + 120, None
    while time.time() < deadline and answer is None:
        try:
            r = requests.post(f"http://127.0.0.1:{port}/v1/generate", timeout=30,
                              json={"instruction": "Reverse the words.", "inputs": ["a b c"], "max_new_tokens": 8})
            answer = r.json() if r.status_code == 200 else None
        except requests.RequestException:
            pass
        time.sleep(1)
    assert answer is not None and len(answer["outputs"]) == 1, "serve deploy serve/config.yaml never answered"
