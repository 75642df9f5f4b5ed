"""Bring your own adapter: an uploaded PEFT LoRA (a lower rank than the server's, random B) gives
exactly PeftModel's greedy generation, alone and batched beside a generated adapter; bad
archives and configs are refused naming the file or field."""
from __future__ import annotations

import io
import json
import tarfile
import zipfile

import pytest
import torch

from tagi_ray.adapters import CONFIG_NAME, WEIGHTS_NAME
from tagi_ray.batching import prompt_batch
from tagi_ray.config import load_config
from tagi_ray.data.prompts import instance_text
from tagi_ray.models import build_tiny
from tagi_ray.peft_upload import UploadError, read_archive
from tagi_ray.serving import AdapterFactory, complete_mixed
from tagi_ray.tagi import TagiModel

INPUTS = ["red green blue", "one two three four"]
BASE = "tiny-base"


def _served(name: str, arch: str):
    cfg = load_config(overrides=[f"model.name={name}", f"model.arch={arch}"])
    torch.manual_seed(0)
    model = TagiModel(build_tiny(cfg.model, arch), cfg.lora, cfg.hypernet, cfg.instruction).eval()
    with torch.no_grad():
        for p in model.hypernet.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return cfg, model


def _peft_dir(cfg, arch: str, tmp_path, r: int = 4, alpha: float = 8.0):
    """A PEFT LoRA of rank r on a fresh copy of the base, B random (PEFT starts it at 0)."""
    import peft

    base = build_tiny(cfg.model, arch).model
    names = {"t5": ["q", "v"], "llama": ["q_proj", "v_proj"]}[arch]
    task = "SEQ_2_SEQ_LM" if arch == "t5" else "CAUSAL_LM"
    pm = peft.get_peft_model(base, peft.LoraConfig(r=r, lora_alpha=alpha, target_modules=names, task_type=task,
                                                   base_model_name_or_path=BASE))
    torch.manual_seed(1)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02)
    out = tmp_path / f"peft-{arch}"
    pm.save_pretrained(str(out))
    config = json.loads((out / CONFIG_NAME).read_text())
    config["base_model_name_or_path"] = BASE
    (out / CONFIG_NAME).write_text(json.dumps(config))
    return pm.eval(), out


def _tar(files: dict[str, bytes], gz: bool = True) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _files(adapter_dir) -> dict[str, bytes]:
    return {CONFIG_NAME: (adapter_dir / CONFIG_NAME).read_bytes(), WEIGHTS_NAME: (adapter_dir / WEIGHTS_NAME).read_bytes()}


@pytest.mark.parametrize("name,arch", [("tiny-llama", "llama"), ("tiny-t5", "t5")])
def test_an_uploaded_peft_adapter_generates_exactly_as_peft_model(name, arch, tmp_path):
    cfg, model = _served(name, arch)
    pm, adapter_dir = _peft_dir(cfg, arch, tmp_path)
    tok = build_tiny(cfg.model, arch).tokenizer
    factory = AdapterFactory(model, tok, cfg, "ckpt")
    archive = _tar({f"my-adapter/{k}": v for k, v in _files(adapter_dir).items()})
    entry, config = factory.from_peft(read_archive(archive, 1 << 20), "sha-of-base", [BASE])
    assert config["r"] == 4 < cfg.lora.rank and entry.adapter_id.startswith("peft-")

    ids, mask = prompt_batch(tok, arch == "t5", [instance_text(x) for x in INPUTS], cfg.model.max_source_length)

    def greedy(hf_model) -> list[str]:
        out = hf_model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12, do_sample=False,
                                pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        new = [row.tolist() for row in (out[:, 1:] if arch == "t5" else out[:, ids.shape[1]:])]
        return [tok.decode(row[: row.index(tok.eos_token_id)] if tok.eos_token_id in row else row,
                           skip_special_tokens=True) for row in new]

    expected = greedy(pm)
    assert expected != greedy(build_tiny(cfg.model, arch).model)  # the adapter changes the output
    prompts = [instance_text(x) for x in INPUTS]
    alone = [c.text for c in complete_mixed(model, tok, cfg, [entry] * 2, prompts, [12, 12])]
    assert alone == expected and all(expected)
    generated = factory.create("Reverse the words.")
    mixed = complete_mixed(model, tok, cfg, [generated, entry, entry], [prompts[0], *prompts], [12] * 3)
    assert [c.text for c in mixed[1:]] == expected
    assert mixed[0].text == complete_mixed(model, tok, cfg, [generated], prompts[:1], [12])[0].text


