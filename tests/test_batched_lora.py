"""The one batched-LoRA mechanism: heterogeneous batches equal separate forwards."""
import pytest
import torch

from tagi_ray.batching import train_batch
from tagi_ray.config import load_config
from tagi_ray.lora import LoraBank, LoraWeights
from tagi_ray.models import build_tiny
from tagi_ray.tagi import TagiModel

SOURCES = ["the quick brown fox", "hello", "jumps over the lazy dog again", "abc"]
TARGETS = ["fox brown", "olleh", "dog", "a b c d"]
INSTRUCTIONS = ["Reverse the words.", "Reverse the letters.", "Return the last word.", "Spell it."]


def make_model(arch, fusion=True, targets=("q", "v")):
    cfg = load_config(overrides=[f"instruction.fusion={str(fusion).lower()}", f"lora.target_modules=[{','.join(targets)}]"])
    bundle = build_tiny(cfg.model, arch)
    return TagiModel(bundle, cfg.lora, cfg.hypernet).eval(), bundle.tokenizer


def random_adapters(model, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = model.lora.rank
    return LoraWeights({t.name: torch.randn(n, r, t.in_features, generator=g) * 0.3 for t in model.targets},
                       {t.name: torch.randn(n, t.out_features, r, generator=g) * 0.3 for t in model.targets})


def valid(logits, labels):
    return logits[labels != -100]


@pytest.mark.parametrize("arch", ["t5", "llama"])
@pytest.mark.parametrize("fusion", [True, False])
def test_heterogeneous_batch_equals_separate_forwards(arch, fusion):
    torch.manual_seed(0)
    model, tok = make_model(arch, fusion, targets=("q", "k", "v", "o", "ffn"))
    # float64, so that the comparison tests the algorithm, not float32 summation order (padding
    # changes matmul shapes: in float32 the difference is ~1e-4 on logits of size ~10)
    model.double()
    batch = train_batch(tok, model.is_encoder_decoder, SOURCES, TARGETS, 64, 32, INSTRUCTIONS, 64)
    instr = model.encode_instruction(batch.instr_ids, batch.instr_mask)
    adapters = random_adapters(model, len(SOURCES)).to(torch.float64)
    index = torch.tensor([2, 0, 3, 1])  # examples use adapters (and instructions) in another order
    with torch.no_grad():
        logits, labels = model(batch.input_ids, batch.attention_mask, batch.labels, adapters, index, instr)
        base_logits, _ = model(batch.input_ids, batch.attention_mask, batch.labels)
    assert not torch.allclose(valid(logits, labels), valid(base_logits, labels), atol=1e-3)  # adapters matter
    for i in range(len(SOURCES)):
        one = train_batch(tok, model.is_encoder_decoder, SOURCES[i:i + 1], TARGETS[i:i + 1], 64, 32,
                          INSTRUCTIONS[index[i]:index[i] + 1], 64)
        single_instr = model.encode_instruction(one.instr_ids, one.instr_mask)
        with torch.no_grad():
            l1, lab1 = model(one.input_ids, one.attention_mask, one.labels, adapters.select(int(index[i])), None,
                             single_instr)
        torch.testing.assert_close(valid(logits[i:i + 1], labels[i:i + 1]), valid(l1, lab1), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("arch", ["t5", "llama"])
def test_fast_path_equals_general_path(arch):
    model, tok = make_model(arch)
    batch = train_batch(tok, model.is_encoder_decoder, SOURCES, TARGETS, 64, 32)
    one = random_adapters(model, 1, seed=3)
    copies = LoraWeights.cat([one] * len(SOURCES))  # general path: gather + bmm over 4 identical rows
    x = torch.randn(4, 7, model.targets[0].in_features)
    name = model.targets[0].name
    base_out = torch.randn(4, 7, model.targets[0].out_features)
    fast = model.lora.add_delta(base_out, x, one.A[name], one.B[name], None)
    general = model.lora.add_delta(base_out, x, copies.A[name], copies.B[name], torch.arange(4))
    explicit = base_out + model.lora.scaling * (x @ one.A[name][0].T) @ one.B[name][0].T
    torch.testing.assert_close(fast, explicit, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast, general, atol=1e-6, rtol=1e-5)
    with torch.no_grad():  # inference adds into the base output in place: same values
        out = base_out.clone()
        fast_in_place = model.lora.add_delta(out, x, one.A[name], one.B[name], None)
        assert fast_in_place.data_ptr() == out.data_ptr()
        general_in_place = model.lora.add_delta(base_out.clone(), x, copies.A[name], copies.B[name], torch.arange(4))
    torch.testing.assert_close(fast_in_place, fast, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(general_in_place, general, atol=1e-6, rtol=1e-6)
    with torch.no_grad():
        lf, _ = model(batch.input_ids, batch.attention_mask, batch.labels, one)  # N=1: fast path
        lg, _ = model(batch.input_ids, batch.attention_mask, batch.labels, copies, None)  # one row per example
    torch.testing.assert_close(lf, lg, atol=1e-5, rtol=1e-4)


def test_bank_gather_trains_only_the_indexed_rows():
    model, tok = make_model("t5")
    bank = LoraBank(model.targets, k=3, rank=model.lora.rank)
    assert all(float(b.detach().abs().sum()) == 0 for b in bank.B.values())  # B zero-init: starts at the base
    batch = train_batch(tok, True, SOURCES[:2], TARGETS[:2], 64, 32)
    logits, labels = model(batch.input_ids, batch.attention_mask, batch.labels, bank.weights(), torch.tensor([0, 2]),
                           fuse=False)
    torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)).backward()
    grad = next(iter(bank.B.values())).grad
    assert grad[0].abs().sum() > 0 and grad[2].abs().sum() > 0 and grad[1].abs().sum() == 0
    assert all(p.grad is None for p in model.base.parameters())


@pytest.mark.parametrize("arch", ["t5", "llama"])
def test_gradients_reach_the_hypernetwork_not_the_base(arch):
    model, tok = make_model(arch)
    model.train()
    batch = train_batch(tok, model.is_encoder_decoder, SOURCES, TARGETS, 64, 32, INSTRUCTIONS[:2] * 2, 64)
    instr = model.encode_instruction(batch.instr_ids, batch.instr_mask)
    logits, labels = model(batch.input_ids, batch.attention_mask, batch.labels, model.generate_adapter(instr),
                           batch.index, instr)
    torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)).backward()
    hyper_grads = [p.grad for p in model.hypernet.parameters()]
    assert all(g is not None for g in hyper_grads) and sum(float(g.abs().sum()) for g in hyper_grads) > 0
    assert all(not p.requires_grad and p.grad is None for p in model.base.parameters())


