"""Ray job: train the teacher LoRA fleet (one per training task), packed K per pass, resumable.

    python jobs/train_teachers.py --config configs/tiny.yaml [--out runs/x] [--address ...]
    tagi teachers --config configs/tiny.yaml

Each Ray Train worker takes a shard of the pending tasks and trains them K at a time on one
frozen base (`tagi_ray.training.teachers.teacher_worker_loop`). Teachers already complete in
`<out>/teachers/` are skipped, so rerunning a failed or interrupted job trains only the rest.
"""
from __future__ import annotations

import sys
import time

from jobs.job_args import job_config, job_parser
from tagi_ray.config import TagiConfig
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
    cfg, run = job_config(job_parser(__doc__.split("\n")[0]).parse_args(argv))
    record_config(cfg, run)
    rows = run_teachers(cfg, run)
    return 1 if any(r["status"] == "failed" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
