"""Adapters on disk as standard PEFT LoRA directories (safetensors only, never pickle).

    export_peft(weights.select(i), targets, rank, alpha, task_type, base_path, out_dir)
    weights, meta = import_peft(dir)

Keys are PEFT's: `base_model.model.<module path>.lora_A.weight` (r, in) and `...lora_B.weight`
(out, r); `target_modules` lists the exact module paths, so PEFT wraps the same layers.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from tagi_ray.lora.targets import LoraTarget
from tagi_ray.lora.weights import LoraWeights

WEIGHTS_NAME = "adapter_model.safetensors"
CONFIG_NAME = "adapter_config.json"
_PREFIX = "base_model.model."


def task_type_for(arch: str) -> str:
    return "SEQ_2_SEQ_LM" if arch == "t5" else "CAUSAL_LM"


def export_peft(weights: LoraWeights, targets: list[LoraTarget], rank: int, alpha: float, arch: str,
                base_model_name_or_path: str, out_dir: str | Path, dropout: float = 0.0,
                metadata: dict | None = None) -> Path:
    """Write one adapter (weights.n == 1) as a PEFT directory, atomically (temp dir + rename)."""
    import peft

    if weights.n != 1:
        raise ValueError(f"export_peft writes one adapter, got {weights.n}: use weights.select(i)")
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        config = peft.LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, bias="none",
                                 target_modules=[t.name for t in targets], task_type=task_type_for(arch),
                                 base_model_name_or_path=str(base_model_name_or_path), inference_mode=True)
        config.save_pretrained(str(tmp))
        tensors = {}
        for t in targets:
            tensors[f"{_PREFIX}{t.name}.lora_A.weight"] = weights.A[t.name][0].detach().float().contiguous().cpu()
            tensors[f"{_PREFIX}{t.name}.lora_B.weight"] = weights.B[t.name][0].detach().float().contiguous().cpu()
        save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": "pt", **(metadata or {})})
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def import_peft(adapter_dir: str | Path, rank: int | None = None, alpha: float | None = None) -> tuple[LoraWeights, dict]:
    """Read a PEFT LoRA directory into LoraWeights (N=1). If the model's `rank`/`alpha` are given,
    B is rescaled so the update equals the file's (alpha_file/r_file) B A."""
    adapter_dir = Path(adapter_dir)
    cfg_path, w_path = adapter_dir / CONFIG_NAME, adapter_dir / WEIGHTS_NAME
    if not w_path.is_file():
        other = [p.name for p in adapter_dir.glob("adapter_model.*")]
        raise FileNotFoundError(f"{w_path} not found" + (f" (found {other}; only safetensors are read)" if other else ""))
    meta = json.loads(cfg_path.read_text())
    if meta.get("peft_type") != "LORA":
        raise ValueError(f"{cfg_path}: peft_type {meta.get('peft_type')!r} is not LORA")
    tensors = load_file(str(w_path))
    A, B = {}, {}
    for key, value in tensors.items():
        if not key.startswith(_PREFIX) or not key.endswith((".lora_A.weight", ".lora_B.weight")):
            raise ValueError(f"{w_path}: unexpected tensor {key!r}")
        name, which = key[len(_PREFIX):].rsplit(".", 2)[0], key.rsplit(".", 2)[1]
        (A if which == "lora_A" else B)[name] = value[None]
    if set(A) != set(B):
        raise ValueError(f"{w_path}: lora_A and lora_B cover different modules")
    file_rank, file_alpha = int(meta["r"]), float(meta["lora_alpha"])
    if rank is not None and rank != file_rank:
        raise ValueError(f"{adapter_dir}: adapter rank {file_rank} != model rank {rank}")
    if alpha is not None and rank is not None and alpha != file_alpha:
        factor = (file_alpha / file_rank) / (alpha / rank)
        B = {k: v * factor for k, v in B.items()}
    names = sorted(A)
    return LoraWeights({k: A[k] for k in names}, {k: B[k].to(torch.float32) for k in names}), meta
