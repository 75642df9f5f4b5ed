"""Grouped-query attention straight into SDPA (no repeat_kv copies) gives what "sdpa" gives."""
import copy

import torch

from tagi_ray.config import load_config
from tagi_ray.models import build_tiny
from tagi_ray.models.attention import NAME, use_grouped_sdpa
from tagi_ray.tagi import TagiModel


def _llama():
    cfg = load_config(overrides=["model.name=tiny-llama", "model.num_heads=4"])  # 4 query heads, 2 K/V heads
    return cfg, build_tiny(cfg.model)


def test_causal_gqa_bases_switch_and_t5_does_not():
    _, bundle = _llama()
    assert bundle.model.config.num_key_value_heads < bundle.model.config.num_attention_heads
    assert bundle.model.config._attn_implementation == NAME
    t5 = build_tiny(load_config(overrides=["model.name=tiny-t5"]).model)
    assert t5.model.config._attn_implementation != NAME
    assert use_grouped_sdpa(t5.model) is False


def test_grouped_attention_equals_sdpa_with_padding_prefix_and_gradients():
    cfg, bundle = _llama()
    grouped = bundle.model.double()
    stock = copy.deepcopy(grouped)
    stock.set_attn_implementation("sdpa")
    assert stock.config._attn_implementation == "sdpa"
    torch.manual_seed(0)
    ids = torch.randint(3, 200, (3, 9))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # left padding
    for kwargs in ({"attention_mask": mask}, {}):  # with a mask, and the no-mask causal path
        torch.testing.assert_close(grouped(input_ids=ids, **kwargs).logits, stock(input_ids=ids, **kwargs).logits,
                                   atol=1e-10, rtol=1e-10)

    # TAGI's instruction prefix (a cache of one instruction broadcast to the batch), then greedy decoding
    def tagi(base):
        bundle.model = base
        return TagiModel(bundle, cfg.lora, cfg.hypernet).double().eval()

    a, b = tagi(grouped), tagi(stock)
    b.hypernet.load_state_dict(a.hypernet.state_dict())
    instr_ids = torch.randint(3, 200, (1, 6))
    ins_a, ins_b = (m.encode_instruction(instr_ids, torch.ones_like(instr_ids)) for m in (a, b))
    labels = torch.where(mask.bool(), ids, -100)
    la, _ = a(ids, mask, labels, a.generate_adapter(ins_a), None, ins_a)
    lb, _ = b(ids, mask, labels, b.generate_adapter(ins_b), None, ins_b)
    torch.testing.assert_close(la, lb, atol=1e-10, rtol=1e-10)
    assert a.generate(ids, mask, a.generate_adapter(ins_a), None, ins_a, max_new_tokens=5) == \
        b.generate(ids, mask, b.generate_adapter(ins_b), None, ins_b, max_new_tokens=5)

    # gradients through the grouped kernel equal those through repeat_kv
    grads = []
    for model in (a, b):
        model.train()
        model.zero_grad()
        ins = model.encode_instruction(instr_ids, torch.ones_like(instr_ids))
        logits, lab = model(ids, mask, labels, model.generate_adapter(ins), None, ins)
        torch.nn.functional.cross_entropy(logits[lab != -100], lab[lab != -100]).backward()
        grads.append([p.grad for p in model.hypernet.parameters()])
    for ga, gb in zip(*grads):
        torch.testing.assert_close(ga, gb, atol=1e-9, rtol=1e-7)
