"""The teacher fleet at scale on the tiny preset: `tagi teachers` (2 Ray Train workers, one job)
for fleets of 50, 200 and 756 generated tasks, and packs of K = 4, 16, 64; then resumption after
kill -9 of one worker and, separately, of the driver.

    python bench/fleet.py [--sizes 50,200,756] [--packs 4,16,64] [--pack-fleet 200] [--out runs/fleet]
                          [--longest 50] [--no-kill] [--no-sizes] [--no-packs] [--set KEY=VALUE ...]

`--longest N` (after the sizes; 0 skips it) trains only the N longest tasks of the largest
suite: the same packs as that fleet's last ones, without the rest of the fleet.

The base is used as built (no warm-up: `train.prompt_tuning_steps=0`), so a run is the fleet.
Per run: tasks trained, wall time of the job (start-up included), tasks/hour, and each worker's
peak RSS (the largest `peak_rss_mb` its teacher rows record: ru_maxrss of the worker process).
Kill runs: the job is started, one worker (then, in a fresh run, the driver) is killed with
SIGKILL once some teachers are complete; `tagi teachers` is run again on the same directory and
must train exactly the missing ones (the teacher files written before are untouched). Needs the
machine to itself (it starts local Ray clusters and ends with `ray stop`-free cleanup of only its
own processes). The last line is a JSON summary.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
TAGI = str(Path(sys.executable).parent / "tagi")
ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", "DS_ACCELERATOR": "cpu",
       "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
ENV.pop("RAY_ADDRESS", None)


OVERRIDES: list[str] = []  # --set KEY=VALUE of this bench, passed to every job


def teachers_cmd(out: Path, n: int, k: int, tasks: list[str] | None = None) -> list[str]:
    """`tagi teachers` for a generated suite of `n` tasks (only `tasks` of it, when given)."""
    only = ["--set", f"teachers.tasks={json.dumps(tasks)}"] if tasks else []
    extra = [a for kv in OVERRIDES for a in ("--set", kv)]
    return [TAGI, "teachers", "--config", str(REPO / "configs" / "tiny.yaml"), "--out", str(out),
            "--set", f"data.builtin_tasks={n}", "--set", f"teachers.pack_size={k}",
            "--set", "train.prompt_tuning_steps=0", *only, *extra]  # the base warm-up is not the fleet's cost


def longest_tasks(out: Path, n: int) -> list[str]:
    """The `n` training tasks of the run `out` with the longest rows (`task_lengths`)."""
    from tagi_ray.data.tables import read_table, select_split
    from tagi_ray.training.teachers import task_lengths

    lengths = task_lengths(select_split(read_table(out / "data" / "tasks.parquet"), "train"))
    return sorted(lengths, key=lambda t: (-lengths[t], t))[:n]


def rows(out: Path) -> list[dict]:
    """Complete teacher rows (each teacher directory's row)."""
    found = []
    for meta in (out / "teachers").glob("*/teacher.json"):
        try:
            found.append(json.loads(meta.read_text()))
        except (OSError, json.JSONDecodeError):
            pass
    return [r for r in found if r.get("status") == "complete"]


def run_job(out: Path, n: int, k: int, tasks: list[str] | None = None) -> dict:
    """One `tagi teachers` job to the end: wall time, what it trained, peak RSS per worker."""
    t0 = time.time()
    proc = subprocess.run(teachers_cmd(out, n, k, tasks), cwd=REPO, env=ENV, capture_output=True, text=True)
    wall = time.time() - t0
    log = proc.stdout + proc.stderr
    (out / "fleet.log").write_text(log)
    planned = re.search(r"teachers: (\d+)/(\d+) complete, (\d+) to train", log)
    done = [r for r in rows(out) if r["time"] >= t0]
    rss: dict[str, float] = {}
    for r in done:
        key = f"{r.get('node', r['host'])[:8]}/w{r['worker']}"
        rss[key] = max(rss.get(key, 0.0), r["peak_rss_mb"])
    return {"tasks": n, "pack": k, "returncode": proc.returncode, "wall_s": round(wall, 1),
            "complete_before": int(planned.group(1)) if planned else None,
            "to_train": int(planned.group(3)) if planned else None, "trained": len(done),
            "tasks_per_hour": round(len(done) / wall * 3600), "peak_rss_mb": {k_: round(v) for k_, v in rss.items()},
            "worker_groups": max([int(g) for g in re.findall(r"worker group \d+/(\d+)", log)] or [1]),
            "worker_processes": len({r.get("pid") for r in done}),
            "train_s": round(sum(r["seconds"] for r in done), 1)}


def _kill_when(out: Path, proc: subprocess.Popen, after: int, target: str) -> tuple[int, str]:
    """SIGKILL a Ray Train worker ("worker") or the driver ("driver") once `after` teachers are done."""
    while len(rows(out)) < after:
        if proc.poll() is not None:
            raise RuntimeError(f"the job ended before {after} teachers were complete")
        time.sleep(0.5)
    if target == "driver":
        victim = proc.pid
    else:
        kids = psutil.Process(proc.pid).children(recursive=True)
        workers = [p for p in psutil.process_iter(["pid", "cmdline"])
                   if "RayTrainWorker" in " ".join(p.info["cmdline"] or []) or
                   (p in kids and "ray::RayTrainWorker" in (p.name() or ""))]
        if not workers:
            raise RuntimeError("no RayTrainWorker process found")
        victim = workers[0].pid
    done = len(rows(out))
    os.kill(victim, signal.SIGKILL)
    return done, f"{target} pid {victim}"


def _cleanup(proc: subprocess.Popen) -> None:
    """Wait for the job; after a driver kill, end the local Ray cluster it started (its processes)."""
    try:
        proc.wait(timeout=600)
    except subprocess.TimeoutExpired:
        proc.kill()
    time.sleep(3)


def kill_and_resume(out: Path, n: int, k: int, target: str) -> dict:
    before_kill_files: dict[str, float] = {}
    proc = subprocess.Popen(teachers_cmd(out, n, k), cwd=REPO, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    killed_at, victim = _kill_when(out, proc, max(8, n // 5), target)
    _cleanup(proc)
    if target == "driver":  # its local cluster's processes die with their session
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        time.sleep(3)
    survived = rows(out)
    for r in survived:
        before_kill_files[r["task"]] = (out / "teachers" / r["task"] / "teacher.json").stat().st_mtime
    resumed = run_job(out, n, k)
    untouched = all((out / "teachers" / t / "teacher.json").stat().st_mtime == m for t, m in before_kill_files.items())
    final = rows(out)
    return {"killed": victim, "complete_at_kill": killed_at, "complete_after_kill": len(survived),
            "first_returncode": proc.returncode, "resubmission": resumed,
            "trained_only_missing": resumed["to_train"] == n - len(survived) == resumed["trained"] and untouched,
            "complete_in_the_end": len({r["task"] for r in final})}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="50,200,756")
    p.add_argument("--packs", default="4,16,64")
    p.add_argument("--pack-fleet", type=int, default=200, help="fleet size of the K runs")
    p.add_argument("--out", default=str(REPO / "runs" / "fleet"))
    p.add_argument("--no-sizes", action="store_true")
    p.add_argument("--no-packs", action="store_true")
    p.add_argument("--no-kill", action="store_true")
    p.add_argument("--longest", type=int, default=50,
                   help="then train only this many of the largest fleet's longest tasks (0: skip): is the "
                        "peak set by the number of teachers or by the longest packs?")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override for every job (e.g. teachers.micro_batch_tokens=2048)")
    args = p.parse_args()
    OVERRIDES[:] = args.set
    root = Path(args.out)
    summary: dict = {"name": "fleet", "overrides": args.set, "sizes": [], "packs": [], "kills": []}

    def fresh(name: str) -> Path:
        d = root / name
        if d.exists():
            subprocess.run(["rm", "-rf", str(d)], check=True)
        return d

    if not args.no_sizes:
        for n in map(int, args.sizes.split(",")):
            r = run_job(fresh(f"n{n}-k16"), n, 16)
            summary["sizes"].append(r)
            print(f"fleet {n:4d}, K=16: {r['trained']} trained in {r['wall_s']} s = {r['tasks_per_hour']} tasks/h "
                  f"({r['worker_groups']} worker groups); peak RSS per worker {r['peak_rss_mb']} MB", flush=True)
    if summary["sizes"] and args.longest:
        n = max(r["tasks"] for r in summary["sizes"])
        names = longest_tasks(root / f"n{n}-k16", args.longest)
        r = run_job(fresh(f"n{n}-longest{args.longest}"), n, 16, names)
        summary["longest"] = {**r, "only": args.longest}
        print(f"the {args.longest} longest of {n} tasks, K=16: {r['trained']} trained in {r['wall_s']} s; "
              f"peak RSS per worker {r['peak_rss_mb']} MB", flush=True)
    if not args.no_packs:
        for k in map(int, args.packs.split(",")):
            r = run_job(fresh(f"n{args.pack_fleet}-k{k}"), args.pack_fleet, k)
            summary["packs"].append(r)
            print(f"fleet {args.pack_fleet}, K={k:2d}: {r['trained']} trained in {r['wall_s']} s = "
                  f"{r['tasks_per_hour']} tasks/h; peak RSS per worker {r['peak_rss_mb']} MB", flush=True)
    if not args.no_kill:
        for target in ("worker", "driver"):
            r = kill_and_resume(fresh(f"kill-{target}"), args.pack_fleet, 16, target)
            summary["kills"].append({"target": target, **r})
            print(f"kill -9 {r['killed']} with {r['complete_at_kill']} complete -> resubmission trained "
                  f"{r['resubmission']['trained']} (planned {r['resubmission']['to_train']}, "
                  f"{r['complete_after_kill']} kept); only the missing: {r['trained_only_missing']}; "
                  f"{r['complete_in_the_end']} complete in the end", flush=True)
    rss = [v for r in summary["sizes"] for v in r["peak_rss_mb"].values()]
    if rss:
        summary["rss_spread"] = round(max(rss) / min(rss) - 1, 3)
        top = {r["tasks"]: max(r["peak_rss_mb"].values()) for r in summary["sizes"]}
        summary["rss_top_per_fleet"] = top
        print(f"peak RSS across fleet sizes: {min(rss)}-{max(rss)} MB ({summary['rss_spread']:+.1%} max/min); "
              f"largest worker per fleet {top}")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
