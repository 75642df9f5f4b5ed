"""`LoraWeights`: N adapters' A/B matrices for every target module, as stacked tensors.

Conventions follow PEFT: A is (r, in_features) (`lora_A.weight`), B is (out_features, r)
(`lora_B.weight`), the update is scaling * B @ A with scaling = lora_alpha / r. Here each is
stacked over N adapters: A[name] is (N, r, in), B[name] is (N, out, r). Whatever produces
adapters (hypernetwork, teacher bank, serving cache) hands them over in this one form.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class LoraWeights:
    A: dict[str, torch.Tensor]
    B: dict[str, torch.Tensor]

    @property
    def n(self) -> int:
        """Number of adapters stacked along dim 0."""
        return next(iter(self.A.values())).shape[0]

    @property
    def names(self) -> list[str]:
        return list(self.A)

    def select(self, index: torch.Tensor | Sequence[int] | int) -> LoraWeights:
        """The adapters at `index` (keeps the stacked dim; an int gives N=1)."""
        if isinstance(index, int):
            index = [index]
        index = torch.as_tensor(index, dtype=torch.long, device=next(iter(self.A.values())).device)
        return LoraWeights({k: v.index_select(0, index) for k, v in self.A.items()},
                           {k: v.index_select(0, index) for k, v in self.B.items()})

    @staticmethod
    def cat(items: Sequence[LoraWeights]) -> LoraWeights:
        """Stack several adapter sets (same modules and shapes) into one."""
        names = items[0].names
        for w in items[1:]:
            if w.names != names:
                raise ValueError("cannot concatenate adapters for different target modules")
        return LoraWeights({k: torch.cat([w.A[k] for w in items]) for k in names},
                           {k: torch.cat([w.B[k] for w in items]) for k in names})

    def detach(self) -> LoraWeights:
        return LoraWeights({k: v.detach() for k, v in self.A.items()}, {k: v.detach() for k, v in self.B.items()})

    def to(self, *args, **kwargs) -> LoraWeights:
        return LoraWeights({k: v.to(*args, **kwargs) for k, v in self.A.items()},
                           {k: v.to(*args, **kwargs) for k, v in self.B.items()})

    def nbytes(self) -> int:
        return sum(v.numel() * v.element_size() for d in (self.A, self.B) for v in d.values())
