"""The Serve application: AdapterGenerator + InstanceInference behind the HTTP ingress.

    serve run serve/config.yaml                      # or: serve deploy serve/config.yaml
    serve run tagi_ray.serve.app:build_app checkpoint=runs/tiny/hypernet
    tagi serve --checkpoint runs/tiny/hypernet
"""
from __future__ import annotations

from pathlib import Path

from ray.serve import Application

from tagi_ray.checkpoint import HYPERNET_FILE
from tagi_ray.serve.adapter_generator import AdapterGenerator
from tagi_ray.serve.ingress import TagiIngress
from tagi_ray.serve.instance_inference import InstanceInference
from tagi_ray.serve.loading import serve_config

DEPLOYMENTS = ("AdapterGenerator", "InstanceInference", "TagiIngress")


def serve_limits(checkpoint: str, overrides: dict | None = None) -> dict:
    """The checkpoint's `serve:` section with `overrides` applied (validated)."""
    return serve_config(checkpoint, overrides).serve.model_dump()


def replica_cpus(total_cpus: float) -> dict[str, float]:
    """CPUs per replica sized to a cluster of `total_cpus`: the ingress only routes (0.1), the
    two model deployments share the rest, at most 1 CPU each."""
    share = min(1.0, max(0.1, round((total_cpus - 0.1) / 2, 2)))
    return {"AdapterGenerator": share, "InstanceInference": share, "TagiIngress": 0.1}


def replica_gpus(total_gpus: float) -> dict[str, float]:
    """GPUs per replica: the two model deployments share one GPU when the cluster has any."""
    share = 0.5 if total_gpus >= 1 else 0.0
    return {"AdapterGenerator": share, "InstanceInference": share}


def build_app(args: dict) -> Application:
    """Application builder (Serve config `args`): checkpoint (required), serve (overrides of the
    config's `serve:` section, e.g. {max_batch_size: 16}), num_cpus (CPUs per replica: one number
    for every deployment, or {deployment name: CPUs}), num_gpus ({deployment name: GPUs}),
    num_replicas ({deployment name: replicas}); serve/config.yaml sets them per deployment instead."""
    checkpoint = args.get("checkpoint")
    if not checkpoint or not (Path(checkpoint) / HYPERNET_FILE).is_file():
        raise ValueError(f"args.checkpoint: {checkpoint!r} is not a TAGI checkpoint directory "
                         f"(expected {HYPERNET_FILE} inside; produce one with `tagi meta-train`)")
    checkpoint = str(Path(checkpoint).resolve())
    overrides = dict(args.get("serve") or {})
    cfg = serve_config(checkpoint, overrides)
    limits = cfg.serve.model_dump()
    deployments = {"AdapterGenerator": AdapterGenerator, "InstanceInference": InstanceInference,
                   "TagiIngress": TagiIngress}
    cpus, gpus = args.get("num_cpus"), args.get("num_gpus") or {}
    if cpus is not None:
        per = cpus if isinstance(cpus, dict) else {name: cpus for name in deployments}
        deployments = {name: d.options(ray_actor_options={"num_cpus": float(per[name]),
                                                          "num_gpus": float(gpus.get(name, 0))}) if name in per else d
                       for name, d in deployments.items()}
    for name, n in (args.get("num_replicas") or {}).items():
        deployments[name] = deployments[name].options(num_replicas=int(n))
    # bounded queues: past them Ray Serve answers 503 with Retry-After (proxy -> ingress, ingress -> models)
    backpressure = {"max_queued_requests": cfg.serve.max_queued_requests,
                    "backpressure_config": {"retry_after_s": cfg.serve.retry_after_s}}
    deployments = {name: d.options(**backpressure) for name, d in deployments.items()}
    deployments["InstanceInference"] = deployments["InstanceInference"].options(
        max_ongoing_requests=cfg.serve.max_ongoing_requests)
    generator = deployments["AdapterGenerator"].bind(checkpoint, overrides)
    inference = deployments["InstanceInference"].bind(checkpoint, overrides)
    return deployments["TagiIngress"].bind(generator, inference, limits, cfg.model.name)
