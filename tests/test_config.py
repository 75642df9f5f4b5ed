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
        ({"train": {"lrr": 1}}, "unknown key 'train.lrr' (allowed in train: ['batch_size',"),
        ({"trian": {}}, "unknown key 'trian' (allowed in top level: ['baselines', 'data',"),
        ({"lora": {"rank": "big"}}, "lora.rank: 'big': Input should be a valid integer"),
        ({"lora": {"rank": 0}}, "lora.rank: 0: Input should be greater than or equal to 1"),
        ({"train": {"lr": 0}}, "train.lr: 0: Input should be greater than 0"),
        ({"train": {"zero_stage": 4}}, "train.zero_stage: 4: Input should be 0, 1, 2 or 3"),
        ({"loss": {"lambda_ins": "cosine"}}, "loss.lambda_ins: 'cosine': is neither a number nor 'sigmoid'"),
        ({"loss": {"lambda_ins": -0.5}}, "loss.lambda_ins: -0.5: must be >= 0"),
        ({"instruction": {"fusion": "yes"}}, "instruction.fusion: 'yes': Input should be a valid boolean"),
        ({"data": {"prompt": "def+x"}}, "data.prompt: 'def+x': unknown prompt format 'def+x'"),
        ({"data": {"val_fraction": 1}}, "data.val_fraction: 1: Input should be less than 1"),
        ({"model": {"arch": "gpt"}}, "model.arch: 'gpt': Input should be 'auto', 't5' or 'llama'"),
        ({"model": {"d_model": 65}}, "model.d_model: 65 is not divisible by num_heads=4"),
        ({"serve": {"default_max_new_tokens": 500}}, "serve.default_max_new_tokens: 500 exceeds max_new_tokens_limit"),
        ({"lora": {"target_modules": "q"}}, "lora.target_modules: 'q': Input should be a valid list"),
        ({"lora": {"target_modules": []}}, "lora.target_modules: []: List should have at least 1 item"),
        ({"lora": 3}, "lora: expected a mapping (section), got 3"),
    ],
)
def test_validation_errors_name_key_and_value(data, needle):
    with pytest.raises(ConfigError) as info:
        config_from_dict(data)
    assert needle in str(info.value)


def test_yaml_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  batch_size: -1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: train.batch_size: -1: Input should be greater than or equal to 1"):
        load_config(bad)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_one_schema_validates_assignments_and_knows_which_losses_are_on():
    cfg = load_config()
    with pytest.raises(Exception, match="greater than or equal to 1"):
        cfg.lora.rank = 0  # assignments are validated like YAML values
    assert cfg.loss.uses_kl and cfg.loss.uses_ins and cfg.loss.uses_teachers
    off = config_from_dict({"loss": {"lambda_kl": 0, "lambda_ins": 0}}).loss
    assert not off.uses_kl and not off.uses_ins and not off.uses_teachers and off.uses_ce
    only_ins = config_from_dict({"loss": {"lambda_kl": 0, "lambda_ins": 0.5}}).loss
    assert only_ins.uses_teachers and not only_ins.uses_kl
