"""The tiny pipeline as a real Ray job: a Ray head started with the `ray` CLI on 127.0.0.1, the
job submitted with `ray job submit`, outputs checked; then only that head is stopped.

`ray stop` is never used: it stops every Ray process of the user on the machine (there is no
option to scope it), including the test session's own in-process cluster and other people's.
Instead the head runs as `ray start --head --block` (a child of this test, in its own session)
with its own temp dir and ports. Teardown does what `ray stop` does -- SIGTERM, a grace period,
SIGKILL -- but by pid, to that process and what it started: its descendants and processes whose
command line names its temp dir. Ray processes of the test session that are not this head (the
in-process cluster of other tests) are checked to be alive afterwards."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from tagi_ray.ports import free_ports

REPO = Path(__file__).resolve().parent.parent
RAY = str(Path(sys.executable).parent / "ray")
TINY_BUDGET = [  # the embedded default with test-sized budgets
    "train.prompt_tuning_steps=20", "teachers.max_tasks=8", "teachers.pack_size=4", "teachers.steps=20",
    "train.pretrain_steps=4", "train.meta_steps=8", "train.checkpoint_every=0", "data.max_eval_instances=4",
    "baselines.methods=[]",
    "ray.num_workers=2",
]


@dataclass
class Head:
    address: str  # the dashboard / job API, http://127.0.0.1:<port>
    gcs: str  # 127.0.0.1:<port>, what the job's driver connects to
    temp_dir: str


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


def _processes_of(head: subprocess.Popen, temp_dir: str) -> dict[int, psutil.Process]:
    """The head's processes: its descendants, and processes whose command line names its temp dir
    (catches any that were re-parented). Never this test process."""
    procs = _descendants(head.pid)
    for p in psutil.process_iter(["cmdline"]):
        try:
            if temp_dir in " ".join(p.info["cmdline"] or []):
                procs[p.pid] = p
        except psutil.Error:
            continue
    procs.pop(os.getpid(), None)
    return procs


def _stop(head: subprocess.Popen, temp_dir: str, grace_s: float = 10) -> None:
    """What `ray stop` does (SIGTERM, a grace period, then SIGKILL), for this head's processes only."""
    ours = _processes_of(head, temp_dir)
    for proc in ours.values():  # the head (`ray start --block`) and everything it started
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    head.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(list(ours.values()), timeout=grace_s)
    alive += [p for pid, p in _processes_of(head, temp_dir).items() if pid not in ours]  # started meanwhile
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(alive, timeout=10)
    head.wait(timeout=10)
    assert not alive, f"processes of the test's Ray head survived: {[p.pid for p in alive]}"


@pytest.fixture()
def ray_head():
    """`ray start --head --block` on loopback with its own ports and temp dir; yields its
    addresses; afterwards stops exactly the processes of this head."""
    temp_dir = tempfile.mkdtemp(prefix="trj", dir="/tmp")  # short: Ray's socket paths must stay < 108 chars
    gcs, dash, client, agent, agent_grpc, metrics, runtime_env, node_mgr, obj_mgr = free_ports(9)
    cmd = [RAY, "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(gcs),
           "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash), "--ray-client-server-port", str(client),
           "--dashboard-agent-listen-port", str(agent), "--dashboard-agent-grpc-port", str(agent_grpc),
           "--metrics-export-port", str(metrics), "--runtime-env-agent-port", str(runtime_env),
           "--node-manager-port", str(node_mgr), "--object-manager-port", str(obj_mgr),
           "--num-cpus", "2", "--temp-dir", temp_dir, "--disable-usage-stats"]
    head = subprocess.Popen(cmd, env=_env(), start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT)
    address = f"http://127.0.0.1:{dash}"
    # Ray processes of this test session that are not this head (the in-process cluster of
    # ray.init() when other tests ran first): they must survive the teardown.
    others: list[psutil.Process] = []
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
        mine = _processes_of(head, temp_dir)
        others = [p for pid, p in _descendants(os.getpid()).items() if pid not in mine and pid != head.pid]
        yield Head(address, f"127.0.0.1:{gcs}", temp_dir)
    finally:
        start = time.time()
        try:
            _stop(head, temp_dir)
        finally:
            shutil.rmtree(temp_dir, ignore_errors=True)
        print(f"test Ray head stopped in {time.time() - start:.1f} s")
    survivors = [p for p in others if p.is_running()]
    assert len(survivors) == len(others), "stopping the test's head touched other Ray processes"


def test_pipeline_as_ray_job(ray_head, tmp_path):
    from ray.job_submission import JobStatus, JobSubmissionClient

    out = tmp_path / "run"
    submission = f"tagi-test-{uuid.uuid4().hex[:8]}"
    cmd = [RAY, "job", "submit", "--address", ray_head.address, "--submission-id", submission,
           "--working-dir", str(REPO), "--runtime-env-json", '{"excludes": [".git", ".venv", "runs"]}', "--",
           "python", "jobs/pipeline.py", "--config", "configs/tiny.yaml", "--out", str(out)]
    for item in TINY_BUDGET:
        cmd += ["--set", item]
    submit = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=900)  # blocks, streams logs

    client = JobSubmissionClient(ray_head.address)
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
    subprocess.run([serve_cli, "deploy", "--address", ray_head.address, str(tmp_path / "serve.yaml")], env=_env(),
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