def test_bad_archives_and_configs_are_refused_naming_what(tmp_path):
    cfg, model = _served("tiny-llama", "llama")
    tok = build_tiny(cfg.model, "llama").tokenizer
    factory = AdapterFactory(model, tok, cfg, "ckpt")
    _, adapter_dir = _peft_dir(cfg, "llama", tmp_path)
    good = _files(adapter_dir)
    config = json.loads(good[CONFIG_NAME])

    def refused(data: bytes, field: str, max_bytes: int = 1 << 20) -> None:
        with pytest.raises(UploadError) as err:
            factory.from_peft(read_archive(data, max_bytes), "sha-of-base", [BASE])
        assert field in err.value.field, (err.value.field, str(err.value))

    def with_config(**changes) -> bytes:
        return _tar({CONFIG_NAME: json.dumps({**config, **changes}).encode(), WEIGHTS_NAME: good[WEIGHTS_NAME]})

    refused(b"not an archive at all", "archive")
    refused(_tar({"../evil/" + CONFIG_NAME: good[CONFIG_NAME], WEIGHTS_NAME: good[WEIGHTS_NAME]}), "../evil")
    refused(_tar({"/etc/" + CONFIG_NAME: good[CONFIG_NAME], WEIGHTS_NAME: good[WEIGHTS_NAME]}), "/etc")
    refused(_tar({CONFIG_NAME: good[CONFIG_NAME], "adapter_model.bin": b"\x80\x02pickle"}), "adapter_model.bin")
    refused(_tar({CONFIG_NAME: good[CONFIG_NAME]}), WEIGHTS_NAME)
    refused(_tar(good), "archive", max_bytes=100)
    link = io.BytesIO()
    with tarfile.open(fileobj=link, mode="w") as tar:
        info = tarfile.TarInfo(WEIGHTS_NAME)
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(info)
        info = tarfile.TarInfo(CONFIG_NAME)
        info.size = len(good[CONFIG_NAME])
        tar.addfile(info, io.BytesIO(good[CONFIG_NAME]))
    refused(link.getvalue(), WEIGHTS_NAME)
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as z:
        z.writestr("../" + CONFIG_NAME, good[CONFIG_NAME])
    refused(zipped.getvalue(), "../")
    refused(with_config(peft_type="PREFIX_TUNING"), "peft_type")
    refused(with_config(use_dora=True), "use_dora")
    refused(with_config(r=64), "r")
    refused(with_config(base_model_name_or_path="someone/else"), "base_model_name_or_path")
    refused(with_config(base_sha256="0" * 64), "base_sha256")
    refused(_tar({CONFIG_NAME: good[CONFIG_NAME], WEIGHTS_NAME: b"garbage"}), WEIGHTS_NAME)
    refused(with_config(r=2), ".lora_")  # the tensors are rank 4: shapes do not match
    # a zip of the good files is accepted, in any single folder
    ok = io.BytesIO()
    with zipfile.ZipFile(ok, "w") as z:
        for k, v in good.items():
            z.writestr(f"folder/{k}", v)
    entry, _ = factory.from_peft(read_archive(ok.getvalue(), 1 << 20), "sha-of-base", [BASE])
    assert entry.weights.names
