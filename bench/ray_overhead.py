"""Ray Train's overhead on meta-training: the same worker loop (DeepSpeed ZeRO, tiny config) run
in a plain Python process vs inside a TorchTrainer with 1 worker and the same CPU threads.

    python bench/ray_overhead.py [--steps 60] [--rounds 2] [--threads 2]

Both sides run `training.meta.meta_worker_loop` (stage 2, L_ce only) on the embedded suite's
training rows, shuffled once as `jobs/meta_train.py` does and handed to the loop in its config
(Ray: through the object store); the loop takes its shard and reshuffles locally, so both sides
train on identical batches with identical losses (checked). Steps/s is the median step time
from the loop's own per-step log, pooled over the rounds, after the first --warmup steps of
each run; model loading and worker start-up are reported separately, not mixed in. The sides
alternate for --rounds rounds (in-process, Ray, in-process, Ray, ...) so that a drift in
machine speed hits both. Goal: Ray >= 0.9 x in-process. Last line: JSON summary.

Diagnosis (on by default, --no-idle-ray skips it): a third side runs the plain in-process loop
while an idle local Ray (same settings, nothing scheduled) is up, which separates what Ray's
own daemons take from the node's cores from what Ray Train adds to the loop.
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

for _k, _v in {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", "DS_ACCELERATOR": "cpu"}.items():
    os.environ.setdefault(_k, _v)

from tagi_ray.config import load_config  # noqa: E402
from tagi_ray.data.prompts import parse_prompt_format  # noqa: E402
from tagi_ray.data.tables import select_split, shuffle_rows  # noqa: E402
from tagi_ray.models.base import load_base, save_base  # noqa: E402
from tagi_ray.run_dir import RunDir  # noqa: E402
from tagi_ray.stages import ensure_data  # noqa: E402
from tagi_ray.training.examples import table_examples  # noqa: E402
from tagi_ray.training.meta import STEPS_LOG, meta_worker_loop  # noqa: E402
from tagi_ray.training.worker import run_in_process  # noqa: E402


def steps(log_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (log_dir / STEPS_LOG).read_text().splitlines()]


def median_ms(logs: list[list[dict]], warmup: int) -> float:
    """Median step time (ms) over the given runs' steps after the first `warmup` of each."""
    return statistics.median(x["seconds"] for log in logs for x in log[warmup:]) * 1e3


def run_plain(loop_config: dict, log_dir: Path, idle_ray: dict | None = None) -> float:
    """The loop in a plain Python process of its own, as a user would run it without Ray (world
    size 1; DeepSpeed's process group over gloo on loopback). `idle_ray`: `ray.init` arguments
    of a local Ray kept up, idle, while the loop runs (diagnosis)."""
    if idle_ray is not None:
        import ray

        ray.init(**idle_ray)
        try:
            return run_plain(loop_config, log_dir)
        finally:
            ray.shutdown()
    config_file = log_dir.with_suffix(".pkl")
    config_file.write_bytes(pickle.dumps({**loop_config, "log_dir": str(log_dir)}))
    t0 = time.perf_counter()
    subprocess.run([sys.executable, __file__, "--worker", str(config_file)], check=True)
    return time.perf_counter() - t0


def ray_settings(threads: int, dashboard: bool) -> dict:
    """`ray.init` arguments of the local Ray: the dashboard is on, as on any cluster that takes
    `ray job submit` (Train's placement-group cleaner also queries its State API every second)."""
    return {"num_cpus": max(2, threads), "include_dashboard": dashboard}


