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
