"""Ray job: the whole flow in one run directory — data, base, teachers, baselines, meta-training
(both stages), evaluation, report. Every step is skipped when its outputs are complete.

    python jobs/pipeline.py --config configs/tiny.yaml [--out runs/x] [--address ...]
    ray job submit --working-dir . -- python jobs/pipeline.py --config configs/tiny.yaml
    tagi pipeline --config configs/tiny.yaml
"""
from __future__ import annotations

import sys
import time

from tagi_ray.config import TagiConfig
from tagi_ray.data.prompts import format_name, parse_prompt_format
from tagi_ray.jobs.baselines import run_baselines
from tagi_ray.jobs.evaluate import run_evaluation
from tagi_ray.jobs.job_args import job_config, job_parser
from tagi_ray.jobs.meta_train import run_meta_training
from tagi_ray.jobs.train_teachers import run_teachers
from tagi_ray.run_dir import RunDir
from tagi_ray.stages import ensure_base, ensure_data, record_config


def run_pipeline(cfg: TagiConfig, run: RunDir) -> dict:
    """Run (or resume) every stage; returns the evaluation results."""
    timings = {}

    def stage(name, fn):
        start = time.time()
        print(f"\n=== {name} ===", flush=True)
        out = fn()
        timings[name] = round(time.time() - start, 1)
        print(f"=== {name}: {timings[name]} s ===", flush=True)
        return out

    record_config(cfg, run)
    table = stage("data", lambda: ensure_data(cfg, run))
    stage("base warm-up", lambda: ensure_base(cfg, run, table))
    if cfg.loss.uses_teachers:
        stage("teachers", lambda: run_teachers(cfg, run))
    if cfg.baselines.methods:
        k = parse_prompt_format(cfg.data.prompt)
        stage("baselines", lambda: run_baselines(cfg, run, {format_name(k): k}))
    stage("meta-training", lambda: run_meta_training(cfg, run))
    results = stage("evaluation", lambda: run_evaluation(cfg, run))
    print("stage seconds:", timings)
    return results


def main(argv: list[str] | None = None) -> int:
    cfg, run = job_config(job_parser(__doc__.split("\n")[0], prog="tagi pipeline").parse_args(argv))
    run_pipeline(cfg, run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