def run_ray(loop_config: dict, threads: int, log_dir: Path, storage: Path, dashboard: bool = True) -> float:
    """The loop in a TorchTrainer with 1 worker on a fresh local Ray (started and stopped here)."""
    import ray

    from tagi_ray.config import RayConfig
    from tagi_ray.edge.train import fit_workers

    ray.init(**ray_settings(threads, dashboard))
    try:
        t0 = time.perf_counter()
        fit_workers(meta_worker_loop, {**loop_config, "log_dir": str(log_dir)},
                    RayConfig(num_workers=1, cpus_per_worker=threads), log_dir.name, str(storage))
        return time.perf_counter() - t0
    finally:
        ray.shutdown()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--warmup", type=int, default=10, help="leading steps of each run left out of the figures")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-dashboard", action="store_true", help="diagnosis: local Ray without its dashboard")
    p.add_argument("--no-idle-ray", action="store_true",
                   help="skip the diagnostic side (in-process next to an idle local Ray)")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # internal: run the in-process side from this config
    args = p.parse_args()
    if args.worker:
        config = pickle.loads(Path(args.worker).read_bytes())
        run_in_process(meta_worker_loop, config, Path(config["log_dir"]) / "checkpoints")
        return
    tmp = Path(tempfile.mkdtemp(prefix="ray_overhead_"))
    cfg = load_config(None, [f"train.meta_steps={args.steps}", "train.checkpoint_every=0", "loss.lambda_kl=0",
                             "loss.lambda_ins=0", "ray.num_workers=1", f"ray.cpus_per_worker={args.threads}",
                             "train.zero_stage=2"])
    run = RunDir(tmp / "run")
    table = ensure_data(cfg, run)
    save_base(load_base(cfg.model), tmp / "base")
    train = shuffle_rows(select_split(table, "train"), cfg.train.seed)
    instructions = [e.instruction for e in table_examples(train, parse_prompt_format(cfg.data.prompt))]
    loop_config = {"cfg": cfg.to_dict(), "stage": "meta", "base": str(tmp / "base"), "init_hypernet": None,
                   "instructions": instructions, "teachers_dir": None, "teacher_tasks": [], "data": train}

    sides = ["local", "ray"] + ([] if args.no_idle_ray else ["local_idle_ray"])
    settings = ray_settings(args.threads, not args.no_dashboard)
    run_side = {"local": lambda d: run_plain(loop_config, d),
                "ray": lambda d: run_ray(loop_config, args.threads, d, tmp / "ray", not args.no_dashboard),
                "local_idle_ray": lambda d: run_plain(loop_config, d, idle_ray=settings)}
    walls: dict[str, list[float]] = {side: [] for side in sides}
    logs: dict[str, list[list[dict]]] = {side: [] for side in sides}
    for r in range(args.rounds):
        for side in sides:
            walls[side].append(run_side[side](tmp / f"{side}{r}"))
            logs[side].append(steps(tmp / f"{side}{r}"))
        print(f"round {r + 1}: median step " + ", ".join(
            f"{side} {median_ms(logs[side][-1:], args.warmup):.0f} ms" for side in sides), flush=True)
    # the same loop: identical batches (padded tokens per step) and identical losses on every side
    signature = [[(x["tokens"], round(x["loss"], 4)) for x in log] for side in logs.values() for log in side]
    same = all(sig == signature[0] for sig in signature)
    step_s = {side: median_ms(logs[side], args.warmup) / 1e3 for side in sides}
    ratio = step_s["local"] / step_s["ray"]
    tokens = statistics.mean(x["tokens"] for x in logs["local"][0][args.warmup:])
    print(f"{args.steps} meta-training steps x {args.rounds} rounds (batch {cfg.train.batch_size}, "
          f"ZeRO-{cfg.train.zero_stage}, {args.threads} threads, same batches and losses on every side: {same}): "
          f"in-process {1 / step_s['local']:.2f} steps/s (~{tokens / step_s['local']:.0f} padded tokens/s; job "
          f"{statistics.mean(walls['local']):.1f} s), Ray Train 1 worker {1 / step_s['ray']:.2f} steps/s (job "
          f"{statistics.mean(walls['ray']):.1f} s incl. Ray start, worker start and checkpoint) -> {ratio:.3f}")
    diagnosis = {}
    if "local_idle_ray" in step_s:
        idle = step_s["local"] / step_s["local_idle_ray"]
        train = step_s["local_idle_ray"] / step_s["ray"]
        diagnosis = {"idle_ray_ratio": round(idle, 3), "ray_train_vs_idle_ray_ratio": round(train, 3),
                     "local_idle_ray_steps_per_s": round(1 / step_s["local_idle_ray"], 2)}
        print(f"diagnosis: in-process next to an idle local Ray {1 / step_s['local_idle_ray']:.2f} steps/s "
              f"({idle:.3f} of in-process alone: Ray's daemons on the same cores); Ray Train vs that "
              f"{train:.3f} (what the Ray Train worker adds on top)")
    print(json.dumps({"name": "ray_overhead", "ratio": round(ratio, 3), "goal": "Ray steps/s >= 0.9 x in-process",
                      "pass": ratio >= 0.9 and same, "same_batches_and_losses": same,
                      "local_steps_per_s": round(1 / step_s["local"], 2),
                      "ray_steps_per_s": round(1 / step_s["ray"], 2),
                      **diagnosis,
                      "rounds": [{f"{side}_ms": round(median_ms([logs[side][r]], args.warmup)) for side in sides}
                                 for r in range(args.rounds)],
                      "threads": args.threads, "dashboard": not args.no_dashboard,
                      "local_job_s": round(statistics.mean(walls["local"]), 1),
                      "ray_job_s": round(statistics.mean(walls["ray"]), 1)}))


if __name__ == "__main__":
    sys.exit(main())
