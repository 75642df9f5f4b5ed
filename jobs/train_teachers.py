"""Ray job: train the teacher LoRA fleet (one per training task), packed K per pass, resumable.

    python jobs/train_teachers.py --config configs/tiny.yaml [--out runs/x] [--address ...]
    tagi teachers --config configs/tiny.yaml

Each Ray Train worker takes a shard of the pending tasks and trains them K at a time on one
frozen base (`tagi_ray.training.teachers.teacher_worker_loop`). Teachers already complete in
`<out>/teachers/` are skipped, so rerunning a failed or interrupted job trains only the rest.
"""
from __future__ import annotations

import argparse
import sys
import time

from tagi_ray.config import TagiConfig, load_config
from tagi_ray.run_dir import RunDir, ensure_base, ensure_data, record_config
from tagi_ray.training.teachers import merge_manifest, pending_tasks, teacher_worker_loop
from jobs.ray_session import connect, storage_path


def run_teachers(cfg: TagiConfig, run: RunDir) -> list[dict]:
    """Train the missing teachers of `run` on Ray; returns the manifest rows."""
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    table = ensure_data(cfg, run)
    base = ensure_base(cfg, run, table)
    wanted, pending = pending_tasks(cfg, table, run.teachers)
    print(f"teachers: {len(wanted) - len(pending)}/{len(wanted)} complete, {len(pending)} to train "
          f"(K={cfg.teachers.pack_size}, {cfg.ray.num_workers} workers)", flush=True)
    if pending:
        connect(cfg.ray.address)
        workers = min(cfg.ray.num_workers, len(pending))
        resources = {"CPU": cfg.ray.cpus_per_worker}
        if cfg.ray.use_gpu:
            resources["GPU"] = cfg.ray.gpus_per_worker or 1.0
        trainer = TorchTrainer(
            teacher_worker_loop,
            train_loop_config={"cfg": cfg.to_dict(), "table": ray.put(table), "base": str(base),
                               "teachers_dir": str(run.teachers), "pending": pending},
            scaling_config=ScalingConfig(num_workers=workers, use_gpu=cfg.ray.use_gpu,
                                         resources_per_worker=resources),
            # resumption is per teacher (files), so each attempt is its own Ray Train run
            run_config=RunConfig(name=f"teachers-{int(time.time())}",
                                 storage_path=storage_path(cfg.ray.storage_path, str(run.ray_storage)),
                                 failure_config=FailureConfig(max_failures=cfg.ray.max_failures)),
        )
        try:
            trainer.fit()
        finally:
            merge_manifest(run.teachers)  # what did finish is recorded even when the job failed
    rows = merge_manifest(run.teachers)
    failed = [r for r in rows if r["status"] == "failed"]
    print(f"teachers: {len(rows) - len(failed)} complete, {len(failed)} failed -> {run.teachers / 'manifest.jsonl'}")
    for r in failed:
        print(f"  failed {r['task']}: {r['error']}")
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=None)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", default=None, help="run directory (default: train.out_dir)")
    p.add_argument("--address", default="", help="Ray address (default: RAY_ADDRESS or a local cluster)")
    args = p.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    if args.address:
        cfg.ray.address = args.address
    run = RunDir.of(cfg, args.out)
    record_config(cfg, run)
    rows = run_teachers(cfg, run)
    return 1 if any(r["status"] == "failed" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
