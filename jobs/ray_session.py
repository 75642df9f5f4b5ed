"""Connecting a job to Ray: the cluster at --address / RAY_ADDRESS, or a local one."""
from __future__ import annotations

import os


def connect(address: str = "", num_cpus: int | None = None) -> None:
    """ray.init once: `address` (or RAY_ADDRESS, set by `ray job submit`) or a new local cluster."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS", "")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=True)


def storage_path(configured: str, default: str) -> str:
    """Ray Train/Tune storage: the configured URI (s3://, NFS path) or the run's local ray/ dir."""
    return configured or os.path.abspath(default)
