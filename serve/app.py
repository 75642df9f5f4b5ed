"""The Serve application: AdapterGenerator + InstanceInference behind the HTTP ingress.

    serve run serve/config.yaml                      # or: serve deploy serve/config.yaml
    serve run serve.app:build_app checkpoint=runs/tiny/hypernet
    tagi serve --checkpoint runs/tiny/hypernet
"""
from __future__ import annotations

from pathlib import Path

from ray.serve import Application

from serve.adapter_generator import AdapterGenerator
from serve.ingress import TagiIngress
from serve.instance_inference import InstanceInference
from serve.loading import serve_config
from tagi_ray.checkpoint import HYPERNET_FILE


def serve_limits(checkpoint: str, overrides: dict | None = None) -> dict:
    """The checkpoint's `serve:` section with `overrides` applied (validated)."""
    return serve_config(checkpoint, overrides).serve.__dict__


def build_app(args: dict) -> Application:
    """Application builder (Serve config `args`): checkpoint (required), serve (overrides of the
    config's `serve:` section, e.g. {max_batch_size: 16}), num_cpus (per replica of every
    deployment, for small machines; serve/config.yaml sets resources per deployment instead)."""
    checkpoint = args.get("checkpoint")
    if not checkpoint or not (Path(checkpoint) / HYPERNET_FILE).is_file():
        raise ValueError(f"args.checkpoint: {checkpoint!r} is not a TAGI checkpoint directory "
                         f"(expected {HYPERNET_FILE} inside; produce one with `tagi meta-train`)")
    checkpoint = str(Path(checkpoint).resolve())
    overrides = dict(args.get("serve") or {})
    limits = serve_limits(checkpoint, overrides)
    gen_d, inf_d, ing_d = AdapterGenerator, InstanceInference, TagiIngress
    if "num_cpus" in args:
        options = {"ray_actor_options": {"num_cpus": float(args["num_cpus"])}}
        gen_d, inf_d, ing_d = gen_d.options(**options), inf_d.options(**options), ing_d.options(**options)
    generator = gen_d.bind(checkpoint, overrides)
    inference = inf_d.bind(checkpoint, generator, overrides)
    return ing_d.bind(generator, inference, limits)
