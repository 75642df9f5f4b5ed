import math

import pytest
import torch

from tagi_ray.config import LossConfig
from tagi_ray.losses import ce_loss, delta_w_cosine, ins_loss, kl_loss, tagi_loss
from tagi_ray.lora import LoraWeights


def weights(seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return LoraWeights({"m": torch.randn(2, 4, 8, generator=g) * scale}, {"m": torch.randn(2, 6, 4, generator=g) * scale})


def test_kl_zero_when_equal_positive_when_not_and_matches_definition():
    torch.manual_seed(0)
    s, t = torch.randn(2, 5, 11), torch.randn(2, 5, 11)
    labels = torch.tensor([[1, 2, 3, -100, -100], [4, 5, 6, 7, 8]])
    assert float(kl_loss(s, s.clone(), labels, 2.0)) == pytest.approx(0.0, abs=1e-6)
    value = float(kl_loss(s, t, labels, 2.0))
    assert value > 0
    # by hand: sum_v p_t (log p_t - log p_s) at T=2, x T^2, mean over the 8 target tokens
    p_t, p_s = torch.softmax(t / 2, -1), torch.softmax(s / 2, -1)
    per_tok = (p_t * (p_t.log() - p_s.log())).sum(-1)
    assert value == pytest.approx(float(per_tok[labels != -100].mean()) * 4, rel=1e-5)


def test_ins_loss_compares_the_updates_relative_to_the_teachers():
    g, t = weights(0), weights(1)
    dW = lambda w: torch.bmm(w.B["m"], w.A["m"])  # noqa: E731  (N, out, in), built here only
    expected = (((dW(g) - dW(t)) ** 2).sum((1, 2)) / (dW(t) ** 2).sum((1, 2))).mean()
    assert float(ins_loss(g, t)) == pytest.approx(float(expected), rel=1e-5)
    # A and B are defined up to an invertible r x r transform: an equivalent LoRA is at distance 0
    m = torch.randn(4, 4) + 3 * torch.eye(4)
    same = LoraWeights({"m": m @ t.A["m"]}, {"m": t.B["m"] @ torch.linalg.inv(m)})
    assert float(ins_loss(same, t)) == pytest.approx(0.0, abs=1e-5)
    assert float(delta_w_cosine(same, t).min()) == pytest.approx(1.0, abs=1e-5)
    # a fresh hypernetwork (B = 0) starts at 1, the order of L_ce, whatever the teachers' scale
    zero_b = LoraWeights(g.A, {"m": torch.zeros_like(g.B["m"])})
    assert float(ins_loss(zero_b, t)) == pytest.approx(1.0) == pytest.approx(float(ins_loss(zero_b, weights(1, 1e-3))))
    swapped = LoraWeights({"m": t.B["m"].transpose(1, 2)}, {"m": t.A["m"].transpose(1, 2)})
    with pytest.raises(ValueError, match="but the teacher's is A"):
        ins_loss(g, swapped)


def test_sigmoid_lambda_ins_and_total():
    torch.manual_seed(0)
    s, t = torch.randn(2, 5, 11), torch.randn(2, 5, 11)
    labels = torch.randint(0, 11, (2, 5))
    g, tw = weights(0), weights(1, scale=0.5)
    terms = tagi_loss(LossConfig(lambda_kl=5.0, lambda_ins="sigmoid", temperature=2.0), s, labels, t, g, tw)
    ce, kl, ins = float(ce_loss(s, labels)), float(kl_loss(s, t, labels, 2.0)), float(ins_loss(g, tw))
    lam = 1 / (1 + math.exp(-ins))
    assert terms.lambda_ins == pytest.approx(lam)
    assert float(terms.total) == pytest.approx(ce + 5 * kl + lam * ins, rel=1e-6)
    const = tagi_loss(LossConfig(lambda_kl=0.0, lambda_ins=0.25), s, labels, t, g, tw)
    assert const.kl is None and float(const.total) == pytest.approx(ce + 0.25 * ins, rel=1e-6)


def test_terms_switch_off_and_gradients_flow_to_generated_weights():
    s = torch.randn(1, 3, 7, requires_grad=True)
    labels = torch.tensor([[1, 2, 3]])
    g = weights(0)
    g.A["m"].requires_grad_(True)
    off = tagi_loss(LossConfig(lambda_ce=0.0, lambda_kl=0.0, lambda_ins=0.0), s, labels, s.detach(), g, weights(1))
    assert off.ce is None and off.kl is None and off.ins is None and float(off.total) == 0.0
    only_ins = tagi_loss(LossConfig(lambda_ce=0.0, lambda_kl=0.0, lambda_ins=1.0), s, labels, None, g, weights(1))
    only_ins.total.backward()
    assert g.A["m"].grad is not None and g.A["m"].grad.abs().sum() > 0


@pytest.mark.parametrize("off,gone", [({"lambda_kl": 0.0}, "loss_kl"), ({"lambda_ins": 0.0}, "loss_ins")])
def test_zero_lambda_removes_the_term_from_a_training_step(off, gone):
    """tagi_step with a teacher bank: a zero weight drops the term from the loss and the logs."""
    from tagi_ray.config import LoraConfig, HypernetConfig, LossConfig, ModelConfig
    from tagi_ray.lora import LoraBank
    from tagi_ray.models.base import build_tiny
    from tagi_ray.tagi import TagiModel
    from tagi_ray.training.examples import Example
    from tagi_ray.training.steps import make_batch, tagi_step

    mcfg = ModelConfig(d_model=32, num_layers=1, num_heads=2, d_ff=64)
    model = TagiModel(build_tiny(mcfg, "t5"), LoraConfig(rank=4), HypernetConfig(hidden_dim=32))
    examples = [Example("t", "c", str(i), f"say {w}", f"input {i}", w, (w,)) for i, w in enumerate(["yes", "no"])]
    batch = make_batch(model, model_tok(mcfg), examples, mcfg, with_prompt=False, task_ids=[0, 1])
    bank = LoraBank(model.targets, 2, 4, seed=1)
    teacher = bank.weights().detach()
    teacher = LoraWeights(teacher.A, {n: torch.randn_like(b) * 0.1 for n, b in teacher.B.items()})  # trained-like
    full = tagi_step(model, batch, LossConfig(), teacher)
    assert {"loss_ce", "loss_kl", "loss_ins"} <= set(full)
    part = tagi_step(model, batch, LossConfig().model_copy(update=off), teacher)
    assert gone not in part and float(part["loss"]) < float(full["loss"])


def model_tok(mcfg):
    from tagi_ray.models.base import load_tokenizer

    return load_tokenizer(mcfg.tokenizer)
