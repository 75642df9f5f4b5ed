"""Generated adapters round-trip through standard PEFT directories."""

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from tagi_ray.adapters import export_peft, import_peft
from tagi_ray.batching import train_batch
from tagi_ray.config import load_config
from tagi_ray.models import build_tiny, save_base
from tagi_ray.tagi import TagiModel

SOURCES = ["the quick brown fox", "hello there"]
TARGETS = ["fox", "there hello"]


def trained_like_adapter(model, instr):
    """A generated adapter with a visible effect (perturb the hypernet's B outputs)."""
    with torch.no_grad():
        for head in model.hypernet.heads:
            head.weight.normal_(std=0.05)
    return model.generate_adapter(instr)


@pytest.mark.parametrize("arch", ["t5", "llama"])
def test_generated_adapter_loads_in_peft_with_same_logits(arch, tmp_path):
    cfg = load_config(overrides=["instruction.fusion=false"])
    bundle = build_tiny(cfg.model, arch)
    save_base(bundle, tmp_path / "base")
    model = TagiModel(bundle, cfg.lora, cfg.hypernet).eval()
    tok = bundle.tokenizer
    batch = train_batch(tok, model.is_encoder_decoder, SOURCES, TARGETS, 64, 32, ["Reverse the words."] * 2, 64)
    instr = model.encode_instruction(batch.instr_ids, batch.instr_mask)
    adapter = trained_like_adapter(model, instr)
    out = export_peft(adapter, model.targets, cfg.lora.rank, cfg.lora.alpha, arch, tmp_path / "base",
                      tmp_path / "adapter")
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    keys = load_file(str(out / "adapter_model.safetensors"))
    name = model.targets[0].name
    assert keys[f"base_model.model.{name}.lora_A.weight"].shape == (cfg.lora.rank, model.targets[0].in_features)
    assert keys[f"base_model.model.{name}.lora_B.weight"].shape == (model.targets[0].out_features, cfg.lora.rank)

    with torch.no_grad():
        ours, labels = model(batch.input_ids, batch.attention_mask, batch.labels, adapter)
        base_only, _ = model(batch.input_ids, batch.attention_mask, batch.labels)
    fresh = build_tiny(cfg.model, arch).model  # same seed -> same base weights, no hooks
    peft_model = PeftModel.from_pretrained(fresh, str(out)).eval()
    with torch.no_grad():
        if arch == "t5":
            theirs = peft_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                labels=batch.labels).logits
        else:
            theirs = peft_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1]
    valid = labels != -100
    assert (ours[valid] - base_only[valid]).abs().max() > 1e-2  # the adapter does something
    torch.testing.assert_close(theirs[valid], ours[valid], atol=1e-4, rtol=1e-4)

    back, meta = import_peft(out, rank=cfg.lora.rank, alpha=cfg.lora.alpha)
    assert meta["peft_type"] == "LORA" and meta["r"] == cfg.lora.rank
    for n in adapter.names:
        torch.testing.assert_close(back.A[n], adapter.A[n].detach())
        torch.testing.assert_close(back.B[n], adapter.B[n].detach())


def test_import_refuses_pickle_and_rescales_alpha(tmp_path):
    cfg = load_config()
    bundle = build_tiny(cfg.model, "t5")
    model = TagiModel(bundle, cfg.lora, cfg.hypernet)
    w = model.hypernet(torch.randn(1, bundle.model.config.d_model))
    out = export_peft(w, model.targets, cfg.lora.rank, 2 * cfg.lora.alpha, "t5", "base", tmp_path / "a")
    back, _ = import_peft(out, rank=cfg.lora.rank, alpha=cfg.lora.alpha)
    n = model.targets[0].name
    torch.testing.assert_close(back.B[n], 2 * w.B[n].detach())  # same update at the model's scaling
    (out / "adapter_model.safetensors").rename(out / "adapter_model.bin")  # a pickle in its place
    with pytest.raises(FileNotFoundError, match=r"found \['adapter_model.bin'\]; only safetensors are read"):
        import_peft(out)
