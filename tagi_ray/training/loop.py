"""A plain optimisation loop: AdamW, linear warm-up/decay, clipping, gradient accumulation over
a step's chunks, progress bar, history.

Later stages (Ray Train, DeepSpeed) reuse the step functions, not this loop's optimizer.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from tqdm.auto import tqdm


def linear_schedule(step: int, total: int, warmup: int) -> float:
    """LR multiplier: linear warm-up to 1 over `warmup` steps, then linear decay to 0.1."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    frac = (step - warmup) / max(1, total - warmup)
    return max(0.1, 1.0 - 0.9 * frac)


def make_optimizer(params: list[torch.nn.Parameter], lr: float, weight_decay: float, steps: int, warmup: int):
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: linear_schedule(s, steps, warmup))
    return opt, sched


def run_steps(step_fn: Callable[[Any], dict[str, Any]], params: list[torch.nn.Parameter], batches: Iterator,
              steps: int, lr: float, weight_decay: float = 0.0, warmup: int = 0, clip: float = 1.0,
              desc: str = "train", log_every: int = 10,
              split: Callable[[Any], list[tuple[Any, float]]] | None = None) -> list[dict[str, float]]:
    """Run `steps` optimizer steps; `step_fn(part)` returns {"loss": tensor, ...floats}. `split`
    turns a step's batch into (part, weight) pairs (e.g. `steps.prompt_chunks`): each part's
    loss x weight is backpropagated on its own, gradients accumulate, and the record holds the
    weighted sums; without it the batch is the one part, weight 1."""
    opt, sched = make_optimizer(params, lr, weight_decay, steps, warmup)
    history: list[dict[str, float]] = []
    bar = tqdm(range(steps), desc=desc, dynamic_ncols=True, mininterval=2.0)
    for step in bar:
        batch = next(batches)
        opt.zero_grad(set_to_none=True)
        record: dict[str, float] = {}
        for part, weight in split(batch) if split else [(batch, 1.0)]:
            out = step_fn(part)
            (out["loss"] * weight).backward()
            for k, v in out.items():
                record[k] = record.get(k, 0.0) + weight * (float(v.detach()) if torch.is_tensor(v) else float(v))
        if clip:
            torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        sched.step()
        record["step"], record["lr"] = step, sched.get_last_lr()[0]
        history.append(record)
        if step % log_every == 0 or step == steps - 1:
            bar.set_postfix(loss=f"{record['loss']:.3f}")
    return history
