"""Ray Train's overhead on meta-training: the same worker loop (DeepSpeed ZeRO, tiny config) run
in this process vs inside a TorchTrainer with 1 worker and the same CPU threads.

    python bench/ray_overhead.py [--steps 40] [--threads 2]

Both sides run `training.meta.meta_worker_loop` (stage 2, L_ce only) on the embedded suite with
the same batches; steps/s comes from the loop's own per-step log (median over steps after the
first 5), so model loading and worker start-up are reported separately, not mixed in.
Goal: Ray steps/s >= 0.9 x in-process. Last line: JSON summary.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

for _k, _v in {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", "DS_ACCELERATOR": "cpu"}.items():
    os.environ.setdefault(_k, _v)

from tagi_ray.config import load_config  # noqa: E402
from tagi_ray.data.prompts import parse_prompt_format  # noqa: E402
from tagi_ray.data.tables import select_split  # noqa: E402
from tagi_ray.models.base import load_base, save_base  # noqa: E402
from tagi_ray.run_dir import RunDir, ensure_data  # noqa: E402
from tagi_ray.training.examples import table_examples  # noqa: E402
from tagi_ray.training.meta import STEPS_LOG, meta_worker_loop  # noqa: E402


def median_step(log_dir: Path, skip: int = 5) -> float:
    rows = [json.loads(x) for x in (log_dir / STEPS_LOG).read_text().splitlines()]
    return statistics.median(r["seconds"] for r in rows[skip:])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ray_overhead_"))
    cfg = load_config(None, [f"train.meta_steps={args.steps}", "train.checkpoint_every=0", "loss.lambda_kl=0",
                             "loss.lambda_ins=0", "ray.num_workers=1", f"ray.cpus_per_worker={args.threads}",
                             "train.zero_stage=2"])
    run = RunDir(tmp / "run")
    table = ensure_data(cfg, run)
    save_base(load_base(cfg.model), tmp / "base")
    train = select_split(table, "train")
    instructions = [e.instruction for e in table_examples(train, parse_prompt_format(cfg.data.prompt))]
    loop_config = {"cfg": cfg.to_dict(), "stage": "meta", "base": str(tmp / "base"), "init_hypernet": None,
                   "instructions": instructions, "teachers_dir": None, "teacher_tasks": []}

    # in-process: world size 1, DeepSpeed's process group over gloo on loopback
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    t0 = time.perf_counter()
    meta_worker_loop({**loop_config, "data": train, "log_dir": str(tmp / "local")})
    local_wall = time.perf_counter() - t0
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        os.environ.pop(key, None)

    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    ray.init(num_cpus=max(2, args.threads), include_dashboard=True)  # Train's cleanup queries the state API
    t0 = time.perf_counter()
    TorchTrainer(meta_worker_loop, train_loop_config={**loop_config, "log_dir": str(tmp / "ray_log")},
                 datasets={"train": ray.data.from_arrow(train)},
                 scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": args.threads}),
                 run_config=RunConfig(name="ray_overhead", storage_path=str(tmp / "ray"))).fit()
    ray_wall = time.perf_counter() - t0
    ray.shutdown()

    local_step, ray_step = median_step(tmp / "local"), median_step(tmp / "ray_log")
    ratio = local_step / ray_step
    print(f"{args.steps} meta-training steps (batch {cfg.train.batch_size}, ZeRO-{cfg.train.zero_stage}, "
          f"{args.threads} threads): in-process {1 / local_step:.2f} steps/s (job {local_wall:.1f} s), "
          f"Ray Train 1 worker {1 / ray_step:.2f} steps/s (job {ray_wall:.1f} s incl. worker start and "
          f"checkpoint) -> {ratio:.3f}")
    print(json.dumps({"name": "ray_overhead", "ratio": round(ratio, 3), "goal": "Ray steps/s >= 0.9 x in-process",
                      "pass": ratio >= 0.9, "local_steps_per_s": round(1 / local_step, 2),
                      "ray_steps_per_s": round(1 / ray_step, 2), "local_job_s": round(local_wall, 1),
                      "ray_job_s": round(ray_wall, 1)}))


if __name__ == "__main__":
    sys.exit(main())
