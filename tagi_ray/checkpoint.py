"""A TAGI checkpoint: everything serving needs, no DeepSpeed, no pickle.

    DIR/config.yaml             the resolved TagiConfig
    DIR/base.json               the frozen base it needs, by content hash (`base_ref.py`); or, saved
    DIR/base/                   standalone, the base model + tokenizer itself (`save_base`)
    DIR/base_overrides.safetensors  only with `train.train_layer_norms`: the base tensors it trained
    DIR/hypernet.safetensors    the hypernetwork's weights
    DIR/instruction_encoder/    only with `instruction.encoder: tk_instruct`: the model that encodes instructions
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from safetensors.torch import load_file, save_file

from tagi_ray.base_ref import OVERRIDES_FILE, resolve_base, write_base_ref
from tagi_ray.config import load_config, save_config, TagiConfig
from tagi_ray.models.base import BaseBundle, load_pretrained, save_base
from tagi_ray.tagi import TagiModel

HYPERNET_FILE = "hypernet.safetensors"
ENCODER_DIR = "instruction_encoder"


def save_checkpoint(model: TagiModel, tokenizer, cfg: TagiConfig, out_dir: str | Path,
                    base_dir: str | Path | None = None) -> Path:
    """Write atomically (temp dir + rename): a crash never leaves a half checkpoint. `base_dir`:
    the directory `model.base` was loaded from, referenced by hash (plus the tensors training
    changed); None: the base is copied in (a standalone checkpoint)."""
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        save_config(cfg, tmp / "config.yaml")
        if base_dir is None:
            save_base(BaseBundle(model.base, tokenizer, model.arch), tmp / "base")
        else:
            write_base_ref(tmp, base_dir)
            trained = {k: p.detach().contiguous().cpu() for k, p in model.base.named_parameters() if p.requires_grad}
            if trained:
                save_file(trained, str(tmp / OVERRIDES_FILE), metadata={"format": "pt"})
        if model.instruction_encoder is not None:
            save_base(BaseBundle(model.instruction_encoder, tokenizer, model.arch), tmp / ENCODER_DIR)
        state = {k: v.detach().contiguous().cpu() for k, v in model.hypernet.state_dict().items()}
        save_file(state, str(tmp / HYPERNET_FILE), metadata={"format": "pt"})
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def check_checkpoint(ckpt_dir: str | Path) -> Path:
    """The directory, if it is a TAGI checkpoint; else FileNotFoundError naming it."""
    ckpt = Path(ckpt_dir)
    if not (ckpt / HYPERNET_FILE).is_file():
        raise FileNotFoundError(f"{ckpt} is not a tagi-ray checkpoint (no {HYPERNET_FILE}; make one with "
                                f"`tagi meta-train` or `tagi pipeline`)")
    return ckpt


def load_checkpoint_base(ckpt_dir: str | Path, dtype: str = "float32") -> BaseBundle:
    """The checkpoint's base as trained: the verified base (`resolve_base`) with the tensors
    meta-training changed, if any."""
    ckpt = Path(ckpt_dir)
    bundle = load_pretrained(str(resolve_base(ckpt)), dtype)
    if (ckpt / OVERRIDES_FILE).is_file():
        overrides = load_file(str(ckpt / OVERRIDES_FILE))
        missing = set(overrides) - set(dict(bundle.model.named_parameters()))
        if missing:
            raise ValueError(f"{ckpt / OVERRIDES_FILE}: tensors {sorted(missing)[:3]} are not in the base")
        bundle.model.load_state_dict(overrides, strict=False)
    return bundle


def load_checkpoint(ckpt_dir: str | Path) -> tuple[TagiModel, object, TagiConfig]:
    """(model in eval mode, tokenizer, config) from a checkpoint directory."""
    ckpt = check_checkpoint(ckpt_dir)
    cfg = load_config(ckpt / "config.yaml")
    bundle = load_checkpoint_base(ckpt, cfg.model.dtype)
    encoder = load_pretrained(str(ckpt / ENCODER_DIR), cfg.model.dtype).model if (ckpt / ENCODER_DIR).is_dir() else None
    model = TagiModel(bundle, cfg.lora, cfg.hypernet, cfg.instruction, encoder)
    model.hypernet.load_state_dict(load_file(str(ckpt / HYPERNET_FILE)))
    return model.eval(), bundle.tokenizer, cfg
