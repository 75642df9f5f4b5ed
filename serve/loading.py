"""Load a TAGI checkpoint in a Serve replica (on the replica's GPU when it has one), and its
config with the app's `serve:` overrides applied."""
from __future__ import annotations

from pathlib import Path

import torch

from tagi_ray.checkpoint import load_checkpoint
from tagi_ray.config import TagiConfig, config_from_dict, load_config


def with_serve_overrides(cfg: TagiConfig, serve_overrides: dict | None) -> TagiConfig:
    """`cfg` with keys of its `serve:` section replaced (validated like any config)."""
    if not serve_overrides:
        return cfg
    data = cfg.to_dict()
    data["serve"] = {**data["serve"], **serve_overrides}
    return config_from_dict(data)


def serve_config(checkpoint: str, serve_overrides: dict | None = None) -> TagiConfig:
    """The checkpoint's config with the overrides, without loading any weights."""
    return with_serve_overrides(load_config(Path(checkpoint) / "config.yaml"), serve_overrides)


def load_for_serving(checkpoint: str, serve_overrides: dict | None = None):
    """(model, tokenizer, cfg) in eval mode; `serve_overrides` replace keys of the `serve:` section."""
    model, tokenizer, cfg = load_checkpoint(checkpoint)
    if torch.cuda.is_available():
        model = model.to("cuda")
    return model.eval(), tokenizer, with_serve_overrides(cfg, serve_overrides)
