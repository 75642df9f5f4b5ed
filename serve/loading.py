"""Load a TAGI checkpoint in a Serve replica: on the replica's GPU when it has one."""
from __future__ import annotations

import torch

from tagi_ray.checkpoint import load_checkpoint
from tagi_ray.config import TagiConfig, config_from_dict


def load_for_serving(checkpoint: str, serve_overrides: dict | None = None):
    """(model, tokenizer, cfg) in eval mode; `serve_overrides` replace keys of the `serve:` section."""
    model, tokenizer, cfg = load_checkpoint(checkpoint)
    if serve_overrides:
        data = cfg.to_dict()
        data["serve"] = {**data["serve"], **serve_overrides}
        cfg: TagiConfig = config_from_dict(data)
    if torch.cuda.is_available():
        model = model.to("cuda")
    return model.eval(), tokenizer, cfg
