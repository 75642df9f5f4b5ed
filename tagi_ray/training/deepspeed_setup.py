"""DeepSpeed settings for meta-training: the config dict, and CPU-friendly initialisation."""
from __future__ import annotations

import sys

from tagi_ray.config import TagiConfig


def ds_config(cfg: TagiConfig, total_steps: int, on_gpu: bool) -> dict:
    """ZeRO stage, micro-batch, accumulation, clipping, precision (fp32 on CPU, bf16 on GPU).
    The optimizer is torch's AdamW (DeepSpeed's fused Adam would JIT-compile on CPU)."""
    t = cfg.train
    return {
        "train_micro_batch_size_per_gpu": t.batch_size,
        "gradient_accumulation_steps": t.grad_accum,
        "gradient_clipping": 1.0,
        "zero_optimization": {"stage": t.zero_stage},
        "bf16": {"enabled": bool(on_gpu)},
        "optimizer": {"type": "AdamW", "params": {"lr": t.lr, "weight_decay": t.weight_decay, "torch_adam": True}},
        "steps_per_print": max(1, total_steps),
        "wall_clock_breakdown": False,
    }


def skip_shm_build() -> None:
    """On CPU, DeepSpeed JIT-compiles a shared-memory comm op at first init (~40 s on 2 cores);
    gloo does the same job here, so the build is skipped."""
    import deepspeed.comm.torch  # noqa: F401  (the name re-exports torch; use sys.modules)

    module = sys.modules["deepspeed.comm.torch"]
    if hasattr(module, "build_shm_op"):
        module.build_shm_op = lambda *args, **kwargs: None
