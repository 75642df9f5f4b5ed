"""A TAGI checkpoint: everything serving needs, no DeepSpeed, no pickle.

    DIR/config.yaml             the resolved TagiConfig
    DIR/base/                   the base model + tokenizer (save_pretrained, safetensors)
    DIR/hypernet.safetensors    the hypernetwork's weights
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from safetensors.torch import load_file, save_file

from tagi_ray.config import load_config, save_config, TagiConfig
from tagi_ray.models.base import BaseBundle, load_pretrained, save_base
from tagi_ray.tagi import TagiModel

HYPERNET_FILE = "hypernet.safetensors"


def save_checkpoint(model: TagiModel, tokenizer, cfg: TagiConfig, out_dir: str | Path) -> Path:
    """Write atomically (temp dir + rename): a crash never leaves a half checkpoint."""
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        save_config(cfg, tmp / "config.yaml")
        save_base(BaseBundle(model.base, tokenizer, model.arch), tmp / "base")
        state = {k: v.detach().contiguous().cpu() for k, v in model.hypernet.state_dict().items()}
        save_file(state, str(tmp / HYPERNET_FILE), metadata={"format": "pt"})
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def load_checkpoint(ckpt_dir: str | Path) -> tuple[TagiModel, object, TagiConfig]:
    """(model in eval mode, tokenizer, config) from a checkpoint directory."""
    ckpt = Path(ckpt_dir)
    if not (ckpt / HYPERNET_FILE).is_file():
        raise FileNotFoundError(f"{ckpt} is not a tagi-ray checkpoint (no {HYPERNET_FILE})")
    cfg = load_config(ckpt / "config.yaml")
    bundle = load_pretrained(str(ckpt / "base"), cfg.model.dtype)
    model = TagiModel(bundle, cfg.lora, cfg.hypernet, cfg.instruction)
    model.hypernet.load_state_dict(load_file(str(ckpt / HYPERNET_FILE)))
    return model.eval(), bundle.tokenizer, cfg
