"""TAGI's training objective: L = L_ce + lambda_kl * L_kl + lambda_ins * L_ins.

- L_ce: token cross-entropy on the target.
- L_kl: KL(teacher || student) of the temperature-softened next-token distributions, x T^2,
  averaged over target tokens; the teacher logits come from the teacher LoRA on the same batch,
  or from its top-k log-probabilities computed once per training instance (`TeacherTopK`).
- L_ins: how far the generated update ΔW = B·A of every target module is from the teacher's,
  relative to the teacher's: mean over adapters and modules of ||ΔW_gen - ΔW_teacher||_F² /
  ||ΔW_teacher||_F². A and B of a LoRA are only defined up to an invertible r×r transform (and
  each teacher's A is its random init plus a little), so A-to-A / B-to-B distances measure
  mostly init noise; ΔW is what the adapter does. The norms come from r×r products
  (||BA||² = Σ (BᵀB) ⊙ (AAᵀ)), so no out×in matrix is ever built. It starts at ~1 (a fresh
  hypernetwork emits B ≈ 0), the order of L_ce, and is 0 when the updates match.
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


@dataclass
class TeacherTopK:
    """A teacher's next-token distributions at temperature T, kept compactly: per scored token
    the k most likely token ids and their log-probabilities (the rest's mass is 1 - Σ exp)."""

    idx: torch.Tensor  # (N, k) token ids
    logp: torch.Tensor  # (N, k) log-probabilities at temperature T

    def to(self, device) -> TeacherTopK:
        return TeacherTopK(self.idx.to(device), self.logp.to(device))


def kl_topk_loss(student_logits: torch.Tensor, teacher: TeacherTopK, labels: torch.Tensor,
                 temperature: float) -> torch.Tensor:
    """`kl_loss` against a TeacherTopK: the k teacher tokens exactly, the other tokens as one
    bucket (teacher mass r = 1 - Σ p_topk against the student's mass outside the k tokens).
    Equals `kl_loss` when k = vocabulary (r = 0)."""
    t = temperature
    s = F.log_softmax(student_logits.float() / t, dim=-1)
    s_top = s.gather(-1, teacher.idx.long())
    p_log = teacher.logp.float()
    p = p_log.exp()
    top = (p * (p_log - s_top)).sum(-1)
    rest_p = 1.0 - p.sum(-1)
    rest_s = torch.log((1.0 - s_top.exp().sum(-1)).clamp(min=1e-12))
    # a rest below 1e-6 is float32 round-off of Σp = 1 (k = vocabulary), not mass
    rest = torch.where(rest_p > 1e-6, rest_p * (torch.log(rest_p.clamp(min=1e-6)) - rest_s), torch.zeros_like(rest_p))
    per_token = top + rest
    mask = (labels != IGNORE).to(per_token.dtype)
    return (per_token * mask).sum() / mask.sum().clamp(min=1.0) * t * t


def _inner(A1: torch.Tensor, B1: torch.Tensor, A2: torch.Tensor, B2: torch.Tensor) -> torch.Tensor:
    """<B1 A1, B2 A2>_F per adapter, for A (N, r, in), B (N, out, r): Σ (B1ᵀB2) ⊙ (A1A2ᵀ), r×r only."""
    return (torch.bmm(B1.transpose(1, 2), B2) * torch.bmm(A1, A2.transpose(1, 2))).sum((1, 2))


def delta_w_distance(generated: LoraWeights, teacher: LoraWeights) -> tuple[torch.Tensor, torch.Tensor]:
    """(||ΔW_g - ΔW_t||², ||ΔW_t||²) per adapter and module: two (N, modules) tensors."""
    dist, ref = [], []
    for name in generated.names:
        Ag, Bg, At, Bt = generated.A[name].float(), generated.B[name].float(), teacher.A[name].float(), \
            teacher.B[name].float()
        if Ag.shape[1:] != At.shape[1:] or Bg.shape[1:] != Bt.shape[1:]:
            raise ValueError(f"L_ins: {name} is A {tuple(Ag.shape[1:])}, B {tuple(Bg.shape[1:])} but the teacher's "
                             f"is A {tuple(At.shape[1:])}, B {tuple(Bt.shape[1:])} (A is (r, in), B is (out, r); "
                             f"ranks must match)")
        At, Bt = At.detach(), Bt.detach()
        tt = _inner(At, Bt, At, Bt)
        dist.append(_inner(Ag, Bg, Ag, Bg) + tt - 2 * _inner(Ag, Bg, At, Bt))
        ref.append(tt)
    return torch.stack(dist, 1), torch.stack(ref, 1)


def ins_loss(generated: LoraWeights, teacher: LoraWeights) -> torch.Tensor:
    """Mean relative squared distance of the updates ΔW = B·A (see the module docstring)."""
    dist, ref = delta_w_distance(generated, teacher)
    return (dist.clamp(min=0) / ref.clamp(min=1e-12)).mean()


def delta_w_cosine(generated: LoraWeights, teacher: LoraWeights) -> torch.Tensor:
    """Cosine similarity of ΔW_gen and ΔW_teacher per adapter and module: (N, modules)."""
    cos = []
    for name in generated.names:
        Ag, Bg, At, Bt = (x.float() for x in (generated.A[name], generated.B[name], teacher.A[name], teacher.B[name]))
        gt, gg, tt = _inner(Ag, Bg, At, Bt), _inner(Ag, Bg, Ag, Bg), _inner(At, Bt, At, Bt)
        cos.append(gt / (gg.clamp(min=1e-24).sqrt() * tt.clamp(min=1e-24).sqrt()))
    return torch.stack(cos, 1)


@dataclass
class LossTerms:
    total: torch.Tensor
    ce: torch.Tensor | None = None
    kl: torch.Tensor | None = None
    ins: torch.Tensor | None = None
    lambda_ins: float = 0.0

    lambda_ce: float = 0.0
    lambda_kl: float = 0.0

    def as_floats(self) -> dict[str, float]:
        """loss, and per term on: its value `loss_<t>`, its weight and its weighted share `weighted_<t>`."""
        out = {"loss": float(self.total.detach())}
        for k in ("ce", "kl", "ins"):
            v = getattr(self, k)
            if v is not None:
                out[f"loss_{k}"] = float(v.detach())
                out[f"lambda_{k}"] = getattr(self, f"lambda_{k}")
                out[f"weighted_{k}"] = out[f"lambda_{k}"] * out[f"loss_{k}"]
        return out


def lambda_ins_value(cfg: LossConfig, l_ins: torch.Tensor) -> float:
    return float(torch.sigmoid(l_ins.detach())) if cfg.lambda_ins == "sigmoid" else float(cfg.lambda_ins)


def tagi_loss(cfg: LossConfig, student_logits: torch.Tensor | None, labels: torch.Tensor | None,
              teacher_logits: torch.Tensor | TeacherTopK | None = None, generated: LoraWeights | None = None,
              teacher_weights: LoraWeights | None = None) -> LossTerms:
    """The combined loss; terms whose weight is 0 (or whose inputs are None) are skipped.
    `teacher_logits`: the teacher's logits on the same tokens, or its cached TeacherTopK."""
    like = student_logits if student_logits is not None else next(iter(generated.A.values()))
    terms = LossTerms(total=like.new_zeros((), dtype=torch.float32))
    if cfg.uses_ce and student_logits is not None:
        terms.ce, terms.lambda_ce = ce_loss(student_logits, labels), cfg.lambda_ce
        terms.total = terms.total + cfg.lambda_ce * terms.ce
    if cfg.uses_kl and teacher_logits is not None:
        kl = kl_topk_loss if isinstance(teacher_logits, TeacherTopK) else kl_loss
        terms.kl, terms.lambda_kl = kl(student_logits, teacher_logits, labels, cfg.temperature), cfg.lambda_kl
        terms.total = terms.total + cfg.lambda_kl * terms.kl
    if cfg.uses_ins and generated is not None and teacher_weights is not None:
        terms.ins = ins_loss(generated, teacher_weights)
        terms.lambda_ins = lambda_ins_value(cfg, terms.ins)
        terms.total = terms.total + terms.lambda_ins * terms.ins
    return terms
