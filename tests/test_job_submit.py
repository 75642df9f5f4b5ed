"""The tiny pipeline as a real Ray job: a Ray head started with the `ray` CLI on 127.0.0.1, the
job submitted with `ray job submit`, outputs checked; then only that head is stopped (other Ray
clusters on the machine, e.g. the test session's own, are left alone)."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parent.parent
RAY = str(Path(sys.executable).parent / "ray")
TINY_BUDGET = [  # the embedded default with test-sized budgets
    "train.prompt_tuning_steps=20", "teachers.max_tasks=8", "teachers.pack_size=4", "teachers.steps=20",
    "train.pretrain_steps=4", "train.meta_steps=8", "train.checkpoint_every=0", "data.max_eval_instances=4",
    "ray.num_workers=2",
]


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _env() -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # the job's `python` = this venv's
    env.pop("RAY_ADDRESS", None)
    return env


@pytest.fixture()
def ray_head():
    """`ray start --head --block` on loopback with its own ports and temp dir; yields the
    dashboard (job API) address; stops exactly the processes of this head afterwards."""
    temp_dir = tempfile.mkdtemp(prefix="trj", dir="/tmp")  # short: Ray's socket paths must stay < 108 chars
    gcs, dash, client, agent, agent_grpc, metrics, runtime_env, node_mgr, obj_mgr = _free_ports(9)
    cmd = [RAY, "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(gcs),
           "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash), "--ray-client-server-port", str(client),
           "--dashboard-agent-listen-port", str(agent), "--dashboard-agent-grpc-port", str(agent_grpc),
           "--metrics-export-port", str(metrics), "--runtime-env-agent-port", str(runtime_env),
           "--node-manager-port", str(node_mgr), "--object-manager-port", str(obj_mgr),
           "--num-cpus", "2", "--temp-dir", temp_dir, "--disable-usage-stats"]
    head = subprocess.Popen(cmd, env=_env(), start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT)
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"{address}/api/version", timeout=2)
                break
            except OSError:
                if head.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"ray head did not come up (exit {head.poll()}); see {temp_dir}")
                time.sleep(1)
        yield address
    finally:
        ours = [p for p in psutil.process_iter(["cmdline"]) if temp_dir in " ".join(p.info["cmdline"] or [])]
        head.send_signal(signal.SIGTERM)  # `ray start --block` stops the processes it started
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
        for proc in ours:  # anything of this head that outlived it (never other clusters' processes)
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass


def test_pipeline_as_ray_job(ray_head, tmp_path):
    out = tmp_path / "run"
    submission = f"tagi-test-{uuid.uuid4().hex[:8]}"
    cmd = [RAY, "job", "submit", "--address", ray_head, "--submission-id", submission, "--working-dir", str(REPO),
           "--runtime-env-json", '{"excludes": [".git", ".venv", "runs"]}', "--",
           "python", "jobs/pipeline.py", "--config", "configs/tiny.yaml", "--out", str(out)]
    for item in TINY_BUDGET:
        cmd += ["--set", item]
    submit = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=900)
    from ray.job_submission import JobStatus, JobSubmissionClient

    status = JobSubmissionClient(ray_head).get_job_status(submission)
    assert status == JobStatus.SUCCEEDED, (status, submit.stdout[-4000:], submit.stderr[-2000:])
    rows = [json.loads(r) for r in (out / "teachers" / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and all(r["status"] == "complete" and (out / "teachers" / r["task"]).is_dir() for r in rows)
    assert (out / "hypernet" / "hypernet.safetensors").is_file() and (out / "hypernet" / "config.yaml").is_file()
    assert (out / "metrics.json").is_file() and (out / "report.md").is_file()
