"""A real two-node Ray cluster on this machine: the teacher fleet and meta-training submitted with
`ray job submit`, workers on both nodes, checkpoints in storage both nodes see, and
meta-training surviving the loss of the second node.

    python bench/two_node.py [--workdir /tmp/tagi-2n]

- head: `ray start --head --block` (1 CPU, its own ports and temp dir); node 2: `ray start
  --address <head> --block` (1 CPU, its own ports and temp dir). Each Ray Train worker asks 1 CPU,
  so a 2-worker group spans both nodes.
- job 1, `jobs/train_teachers.py`: 16 tiny teachers, 2 workers; their rows name the node each
  trained on.
- job 2, `jobs/meta_train.py` (DeepSpeed ZeRO-2, 2 workers, `ray.max_failures=3`, a checkpoint
  every 10 steps into `--workdir/storage`): once two stage-2 checkpoints are in storage, node 2 is
  killed (SIGKILL to its process group, as a machine loss); a replacement node 3 joins; Ray
  Train restarts the worker group from the last checkpoint. `steps.jsonl` and the workers'
  `workers/*.json` show the restart and the nodes.

Prints what it checks and a JSON summary; exit status 1 if a check fails. Only the processes of
this script's nodes are stopped (never `ray stop`). ~5-8 minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tagi_ray.edge.local_node import LocalRayNode

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
BUDGET = ["train.prompt_tuning_steps=20", "teachers.max_tasks=16", "teachers.pack_size=4", "teachers.steps=20",
          "train.pretrain_steps=0", "train.meta_steps=60", "train.checkpoint_every=10", "data.max_eval_instances=4",
          "baselines.methods=[]", "ray.num_workers=2", "ray.cpus_per_worker=1", "ray.max_failures=3"]


def env() -> dict:
    # "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0" (the tests' setting) refuses a second node
    e = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1", "RAY_AUTH_MODE": "disabled",
         "RAY_USAGE_STATS_ENABLED": "0", "DS_ACCELERATOR": "cpu", "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "300"}
    e["PATH"] = f"{BIN}{os.pathsep}{e['PATH']}"
    e.pop("RAY_ADDRESS", None)
    return e


def node(name: str, root: Path, head_gcs: str | None = None) -> LocalRayNode:
    """A 1-CPU node with its own temp dir `root/name` and ports (the head when `head_gcs` is None)."""
    return LocalRayNode(str(BIN / "ray"), root / name, env(), num_cpus=1, head_gcs=head_gcs,
                        log=root / f"{name}.log")


def alive_nodes(dashboard: str) -> list[str]:
    """Node ids of the cluster's live nodes (Ray's state API)."""
    with urllib.request.urlopen(f"{dashboard}/api/v0/nodes?limit=100", timeout=10) as r:
        data = json.loads(r.read())["data"]["result"]
    return sorted(n["node_id"] for n in data.get("result", data) if n["state"] == "ALIVE")


def wait_for(predicate, timeout_s: float, what: str, every_s: float = 1.0):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except OSError:
            pass
        time.sleep(every_s)
    raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def submit(dashboard: str, script: str, run: Path, storage: Path, job_id: str) -> None:
    cmd = [str(BIN / "ray"), "job", "submit", "--address", dashboard, "--submission-id", job_id, "--no-wait",
           "--working-dir", str(REPO), "--", "python", script, "--config", "configs/tiny.yaml", "--out", str(run),
           "--set", f"ray.storage_path={storage}"] + [x for b in BUDGET for x in ("--set", b)]
    subprocess.run(cmd, env=env(), check=True, capture_output=True, text=True)


def job_status(dashboard: str, job_id: str) -> str:
    with urllib.request.urlopen(f"{dashboard}/api/jobs/{job_id}", timeout=10) as r:
        return json.loads(r.read())["status"]


def job_logs(dashboard: str, job_id: str) -> str:
    with urllib.request.urlopen(f"{dashboard}/api/jobs/{job_id}/logs", timeout=10) as r:
        return json.loads(r.read())["logs"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", default="/tmp/tagi-2n")
    args = p.parse_args()
    root = Path(args.workdir)
    shutil.rmtree(root, ignore_errors=True)
    run, storage = root / "run", root / "storage"
    nodes: list[LocalRayNode] = []
    summary: dict = {"name": "two_node"}
    checks: dict[str, bool] = {}
    t_start = time.time()
    try:
        head = node("head", root)
        nodes.append(head)
        head.wait_ready(120)
        node2 = node("node2", root, head.gcs)
        nodes.append(node2)
        first_two = wait_for(lambda: n if len(n := alive_nodes(head.dashboard)) == 2 else None, 120, "node 2")
        summary["nodes"] = first_two

        # job 1: the teacher fleet
        t0 = time.time()
        submit(head.dashboard, "jobs/train_teachers.py", run, storage, "teachers")
        status = wait_for(lambda: (s := job_status(head.dashboard, "teachers")) in ("SUCCEEDED", "FAILED", "STOPPED")
                          and s, 900, "the teachers job", 2)
        rows = [json.loads(p.read_text()) for p in (run / "teachers").glob("*/teacher.json")]
        teacher_nodes = sorted({r["node"] for r in rows})
        summary["teachers"] = {"status": status, "seconds": round(time.time() - t0), "teachers": len(rows),
                               "nodes": teacher_nodes}
        checks["teachers job SUCCEEDED"] = status == "SUCCEEDED"
        checks["teachers trained on both nodes"] = set(teacher_nodes) == set(first_two)
        print(f"teachers: {status}, {len(rows)} teachers on nodes {[n[:8] for n in teacher_nodes]} "
              f"in {summary['teachers']['seconds']} s", flush=True)

        # job 2: meta-training, node 2 lost mid-run, a replacement joins
        t0 = time.time()
        submit(head.dashboard, "jobs/meta_train.py", run, storage, "meta")
        # two checkpoints in storage: the first is then registered with Ray Train (a checkpoint
        # counts once every rank has reported it; a node lost right after the upload loses it)
        checkpoint = wait_for(lambda: c if len(c := checkpoint_dirs(storage)) >= 2 else None, 900,
                              "two meta-training checkpoints", 0.5)
        killed_at = time.time()
        node2.kill()
        print(f"meta: checkpoint {checkpoint[-1].name} in storage after {killed_at - t0:.0f} s; node 2 killed",
              flush=True)
        wait_for(lambda: len(alive_nodes(head.dashboard)) == 1, 120, "node 2 to be seen dead")
        node3 = node("node3", root, head.gcs)
        nodes.append(node3)
        status = wait_for(lambda: (s := job_status(head.dashboard, "meta")) in ("SUCCEEDED", "FAILED", "STOPPED")
                          and s, 1200, "the meta-training job", 2)
        workers = [json.loads(p.read_text()) for p in run.glob("**/workers/meta-meta-rank*.json")]
        before = sorted({w["node"] for w in workers if w["time"] < killed_at})
        after = sorted({w["node"] for w in workers if w["time"] >= killed_at})
        steps = [json.loads(line) for f in run.glob("**/steps.jsonl") for line in f.read_text().splitlines() if line]
        step_ids = [s["step"] for s in steps if "step" in s]
        restarted_from = next((b for a, b in zip(step_ids, step_ids[1:]) if b <= a), None)
        checkpoints = [str(p.relative_to(storage)) for p in checkpoint_dirs(storage)]
        summary["meta"] = {"status": status, "seconds": round(time.time() - t0), "nodes_before_kill": before,
                           "nodes_after_kill": after, "restarted_at_step": restarted_from,
                           "last_step": max(step_ids) if step_ids else None, "checkpoints_in_storage": checkpoints}
        checks["meta job SUCCEEDED"] = status == "SUCCEEDED"
        checks["meta workers on both nodes before the kill"] = set(before) == set(first_two)
        checks["restart on the head and the replacement node"] = node2_id_gone(after, first_two) and len(after) == 2
        checks["resumed from a checkpoint, not step 0"] = restarted_from is not None and restarted_from > 1
        checks["checkpoints in the shared storage"] = bool(checkpoints)
        print(f"meta: {status} in {summary['meta']['seconds']} s; workers on {[n[:8] for n in before]} before the "
              f"kill, {[n[:8] for n in after]} after; steps resumed at {restarted_from} (last "
              f"{summary['meta']['last_step']}); {len(checkpoints)} checkpoints in {storage}", flush=True)
        if status != "SUCCEEDED":
            print(job_logs(head.dashboard, "meta")[-3000:])
    finally:
        for n in reversed(nodes):
            n.stop()
    summary["checks"] = checks
    summary["wall_s"] = round(time.time() - t_start)
    for name, ok in checks.items():
        print(f"  {'ok ' if ok else 'FAIL'} {name}")
    print(json.dumps(summary))
    return 0 if checks and all(checks.values()) else 1


def checkpoint_dirs(storage: Path) -> list[Path]:
    """Ray Train's checkpoint directories under the storage path (not its snapshot files)."""
    return sorted(p for p in storage.glob("**/checkpoint_*") if p.is_dir())


def node2_id_gone(after: list[str], first_two: list[str]) -> bool:
    """After the kill, no worker ran on the lost node (the head's id is kept, node 2's is not)."""
    return len(set(after) & set(first_two)) == 1


if __name__ == "__main__":
    sys.exit(main())
