"""Every YAML preset in configs/ and every sweep space validates against the config schema."""
from pathlib import Path

import pytest

from tagi_ray.config import config_from_dict, load_config
from tagi_ray.lora.targets import ALIASES
from tagi_ray.models.base import TINY_MODELS

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("preset", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_preset_loads_and_round_trips(preset):
    cfg = load_config(preset)
    assert config_from_dict(cfg.to_dict()) == cfg  # what a run records in config.yaml reads back the same
    arch = cfg.model.arch if cfg.model.arch != "auto" else TINY_MODELS.get(cfg.model.name, "llama")
    assert set(cfg.lora.target_modules) <= set(ALIASES[arch]), f"{preset.name}: modules {arch} does not name"


def test_paper_preset_is_the_paper_setting():
    cfg = load_config(ROOT / "configs" / "t5-base-sni.yaml")
    assert (cfg.model.name, cfg.lora.rank, cfg.loss.lambda_kl, cfg.loss.lambda_ins, cfg.data.prompt) == \
        ("google/t5-base-lm-adapt", 32, 5.0, "sigmoid", "def+2pos")
    assert cfg.lora.target_modules == ["q", "v"] and cfg.ray.use_gpu
