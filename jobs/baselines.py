"""Ray job: train the baselines TAGI is compared with (tk_instruct, tk_instruct_lora per prompt
format; the held-out tasks' oracle LoRAs), on Ray Train workers; finished ones are skipped.

    python jobs/baselines.py --config configs/tiny.yaml [--out runs/x] [--address ...]
    tagi baselines --config configs/tiny.yaml

What each is: `tagi_ray/training/baselines.py`. Outputs: `<out>/baselines/`.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Iterable

from tagi_ray.config import TagiConfig
from tagi_ray.data.tables import without_tasks
from tagi_ray.jobs.job_args import job_config, job_parser
from tagi_ray.run_dir import RunDir
from tagi_ray.stages import ensure_base, ensure_data, record_config
from tagi_ray.training.baselines import BaselinePaths, baseline_jobs, baseline_worker_loop
from tagi_ray.training.worker import default_device, run_in_process


def run_baselines(cfg: TagiConfig, run: RunDir, formats: dict[str, int], on_ray: bool = True,
                  exclude_tasks: Iterable[str] = ()) -> list[list]:
    """Train the missing baselines for `formats` ({name: k positive examples}); returns the jobs
    run. `exclude_tasks` (validation tasks) are left out of their training data, as out of TAGI's."""
    table = ensure_data(cfg, run)
    base = ensure_base(cfg, run, table)
    jobs = baseline_jobs(cfg, table, BaselinePaths(run.baselines), formats)
    oracle = [j for j in jobs if j[0] == "oracle"]
    print(f"baselines: to train: {[j for j in jobs if j[0] != 'oracle']} and {len(oracle)} oracle folds", flush=True)
    if not jobs:
        return jobs
    config = {"cfg": cfg.to_dict(), "table": without_tasks(table, exclude_tasks), "base": str(base), "out": str(run.baselines),
              "formats": formats, "jobs": jobs}
    if on_ray:
        from tagi_ray.edge.cluster import connect, storage_path
        from tagi_ray.edge.train import fit_workers

        connect(cfg.ray.address)
        fit_workers(baseline_worker_loop, config, cfg.ray, f"baselines-{int(time.time())}",
                    storage_path(cfg.ray.storage_path, str(run.ray_storage)),
                    num_workers=min(cfg.ray.num_workers, len(jobs)))
    else:
        run_in_process(baseline_worker_loop, config, run.root / "baselines_local", default_device(cfg.ray.use_gpu))
    return jobs


def main(argv: list[str] | None = None) -> int:
    from tagi_ray.evaluation import prompt_formats

    cfg, run = job_config(job_parser(__doc__.split("\n")[0], prog="tagi baselines").parse_args(argv))
    record_config(cfg, run)
    run_baselines(cfg, run, prompt_formats(cfg))
    return 0


if __name__ == "__main__":
    sys.exit(main())
