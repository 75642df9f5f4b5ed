"""Validation loss during meta-training: L_ce of the generated adapters on validation tasks.

The hypernetwork has never trained on these tasks (they are split off the training tasks), so
the loss measures what TAGI is for: adapters for unseen instructions. It is independent of the
loss weights and of the LoRA rank, so trials of a sweep compare on it directly.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import pyarrow as pa
import torch

from tagi_ray.training.examples import Example, table_examples


def validation_batches(table: pa.Table, num_pos: int, batch_size: int) -> list[list[Example]]:
    """Fixed batches (table order) of the validation rows, the last one possibly smaller."""
    examples = table_examples(table, num_pos)
    return [examples[i:i + batch_size] for i in range(0, len(examples), batch_size)]


@torch.no_grad()
def validation_loss(forward_ce: Callable[[list[Example]], dict], module: torch.nn.Module,
                    batches: Sequence[list[Example]]) -> float:
    """Example-weighted mean of `forward_ce(batch)["loss"]` in eval mode (train mode restored).
    Under DeepSpeed every rank must call this with the same batches (ZeRO-3 gathers weights)."""
    was_training = module.training
    module.eval()
    total, count = 0.0, 0
    try:
        for batch in batches:
            total += float(forward_ce(batch)["loss"]) * len(batch)
            count += len(batch)
    finally:
        module.train(was_training)
    return total / max(1, count)