def test_fresh_hypernetwork_starts_near_the_base():
    model, tok = make_model("t5")
    batch = train_batch(tok, True, SOURCES, TARGETS, 64, 32, INSTRUCTIONS, 64)
    instr = model.encode_instruction(batch.instr_ids, batch.instr_mask)
    adapter = model.generate_adapter(instr)
    assert max(float(b.detach().abs().max()) for b in adapter.B.values()) < 0.05
    with torch.no_grad():
        a, labels = model(batch.input_ids, batch.attention_mask, batch.labels, adapter, batch.index, instr, fuse=False)
        b, _ = model(batch.input_ids, batch.attention_mask, batch.labels, fuse=False)
    # the generated update moves the logits by a few percent of their spread, not more
    assert float((valid(a, labels) - valid(b, labels)).std()) < 0.1 * float(valid(b, labels).std())


@pytest.mark.parametrize("arch", ["t5", "llama"])
def test_batched_generation_equals_single(arch):
    from tagi_ray.batching import prompt_batch

    model, tok = make_model(arch)
    adapters = random_adapters(model, 2, seed=5)
    batch = train_batch(tok, model.is_encoder_decoder, SOURCES[:3], TARGETS[:3], 64, 32, INSTRUCTIONS[:3], 64)
    instr = model.encode_instruction(batch.instr_ids, batch.instr_mask)
    index = torch.tensor([1, 0, 1])
    ids, mask = prompt_batch(tok, model.is_encoder_decoder, SOURCES[:3], 64)
    out = model.generate(ids, mask, adapters, index, instr, max_new_tokens=6)
    for i in range(3):
        ids1, mask1 = prompt_batch(tok, model.is_encoder_decoder, SOURCES[i:i + 1], 64)
        row = index[i:i + 1]
        single = model.generate(ids1, mask1, adapters.select(row), None, instr.select(row), max_new_tokens=6)
        assert single == [out[i]]


@pytest.mark.parametrize("arch", ["t5", "llama"])
def test_one_instruction_broadcast_to_the_batch_equals_per_example_copies(arch):
    """index None with one instruction: broadcast views (no copy) give what explicit rows give;
    the identity index (adapter i for example i) skips the gather and gives what it gives."""
    model, tok = make_model(arch)
    model.double()
    batch = train_batch(tok, model.is_encoder_decoder, SOURCES, TARGETS, 64, 32, INSTRUCTIONS[:1], 64)
    instr = model.encode_instruction(batch.instr_ids, batch.instr_mask)
    adapter = random_adapters(model, 1).to(torch.float64)
    rows = torch.zeros(len(SOURCES), dtype=torch.long)
    broadcast = instr.for_batch(None, len(SOURCES))
    assert broadcast.states.stride(0) == 0  # a view of the one encoded instruction
    if broadcast.past is not None:
        assert broadcast.past[0][0].data_ptr() == instr.past[0][0].data_ptr()
    with torch.no_grad():
        lb, _ = model(batch.input_ids, batch.attention_mask, batch.labels, adapter, None, instr)
        lc, _ = model(batch.input_ids, batch.attention_mask, batch.labels, adapter, None, instr.select(rows))
    torch.testing.assert_close(lb, lc, atol=1e-10, rtol=1e-10)
    assert model.generate(batch.input_ids, batch.attention_mask, adapter, None, instr, max_new_tokens=4) == \
        model.generate(batch.input_ids, batch.attention_mask, adapter, None, instr.select(rows), max_new_tokens=4)

    adapters = random_adapters(model, len(SOURCES), seed=5).to(torch.float64)
    per_example = instr.select(rows)
    with torch.no_grad():
        li, _ = model(batch.input_ids, batch.attention_mask, batch.labels, adapters, torch.arange(len(SOURCES)),
                      per_example)
        ln, _ = model(batch.input_ids, batch.attention_mask, batch.labels, adapters, None, per_example)
    torch.testing.assert_close(li, ln, atol=1e-10, rtol=1e-10)
