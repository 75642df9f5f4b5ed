"""TAGI's training objective: L = L_ce + lambda_kl * L_kl + lambda_ins * L_ins.

- L_ce: token cross-entropy on the target.
- L_kl: KL(teacher || student) of the temperature-softened next-token distributions, x T^2,
  averaged over target tokens; the teacher logits come from the teacher LoRA on the same batch.
- L_ins: MSE between the generated and the teacher's LoRA matrices, A against A (r, in) and
  B against B (out, r), PEFT's naming (the official TAGI code swaps the names).
- lambda_ins is a constant, or "sigmoid": the weight sigmoid(L_ins) (as a coefficient,
  detached), i.e. the term sigmoid(L_ins) * L_ins.
Every term is switched off by a zero weight (the paper's ablations) and is then not computed.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tagi_ray.batching import IGNORE
from tagi_ray.config import LossConfig
from tagi_ray.lora.weights import LoraWeights


def ce_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=IGNORE)


def kl_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
            temperature: float) -> torch.Tensor:
    """KL(teacher || student) at temperature T, x T^2, mean over target tokens."""
    t = temperature
    s = F.log_softmax(student_logits.float() / t, dim=-1)
    p = F.log_softmax(teacher_logits.detach().float() / t, dim=-1)
    per_token = F.kl_div(s, p, log_target=True, reduction="none").sum(-1)
    mask = (labels != IGNORE).to(per_token.dtype)
    return (per_token * mask).sum() / mask.sum().clamp(min=1.0) * t * t


def ins_loss(generated: LoraWeights, teacher: LoraWeights) -> torch.Tensor:
    """MSE over all A and B entries of all target modules (A vs A, B vs B)."""
    total, count = 0.0, 0
    for name in generated.names:
        for which, g, ref in (("A", generated.A[name], teacher.A[name]), ("B", generated.B[name], teacher.B[name])):
            if g.shape != ref.shape:
                raise ValueError(f"L_ins: {name} lora_{which} is {tuple(g.shape)} but the teacher's is "
                                 f"{tuple(ref.shape)} (A is (r, in), B is (out, r); ranks must match)")
            total = total + F.mse_loss(g.float(), ref.detach().float(), reduction="sum")
            count += g.numel()
    return total / count


@dataclass
class LossTerms:
    total: torch.Tensor
    ce: torch.Tensor | None = None
    kl: torch.Tensor | None = None
    ins: torch.Tensor | None = None
    lambda_ins: float = 0.0

    def as_floats(self) -> dict[str, float]:
        out = {"loss": float(self.total.detach())}
        for k in ("ce", "kl", "ins"):
            v = getattr(self, k)
            if v is not None:
                out[f"loss_{k}"] = float(v.detach())
        if self.ins is not None:
            out["lambda_ins"] = self.lambda_ins
        return out


def lambda_ins_value(cfg: LossConfig, l_ins: torch.Tensor) -> float:
    return float(torch.sigmoid(l_ins.detach())) if cfg.lambda_ins == "sigmoid" else float(cfg.lambda_ins)


def tagi_loss(cfg: LossConfig, student_logits: torch.Tensor, labels: torch.Tensor,
              teacher_logits: torch.Tensor | None = None, generated: LoraWeights | None = None,
              teacher_weights: LoraWeights | None = None) -> LossTerms:
    """The combined loss; terms whose weight is 0 (or whose teacher input is None) are skipped."""
    terms = LossTerms(total=student_logits.new_zeros((), dtype=torch.float32))
    if cfg.uses_ce:
        terms.ce = ce_loss(student_logits, labels)
        terms.total = terms.total + cfg.lambda_ce * terms.ce
    if cfg.uses_kl and teacher_logits is not None:
        terms.kl = kl_loss(student_logits, teacher_logits, labels, cfg.temperature)
        terms.total = terms.total + cfg.lambda_kl * terms.kl
    if cfg.uses_ins and generated is not None and teacher_weights is not None:
        terms.ins = ins_loss(generated, teacher_weights)
        terms.lambda_ins = lambda_ins_value(cfg, terms.ins)
        terms.total = terms.total + terms.lambda_ins * terms.ins
    return terms
