"""The base is stored once per run: checkpoints reference it by content hash, loading verifies it."""
import json
import shutil

import pytest
import torch

from tagi_ray.base_ref import REF_FILE, BaseMismatchError, base_digest, resolve_base
from tagi_ray.checkpoint import load_checkpoint, save_checkpoint
from tagi_ray.config import load_config
from tagi_ray.inference import generate_with_instructions
from tagi_ray.models import build_tiny
from tagi_ray.models.base import save_base
from tagi_ray.tagi import TagiModel


def _size(path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@pytest.fixture()
def saved(tmp_path):
    cfg = load_config(overrides=["model.name=tiny-llama", "model.arch=llama"])
    torch.manual_seed(0)
    bundle = build_tiny(cfg.model, "llama")
    save_base(bundle, tmp_path / "run" / "base")
    model = TagiModel(bundle, cfg.lora, cfg.hypernet, cfg.instruction).eval()
    with torch.no_grad():
        for p in model.hypernet.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return cfg, model, bundle.tokenizer, tmp_path / "run"


def _answers(model, tok, cfg) -> list[str]:
    return generate_with_instructions(model, tok, cfg.model, ["Reverse the words."] * 2, ["Input: a b\nOutput: "] * 2, 6)


def test_a_checkpoint_references_the_runs_base_by_hash_and_loads_the_same_model(saved, monkeypatch, tmp_path):
    cfg, model, tok, run = saved
    ref = save_checkpoint(model, tok, cfg, run / "hypernet", base_dir=run / "base")
    full = save_checkpoint(model, tok, cfg, tmp_path / "standalone")
    assert not (ref / "base").exists() and json.loads((ref / REF_FILE).read_text())["sha256"] == base_digest(run / "base")
    assert _size(ref) < _size(full) - _size(run / "base") + 4096  # the base is not copied
    loaded, ltok, _ = load_checkpoint(ref)
    assert _answers(loaded, ltok, cfg) == _answers(model, tok, cfg) == _answers(*load_checkpoint(full)[:2], cfg)

    # moved with its run (another root): found beside it; alone: found in the cache by hash
    moved = shutil.move(str(run), str(tmp_path / "elsewhere"))
    assert resolve_base(tmp_path / "elsewhere" / "hypernet") == tmp_path / "elsewhere" / "base"
    lone = shutil.move(str(tmp_path / "elsewhere" / "hypernet"), str(tmp_path / "lone"))
    with pytest.raises(FileNotFoundError, match="is missing: looked in"):
        load_checkpoint(lone)
    monkeypatch.setenv("TAGI_CACHE_DIR", str(tmp_path / "cache"))
    digest = base_digest(tmp_path / "elsewhere" / "base")
    shutil.copytree(tmp_path / "elsewhere" / "base", tmp_path / "cache" / "bases" / digest)
    assert resolve_base(lone) == tmp_path / "cache" / "bases" / digest
    del moved


def test_a_different_base_is_refused_with_a_clear_error(saved):
    cfg, model, tok, run = saved
    ckpt = save_checkpoint(model, tok, cfg, run / "hypernet", base_dir=run / "base")
    other = build_tiny(cfg.model.model_copy(update={"init_seed": 7}), "llama")
    save_base(other, run / "base")  # same place, other weights
    with pytest.raises(BaseMismatchError, match="its base has sha256 .* but the bases found differ"):
        load_checkpoint(ckpt)


def test_base_tensors_trained_in_meta_training_are_stored_and_restored(saved):
    cfg, model, tok, run = saved
    norms = [p for n, p in model.base.named_parameters() if "norm" in n]
    with torch.no_grad():
        for p in norms:
            p.requires_grad_(True)
            p.mul_(1.5)
    ckpt = save_checkpoint(model, tok, cfg, run / "hypernet", base_dir=run / "base")
    loaded, ltok, _ = load_checkpoint(ckpt)
    for (n, a), b in zip(((n, p) for n, p in model.base.named_parameters() if "norm" in n),
                         (p for n, p in loaded.base.named_parameters() if "norm" in n)):
        torch.testing.assert_close(a, b, msg=n)
    assert _answers(loaded, ltok, cfg) == _answers(model, tok, cfg)
