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


def stop(serve_app: str | None = None) -> None:
    """Delete the Serve app `serve_app` (if given and running), then disconnect from the
    cluster (a local cluster started by `connect` stops with it)."""
    import ray

    if not ray.is_initialized():
        return
    if serve_app is not None:
        from ray import serve

        if serve_app in serve.status().applications:
            serve.delete(serve_app)
    ray.shutdown()


def storage_path(configured: str, default: str) -> str:
    """Ray Train/Tune storage: the configured URI (s3://, NFS path) or the run's local ray/ dir."""
    return configured or os.path.abspath(default)


def resources(available: bool = False) -> dict[str, float]:
    """The connected cluster's total (or currently free) resources, e.g. {"CPU": 2.0}."""
    import ray

    return dict(ray.available_resources() if available else ray.cluster_resources())
