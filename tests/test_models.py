import pytest

from tagi_ray.config import load_config
from tagi_ray.lora import find_targets
from tagi_ray.models import ModelNotFoundError, build_tiny, load_base, save_base


def test_missing_model_is_a_clear_error(tmp_path):
    cfg = load_config(overrides=[f"model.name={tmp_path / 'no-such-model'}"])
    with pytest.raises(ModelNotFoundError, match="never downloads"):
        load_base(cfg.model)
    cfg = load_config(overrides=["model.name=some-org/not-cached-model"])
    with pytest.raises(ModelNotFoundError, match="not-cached-model"):
        load_base(cfg.model)


@pytest.mark.parametrize("arch", ["t5", "llama"])
def test_saved_tiny_model_loads_by_path(arch, tmp_path):
    cfg = load_config()
    bundle = build_tiny(cfg.model, arch)
    save_base(bundle, tmp_path / "m")
    loaded = load_base(load_config(overrides=[f"model.name={tmp_path / 'm'}", "model.arch=auto"]).model)
    assert loaded.arch == arch and type(loaded.model) is type(bundle.model)
    assert loaded.tokenizer("abc")["input_ids"] == bundle.tokenizer("abc")["input_ids"]
    mismatch = "llama" if arch == "t5" else "t5"
    with pytest.raises(ValueError, match="model.arch"):
        load_base(load_config(overrides=[f"model.name={tmp_path / 'm'}", f"model.arch={mismatch}"]).model)


def test_target_modules_per_architecture():
    cfg = load_config()
    t5 = build_tiny(cfg.model, "t5").model
    names = [t.name for t in find_targets(t5, "t5", ["q", "v"])]
    # q and v of every attention block: encoder self, decoder self, decoder cross
    assert len(names) == 2 * (cfg.model.num_layers + 2 * cfg.model.num_layers)
    assert any("EncDecAttention.q" in n for n in names) and not any(".k" in n for n in names)
    llama = build_tiny(cfg.model, "llama").model
    targets = find_targets(llama, "llama", ["q", "v", "ffn"])
    assert {t.kind for t in targets} == {"model.layers.self_attn.q_proj", "model.layers.self_attn.v_proj",
                                         "model.layers.mlp.gate_proj", "model.layers.mlp.up_proj",
                                         "model.layers.mlp.down_proj"}
    assert len({t.layer for t in targets}) == cfg.model.num_layers
    with pytest.raises(ValueError, match="'qq' matches no linear layer"):
        find_targets(t5, "t5", ["q", "qq"])


@pytest.mark.parametrize("arch", ["t5", "llama"])
def test_a_separate_instruction_encoder_is_used_and_kept_in_the_checkpoint(arch, tmp_path):
    """instruction.encoder: tk_instruct — another model of the base's architecture encodes the
    instruction (hypernetwork input and fusion); the checkpoint stores and restores it."""
    import torch

    from tagi_ray.batching import instruction_batch
    from tagi_ray.checkpoint import ENCODER_DIR, load_checkpoint, save_checkpoint
    from tagi_ray.tagi import TagiModel

    cfg = load_config(overrides=[f"model.arch={arch}", f"model.name=tiny-{'t5' if arch == 't5' else 'llama'}",
                                 "instruction.encoder=tk_instruct"])
    base = build_tiny(cfg.model, arch)
    other = build_tiny(cfg.model.model_copy(update={"init_seed": 7}), arch).model
    plain = TagiModel(base, cfg.lora, cfg.hypernet, cfg.instruction).eval()
    model = TagiModel(base, cfg.lora, cfg.hypernet, cfg.instruction, other).eval()
    ids, mask, _ = instruction_batch(base.tokenizer, arch == "t5", ["Definition: count the words."], 64)
    with torch.no_grad():
        a, b = plain.encode_instruction(ids, mask), model.encode_instruction(ids, mask)
        assert not torch.allclose(a.pooled, b.pooled)  # the encoder, not the base, read it
        ckpt = save_checkpoint(model, base.tokenizer, cfg, tmp_path / "ckpt")
        assert (ckpt / ENCODER_DIR / "config.json").is_file()
        loaded, _, _ = load_checkpoint(ckpt)
        torch.testing.assert_close(loaded.encode_instruction(ids, mask).pooled, b.pooled)
    assert not any(p.requires_grad for p in model.instruction_encoder.parameters())


def test_save_base_writes_the_weights_on_any_distributed_rank(tmp_path, monkeypatch):
    """transformers' save_pretrained writes nothing on a torch.distributed rank other than 0 (a
    second Ray Train worker): save_base must not depend on it."""
    import transformers.distributed.mixin as mixin

    from tagi_ray.models import load_pretrained

    monkeypatch.setattr(mixin, "_is_torch_distributed_initialized", lambda: True)
    monkeypatch.setattr(mixin, "_get_torch_distributed_rank", lambda: 1)
    bundle = build_tiny(load_config().model, "t5")
    save_base(bundle, tmp_path / "base")
    assert (tmp_path / "base" / "model.safetensors").is_file() and (tmp_path / "base" / "config.json").is_file()
    load_pretrained(str(tmp_path / "base"))
