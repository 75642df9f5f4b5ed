"""Where a worker loop runs, told to the loop instead of asked of Ray.

A worker loop (`teacher_worker_loop`, `meta_worker_loop`) takes `(config, ctx)`: `ctx` says its
rank, the world size and its device, how to report (metrics, optionally a checkpoint directory)
and where to resume from. `tagi_ray.edge.train` builds one inside each Ray Train worker;
`run_in_process` builds one for a plain process, so every loop runs the same with and without
Ray (world size 1, checkpoints kept in a local directory).
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ContextManager

import torch

from tagi_ray.ports import free_ports


class InjectedFault(RuntimeError):
    """Raised on purpose (teachers.fail_after_tasks, train.fail_at_step) to test resumption."""


def _no_checkpoint() -> ContextManager[Path | None]:
    @contextmanager
    def none() -> Iterator[None]:
        yield None

    return none()


@dataclass
class WorkerContext:
    """Rank, world size and device of one worker; `report(metrics, checkpoint_dir)` hands metrics
    (and, optionally, a checkpoint directory that the caller may delete afterwards) to whoever
    runs the loop; `latest_checkpoint()` is a context manager giving the directory to resume
    from, or None on a fresh start. Every rank must call `report` the same number of times."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    report: Callable[[dict, Path | None], None] = lambda metrics, checkpoint_dir=None: None
    latest_checkpoint: Callable[[], ContextManager[Path | None]] = _no_checkpoint
    node: str = field(default_factory=socket.gethostname)  # the cluster node it runs on (Ray: node id)

    def record(self, directory: str | Path, kind: str) -> None:
        """Note in `directory/workers/` which node and process this rank runs on (one file per
        start: restarts on other nodes stay visible)."""
        out = Path(directory) / "workers"
        out.mkdir(parents=True, exist_ok=True)
        info = {"kind": kind, "rank": self.rank, "world_size": self.world_size, "node": self.node,
                "host": socket.gethostname(), "pid": os.getpid(), "time": time.time()}
        (out / f"{kind}-rank{self.rank}-{os.getpid()}.json").write_text(json.dumps(info))


def default_device(use_gpu: bool) -> torch.device:
    """The first GPU when asked for and present, else the CPU."""
    return torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")


@dataclass
class LocalCheckpoints:
    """Checkpoints of an in-process run: each reported directory is copied to
    `root/checkpoint_<n>`; the newest `keep` stay. Same `as_directory()` shape as Ray's."""

    root: Path
    keep: int = 2
    metrics: list[dict] = field(default_factory=list)

    def _dirs(self) -> list[Path]:
        found = [p for p in self.root.glob("checkpoint_*") if p.name.split("_")[-1].isdigit()]
        return sorted(found, key=lambda p: int(p.name.split("_")[-1]))

    def report(self, metrics: dict, checkpoint_dir: Path | None = None) -> None:
        self.metrics.append(dict(metrics))
        if checkpoint_dir is None:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        dirs = self._dirs()
        n = int(dirs[-1].name.split("_")[-1]) + 1 if dirs else 0
        tmp = self.root / f".checkpoint_{n}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(checkpoint_dir, tmp)
        tmp.rename(self.root / f"checkpoint_{n}")
        for old in self._dirs()[:-self.keep]:
            shutil.rmtree(old, ignore_errors=True)

    @contextmanager
    def as_directory(self) -> Iterator[Path | None]:
        """The newest checkpoint directory, or None."""
        dirs = self._dirs()
        yield dirs[-1] if dirs else None


def _single_process_group() -> None:
    """A world-size-1 gloo process group for this process (DeepSpeed needs one), created once
    and kept: DeepSpeed caches its groups, so a second loop in the process reuses the same."""
    import torch.distributed as dist

    if dist.is_initialized():
        return
    port = free_ports()[0]
    for key, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}.items():
        os.environ[key] = value  # what DeepSpeed reads about the world
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)


def run_in_process(loop: Callable[[dict, WorkerContext], Any], config: dict, checkpoint_root: str | Path,
                   device: torch.device | None = None) -> LocalCheckpoints:
    """Run a worker loop in this process (rank 0 of 1), resuming from `checkpoint_root`'s newest
    checkpoint when there is one; returns the checkpoints (with every reported metric)."""
    store = LocalCheckpoints(Path(checkpoint_root))
    ctx = WorkerContext(0, 1, device or torch.device("cpu"), store.report, store.as_directory)
    _single_process_group()
    loop(config, ctx)
    return store
