"""Every YAML preset in configs/ and every sweep space validates against the config schema."""
from pathlib import Path

import pytest

from tagi_ray.config import load_config

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("preset", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_preset_loads(preset):
    cfg = load_config(preset)
    assert cfg.lora.rank >= 1 and cfg.model.name


def test_paper_preset_is_the_paper_setting():
    cfg = load_config(ROOT / "configs" / "t5-base-sni.yaml")
    assert (cfg.model.name, cfg.lora.rank, cfg.loss.lambda_kl, cfg.loss.lambda_ins, cfg.data.prompt) == \
        ("google/t5-base-lm-adapt", 32, 5.0, "sigmoid", "def+2pos")
    assert cfg.lora.target_modules == ["q", "v"] and cfg.ray.use_gpu
