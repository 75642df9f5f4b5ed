"""The hypernetwork: pooled instruction -> LoRA A/B for every target module, in one pass.

For each target t the input is the pooled instruction p plus learned embeddings of t's layer
depth and module type; a 2-layer MLP maps it to r*(in+out) numbers, split into A (r, in) and
B (out, r). The first layer is computed as proj(p) + proj(emb_t) (same as on the concatenation,
without materialising it); targets are grouped by shape so each group's output layer runs once.

Input standardisation: mean-pooled states of different instructions are nearly parallel (cosine
~0.999 on the builtin suite: shared wording dominates the mean), so the pooled vector is
standardised with per-feature mean/std fitted once on the training instructions
(`fit_input_stats`; the encoder is frozen while the hypernetwork trains, so they are fixed).
They are buffers: saved with the hypernetwork and identical on every rank.

Init: output weights ~ N(0, init_scale); the output bias of the A part is PEFT's lora_A init and
of the B part is zero, so a fresh hypernetwork emits B ~ 0 (the update starts near zero) while
gradients reach B at once.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from tagi_ray.lora.targets import LoraTarget
from tagi_ray.lora.weights import LoraWeights


class HyperNetwork(nn.Module):
    reads_instruction = True  # its adapters depend on the pooled instruction

    def __init__(self, instr_dim: int, targets: list[LoraTarget], rank: int, hidden_dim: int = 256,
                 embed_dim: int = 32, init_scale: float = 1e-3):
        super().__init__()
        self.targets, self.rank = targets, rank
        layers = sorted({t.layer for t in targets})
        kinds = sorted({t.kind for t in targets})
        self.register_buffer("layer_ids", torch.tensor([layers.index(t.layer) for t in targets]), persistent=False)
        self.register_buffer("kind_ids", torch.tensor([kinds.index(t.kind) for t in targets]), persistent=False)
        self.layer_emb = nn.Embedding(len(layers), embed_dim)
        self.kind_emb = nn.Embedding(len(kinds), embed_dim)
        self.register_buffer("in_mean", torch.zeros(instr_dim))
        self.register_buffer("in_std", torch.ones(instr_dim))
        self.norm = nn.LayerNorm(instr_dim)
        self.instr_proj = nn.Linear(instr_dim, hidden_dim)
        self.pos_proj = nn.Linear(2 * embed_dim, hidden_dim, bias=False)

        shapes = sorted({(t.in_features, t.out_features) for t in targets})
        self.groups = [[i for i, t in enumerate(targets) if (t.in_features, t.out_features) == s] for s in shapes]
        self.shapes = shapes
        self.heads = nn.ModuleList()
        for d_in, d_out in shapes:
            head = nn.Linear(hidden_dim, rank * (d_in + d_out))
            nn.init.normal_(head.weight, std=init_scale)
            with torch.no_grad():
                bound = 1.0 / math.sqrt(d_in)
                head.bias.zero_()
                head.bias[: rank * d_in].uniform_(-bound, bound)
            self.heads.append(head)

    @torch.no_grad()
    def fit_input_stats(self, pooled: torch.Tensor) -> None:
        """Set the input standardisation from pooled training instructions (M, instr_dim), M >= 2."""
        if pooled.shape[0] < 2:
            raise ValueError("fit_input_stats needs at least 2 instructions")
        self.in_mean.copy_(pooled.mean(0))
        self.in_std.copy_(pooled.std(0).clamp(min=1e-6))

    def forward(self, pooled: torch.Tensor) -> LoraWeights:
        """pooled: (N, instr_dim) -> LoraWeights with A[name] (N, r, in), B[name] (N, out, r)."""
        pos = torch.cat([self.layer_emb(self.layer_ids), self.kind_emb(self.kind_ids)], dim=-1)  # (T, 2e)
        h = F.gelu(self.instr_proj(self.norm((pooled - self.in_mean) / self.in_std))[:, None, :] + self.pos_proj(pos)[None])  # (N, T, hidden)
        A, B = {}, {}
        n, r = pooled.shape[0], self.rank
        for idx, (d_in, d_out), head in zip(self.groups, self.shapes, self.heads):
            out = head(h[:, idx])  # (N, T_g, r*(in+out))
            a = out[..., : r * d_in].reshape(n, len(idx), r, d_in)
            b = out[..., r * d_in:].reshape(n, len(idx), d_out, r)
            for j, i in enumerate(idx):
                name = self.targets[i].name
                A[name], B[name] = a[:, j], b[:, j]
        return LoraWeights({t.name: A[t.name] for t in self.targets}, {t.name: B[t.name] for t in self.targets})


class SharedAdapter(nn.Module):
    """The "w/o hypernetwork" ablation (`hypernet.kind: shared_lora`): one trained LoRA used
    for every instruction (PEFT init: A kaiming-uniform, B = 0). Same interface as
    `HyperNetwork`: forward(pooled (N, d)) -> N rows (broadcast views of the one adapter)."""

    reads_instruction = False  # one adapter for every instruction

    def __init__(self, targets: list[LoraTarget], rank: int):
        super().__init__()
        from tagi_ray.lora.bank import LoraBank

        self.targets = targets
        self.bank = LoraBank(targets, 1, rank)

    def fit_input_stats(self, pooled: torch.Tensor) -> None:
        """Nothing to fit: the adapter does not read the instruction."""

    def forward(self, pooled: torch.Tensor) -> LoraWeights:
        one, n = self.bank.weights(), pooled.shape[0]
        return LoraWeights({k: v.expand(n, *v.shape[1:]) for k, v in one.A.items()},
                           {k: v.expand(n, *v.shape[1:]) for k, v in one.B.items()})
