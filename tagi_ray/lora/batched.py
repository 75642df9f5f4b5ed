"""Batched LoRA: every example of a batch can carry its own adapter.

    y = W x + scaling * B_b (A_b x),   b = index[example]

`BatchedLora` attaches a forward hook to each target `nn.Linear` of a frozen base model (the
base stays an unmodified Hugging Face model: same state dict, same `save_pretrained`). Inside
`with lora.apply(weights, index):` every hooked layer adds the update: the adapters are
gathered by `index` (once per `apply` block, so greedy decoding does not re-gather at every
step) and applied with two batched matmuls, the second one fused with the add to the base
output; no Python loop over examples. When the whole batch shares one adapter the exact fast
path uses two plain matmuls instead.

This one mechanism serves all users: generated adapters (meta-training), the teacher bank
(packed teachers, `index` = task id per example), and the serving cache (stacked adapters).
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from tagi_ray.lora.targets import LoraTarget
from tagi_ray.lora.weights import LoraWeights


class BatchedLora:
    """Per-example LoRA on the target linear layers of `model`, via forward hooks."""

    def __init__(self, model: nn.Module, targets: list[LoraTarget], rank: int, alpha: float, dropout: float = 0.0):
        self.targets = targets
        self.rank = rank
        self.scaling = alpha / rank
        self.dropout = dropout
        self._active: tuple[LoraWeights, torch.Tensor | None] | None = None
        self._gathered: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # per-example A/B of the active block
        modules = dict(model.named_modules())
        for t in targets:
            modules[t.name].register_forward_hook(self._hook(t.name))

    def _hook(self, name: str):
        def hook(module: nn.Linear, inputs: tuple, output: torch.Tensor):
            if self._active is None:
                return None
            weights, index = self._active
            if name not in weights.A:
                return None
            A, B = self._prepared(name, weights, index, output.dtype)
            return self.add_delta(output, inputs[0], A, B, None, module.training)

        return hook

    def _prepared(self, name: str, weights: LoraWeights, index: torch.Tensor | None,
                  dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """The module's A/B for the active block: gathered by `index` and cast to `dtype` once,
        then reused by every later call (each greedy decoding step)."""
        if name not in self._gathered:
            A, B = weights.A[name], weights.B[name]
            if index is not None:
                A, B = A.index_select(0, index), B.index_select(0, index)
            self._gathered[name] = (A.to(dtype), B.to(dtype))
        return self._gathered[name]

    def add_delta(self, output: torch.Tensor, x: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                  index: torch.Tensor | None = None, training: bool = False) -> torch.Tensor:
        """output + scaling * B_b A_b x for x (batch, ..., in), output (batch, ..., out);
        A (N, r, in), B (N, out, r). The add and the scaling are fused into the second matmul
        (addmm / baddbmm): no separate pass over the output. Without autograd (inference) the
        add goes into `output` in place, which also saves allocating and copying a new one."""
        if self.dropout and training:
            x = F.dropout(x, self.dropout, training=True)
        A, B = A.to(x.dtype), B.to(x.dtype)
        in_place = not torch.is_grad_enabled() and output.is_contiguous()
        if index is None and A.shape[0] == 1:  # exact fast path: one adapter for the whole batch
            h = x.reshape(-1, x.shape[-1]) @ A[0].transpose(0, 1)
            out2d, B2d = output.reshape(-1, B.shape[1]), B[0].transpose(0, 1)  # a view if contiguous
            out = out2d.addmm_(h, B2d, alpha=self.scaling) if in_place else \
                torch.addmm(out2d, h, B2d, alpha=self.scaling)
            return out.view(output.shape)
        if index is not None:
            A, B = A.index_select(0, index), B.index_select(0, index)  # gather: (batch, r, in)
        elif A.shape[0] != x.shape[0]:
            raise ValueError(f"{A.shape[0]} adapters for a batch of {x.shape[0]}: pass an index")
        h = torch.bmm(x.reshape(x.shape[0], -1, x.shape[-1]), A.transpose(1, 2))
        out3d, Bt = output.reshape(x.shape[0], -1, B.shape[1]), B.transpose(1, 2)
        out = out3d.baddbmm_(h, Bt, alpha=self.scaling) if in_place else \
            torch.baddbmm(out3d, h, Bt, alpha=self.scaling)
        return out.view(output.shape)

    @contextmanager
    def apply(self, weights: LoraWeights | None, index: torch.Tensor | None = None) -> Iterator[None]:
        """Apply `weights` inside the block. `index[i]` is example i's adapter; None means
        adapter i for example i (or the single adapter for all). An index whose entries are all
        equal takes the fast path; the identity index (adapter i for example i) skips the gather."""
        if weights is not None and index is not None:
            index = index.to(device=next(iter(weights.A.values())).device, dtype=torch.long)
            if bool((index == index[0]).all()):
                weights, index = weights.select(index[:1]), None
            elif index.numel() == weights.n and torch.equal(index, torch.arange(weights.n, device=index.device)):
                index = None
        previous, self._active = self._active, (None if weights is None else (weights, index))
        previous_gathered, self._gathered = self._gathered, {}
        try:
            yield
        finally:
            self._active, self._gathered = previous, previous_gathered
