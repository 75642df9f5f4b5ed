import pytest

from tagi_ray.config import ConfigError, config_from_dict, default_config_path, load_config


def test_tiny_preset_is_the_default_and_loads():
    cfg = load_config()
    assert default_config_path().name == "tiny.yaml"
    assert cfg.model.name == "tiny-t5" and cfg.lora.target_modules == ["q", "v"]
    assert cfg.loss.lambda_ins == "sigmoid" and cfg.loss.lambda_kl == 5.0


def test_overrides_are_parsed_as_yaml_scalars():
    cfg = load_config(overrides=["train.lr=3e-4", "loss.lambda_ins=0.5", "lora.target_modules=[q,k,v]"])
    assert cfg.train.lr == 3e-4 and cfg.loss.lambda_ins == 0.5 and cfg.lora.target_modules == ["q", "k", "v"]


@pytest.mark.parametrize(
    "data, needle",
    [
        ({"train": {"lrr": 1}}, "unknown key 'train.lrr'"),
        ({"trian": {}}, "unknown key 'trian'"),
        ({"lora": {"rank": "big"}}, "lora.rank: expected an integer, got 'big'"),
        ({"lora": {"rank": 0}}, "lora.rank: 0 must be >= 1"),
        ({"train": {"lr": 0}}, "train.lr: 0.0 must be > 0"),
        ({"train": {"zero_stage": 4}}, "train.zero_stage: 4 is not one of [0, 1, 2, 3]"),
        ({"loss": {"lambda_ins": "cosine"}}, "loss.lambda_ins: 'cosine'"),
        ({"hypernet": {"fusion": "yes"}}, "hypernet.fusion: expected true/false, got 'yes'"),
        ({"data": {"prompt": "def+x"}}, "data.prompt: unknown prompt format 'def+x'"),
        ({"model": {"arch": "gpt"}}, "model.arch: 'gpt' is not one of"),
        ({"model": {"d_model": 65}}, "model.d_model: 65 is not divisible by num_heads=4"),
        ({"lora": {"target_modules": "q"}}, "lora.target_modules: expected a list, got 'q'"),
        ({"lora": 3}, "lora: expected a mapping"),
    ],
)
def test_validation_errors_name_key_and_value(data, needle):
    with pytest.raises(ConfigError) as info:
        config_from_dict(data)
    assert needle in str(info.value)


def test_yaml_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  batch_size: -1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: train.batch_size: -1 must be >= 1"):
        load_config(bad)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
