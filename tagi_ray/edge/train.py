"""Run a library worker loop on Ray Train: a `TorchTrainer` whose workers each call
`loop(config, ctx)` with a `WorkerContext` backed by Ray Train (rank, device, `ray.train.report`,
`ray.train.get_checkpoint`). Failures restart the worker group from the last checkpoint
(`FailureConfig`); a run name that stays the same across submissions resumes the run."""
from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from tagi_ray.config import RayConfig
from tagi_ray.training.worker import WorkerContext


def _ray_worker(loop: Callable[[dict, WorkerContext], Any], use_gpu: bool, config: dict) -> None:
    """Inside a Ray Train worker: build the context from Ray Train and run the loop."""
    import ray.train
    import ray.train.torch
    from ray.train import Checkpoint

    def report(metrics: dict, checkpoint_dir: Path | None = None) -> None:
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None)

    @contextmanager
    def latest_checkpoint() -> Iterator[Path | None]:
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            yield None
            return
        with checkpoint.as_directory() as d:
            yield Path(d)

    ctx = ray.train.get_context()
    device = ray.train.torch.get_device() if use_gpu else torch.device("cpu")
    loop(config, WorkerContext(ctx.get_world_rank(), ctx.get_world_size(), device, report, latest_checkpoint,
                               node=ray.get_runtime_context().get_node_id()))


def fit_workers(loop: Callable[[dict, WorkerContext], Any], config: dict, ray_cfg: RayConfig, name: str,
                storage: str, num_workers: int | None = None, callbacks: list | None = None,
                keep_checkpoints: int = 2):
    """Run `loop` on `num_workers` (default `ray_cfg.num_workers`) Ray Train workers; returns the
    final `ray.train.Checkpoint` (None if the loop reported none). Raises if the run failed
    after `ray_cfg.max_failures` restarts."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    resources = {"CPU": ray_cfg.cpus_per_worker}
    if ray_cfg.use_gpu:
        resources["GPU"] = ray_cfg.gpus_per_worker or 1.0
    trainer = TorchTrainer(
        functools.partial(_ray_worker, loop, ray_cfg.use_gpu),
        train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=num_workers or ray_cfg.num_workers, use_gpu=ray_cfg.use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(name=name, storage_path=storage, callbacks=callbacks or [],
                             failure_config=FailureConfig(max_failures=ray_cfg.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=keep_checkpoints)),
    )
    return trainer.fit().checkpoint
