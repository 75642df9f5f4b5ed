"""Ray job: train the teacher LoRA fleet (one per training task), packed K per pass, resumable.

    python jobs/train_teachers.py --config configs/tiny.yaml [--out runs/x] [--address ...]
    tagi teachers --config configs/tiny.yaml

Each Ray Train worker takes a shard of the pending tasks and trains them K at a time on one
frozen base (`tagi_ray.training.teachers.teacher_worker_loop`); a large fleet goes in several
Ray Train runs of at most `teachers.packs_per_worker` packs per worker, each a fresh worker group
(`plan_runs`: a worker's memory stays bounded). Teachers already complete in
`<out>/teachers/` are skipped, so rerunning a failed or interrupted job trains only the rest.
"""
from __future__ import annotations

import sys
import time

from tagi_ray.config import TagiConfig
from tagi_ray.data.tables import select_split
from tagi_ray.jobs.job_args import job_config, job_parser
from tagi_ray.run_dir import RunDir
from tagi_ray.stages import ensure_base, ensure_data, record_config
from tagi_ray.training.teacher_store import merge_manifest, pending_tasks
from tagi_ray.training.teachers import plan_runs, task_lengths, teacher_worker_loop
from tagi_ray.training.worker import default_device, run_in_process


def run_teachers(cfg: TagiConfig, run: RunDir, on_ray: bool = True) -> list[dict]:
    """Train the missing teachers of `run` (on Ray Train, or in this process); returns the
    manifest rows."""
    table = ensure_data(cfg, run)
    base = ensure_base(cfg, run, table)
    wanted, pending = pending_tasks(cfg, table, run.teachers)
    print(f"teachers: {len(wanted) - len(pending)}/{len(wanted)} complete, {len(pending)} to train "
          f"(K={cfg.teachers.pack_size}, {cfg.ray.num_workers if on_ray else 1} workers)", flush=True)
    if pending:
        lengths = task_lengths(select_split(table, "train"))
        world = cfg.ray.num_workers if on_ray else 1
        runs = plan_runs(pending, world, cfg.teachers.pack_size, cfg.teachers.packs_per_worker, lengths)
        shared = {"cfg": cfg.to_dict(), "table_path": str(run.table), "base": str(base), "lengths": lengths,
                  "teachers_dir": str(run.teachers)}
        if on_ray:
            from tagi_ray.edge.cluster import connect, storage_path
            from tagi_ray.edge.train import fit_workers

            connect(cfg.ray.address)
        try:
            for i, tasks in enumerate(runs):
                if len(runs) > 1:
                    print(f"teachers: worker group {i + 1}/{len(runs)}: {len(tasks)} tasks "
                          f"(teachers.packs_per_worker={cfg.teachers.packs_per_worker})", flush=True)
                config = {**shared, "pending": tasks}
                if on_ray:
                    # resumption is per teacher (files), so each attempt is its own Ray Train run
                    fit_workers(teacher_worker_loop, config, cfg.ray, f"teachers-{int(time.time())}-{i}",
                                storage_path(cfg.ray.storage_path, str(run.ray_storage)),
                                num_workers=min(world, len(tasks)))
                else:
                    run_in_process(teacher_worker_loop, config, run.root / "teachers_local",
                                   default_device(cfg.ray.use_gpu))
        finally:
            merge_manifest(run.teachers)  # what did finish is recorded even when the job failed
    rows = merge_manifest(run.teachers)
    failed = [r for r in rows if r["status"] == "failed"]
    print(f"teachers: {len(rows) - len(failed)} complete, {len(failed)} failed -> {run.teachers / 'manifest.jsonl'}")
    for r in failed:
        print(f"  failed {r['task']}: {r['error']}")
    return rows


def main(argv: list[str] | None = None) -> int:
    cfg, run = job_config(job_parser(__doc__.split("\n")[0], prog="tagi teachers").parse_args(argv))
    record_config(cfg, run)
    rows = run_teachers(cfg, run)
    return 1 if any(r["status"] == "failed" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
