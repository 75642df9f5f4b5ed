"""A trainable bank of K LoRA adapters (packed teachers): one per task, indexed by task id."""
from __future__ import annotations

import math

import torch
from torch import nn

from tagi_ray.lora.targets import LoraTarget
from tagi_ray.lora.weights import LoraWeights


def _key(name: str) -> str:
    return name.replace(".", "__")  # ParameterDict keys cannot contain dots


class LoraBank(nn.Module):
    """K adapters as parameters: A (K, r, in) with PEFT's kaiming-uniform init, B (K, out, r) = 0."""

    def __init__(self, targets: list[LoraTarget], k: int, rank: int, seed: int = 0):
        super().__init__()
        self.names = [t.name for t in targets]
        gen = torch.Generator().manual_seed(seed)
        self.A = nn.ParameterDict()
        self.B = nn.ParameterDict()
        for t in targets:
            bound = 1.0 / math.sqrt(t.in_features)  # = kaiming_uniform_(a=sqrt(5)) as PEFT's lora_A
            a = (torch.rand(k, rank, t.in_features, generator=gen) * 2 - 1) * bound
            self.A[_key(t.name)] = nn.Parameter(a)
            self.B[_key(t.name)] = nn.Parameter(torch.zeros(k, t.out_features, rank))

    @property
    def k(self) -> int:
        return next(iter(self.A.values())).shape[0]

    def weights(self) -> LoraWeights:
        """All K adapters, as live parameters (gradients flow through the gather)."""
        return LoraWeights({n: self.A[_key(n)] for n in self.names}, {n: self.B[_key(n)] for n in self.names})
