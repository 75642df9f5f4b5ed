"""Bring your own adapter: a PEFT LoRA archive (tar, tar.gz or zip of `adapter_config.json` +
`adapter_model.safetensors`), checked and turned into the server's LoRA layout.

    files = read_archive(data, max_bytes)                  # never touches the disk
    weights, info = lora_from_peft(files, targets, rank, alpha, base_sha256, base_names)

Refused, each with an `UploadError` naming the file or field: anything but a tar/zip; a member
with an absolute path, `..`, a link or a device; pickle files (`.bin`, `.pt`, ...); archives
over the size limit (compressed or not); a config that is not plain LoRA (DoRA, bias,
modules_to_save, per-module rank patterns, fan_in_fan_out); another base (its `base_sha256`
when given, else its `base_model_name_or_path`); a module that is not one of the server's
targets; a rank above the server's; wrong shapes; NaN/inf. A lower rank is zero-padded to the
server's rank and B rescaled, so the update `(alpha/r) B A` is exactly the file's.
"""
from __future__ import annotations

import io
import json
import math
import stat
import tarfile
import zipfile
from collections.abc import Callable, Iterable
from pathlib import PurePosixPath

import torch
from safetensors.torch import load as load_safetensors

from tagi_ray.adapters import CONFIG_NAME, WEIGHTS_NAME
from tagi_ray.lora.targets import LoraTarget
from tagi_ray.lora.weights import LoraWeights

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
_PREFIX = "base_model.model."
# adapter_config.json keys that change what the adapter computes, with the only value served
_PLAIN_LORA = {"use_dora": False, "bias": "none", "modules_to_save": None, "fan_in_fan_out": False,
               "rank_pattern": {}, "alpha_pattern": {}, "layers_to_transform": None, "lora_bias": False}


class UploadError(ValueError):
    """A refused upload; `field` names the archive member or config field at fault."""

    def __init__(self, field: str, msg: str):
        self.field = field
        super().__init__(f"{field}: {msg}")


def _checked_name(name: str) -> str:
    path = PurePosixPath(name.replace("\\", "/"))
    drive = bool(path.parts) and path.parts[0].endswith(":")  # C:/...
    if path.is_absolute() or drive or ".." in path.parts:
        raise UploadError(name, "a path outside the archive (absolute or with ..) is refused")
    if path.suffix in PICKLE_SUFFIXES:
        raise UploadError(name, "pickle files are refused; upload adapter_model.safetensors")
    return str(path)


def _members(data: bytes) -> Iterable[tuple[str, str, int, Callable[[], bytes]]]:
    """(name, kind, size, read) for every member; kind is "file" or what else it is."""
    if data[:4] == b"PK\x03\x04":
        archive = zipfile.ZipFile(io.BytesIO(data))
        for info in archive.infolist():
            mode = info.external_attr >> 16
            kind = "dir" if info.is_dir() else "link" if stat.S_ISLNK(mode) else "file"
            yield info.filename, kind, info.file_size, lambda info=info: archive.read(info)
        return
    try:
        archive = tarfile.open(fileobj=io.BytesIO(data), mode="r:*")
    except tarfile.TarError as e:
        raise UploadError("archive", f"not a tar, tar.gz or zip archive ({e})") from None
    for member in archive.getmembers():
        kind = ("file" if member.isfile() else "dir" if member.isdir() else
                "link" if member.issym() or member.islnk() else "device or fifo")
        yield member.name, kind, member.size, lambda m=member: archive.extractfile(m).read()


def read_archive(data: bytes, max_bytes: int) -> dict[str, bytes]:
    """{adapter_config.json: bytes, adapter_model.safetensors: bytes} from an archive, in memory.
    The two files may sit in one folder of the archive; other harmless files (README.md) are
    ignored."""
    if len(data) > max_bytes:
        raise UploadError("archive", f"{len(data)} bytes, at most {max_bytes} allowed")
    files: dict[str, bytes] = {}
    folders: set[str] = set()
    total = 0
    for name, kind, size, read in _members(data):
        name = _checked_name(name)
        if kind == "dir":
            continue
        if kind != "file":
            raise UploadError(name, f"a {kind} in the archive is refused (regular files only)")
        total += size
        if total > max_bytes:
            raise UploadError("archive", f"unpacks to more than {max_bytes} bytes")
        path = PurePosixPath(name)
        if path.name in (CONFIG_NAME, WEIGHTS_NAME):
            if path.name in files:
                raise UploadError(name, f"a second {path.name} in the archive")
            files[path.name] = read()
            folders.add(str(path.parent))
    for needed in (CONFIG_NAME, WEIGHTS_NAME):
        if needed not in files:
            raise UploadError(needed, "missing from the archive (a PEFT LoRA directory holds adapter_config.json "
                                      "and adapter_model.safetensors)")
    if len(folders) > 1:
        raise UploadError("archive", f"adapter files in different folders: {sorted(folders)}")
    return files


def _config(raw: bytes) -> dict:
    try:
        config = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UploadError(CONFIG_NAME, f"not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise UploadError(CONFIG_NAME, "not a JSON object")
    if config.get("peft_type") != "LORA":
        raise UploadError("peft_type", f"{config.get('peft_type')!r}: only LORA adapters are served")
    for key, plain in _PLAIN_LORA.items():
        value = config.get(key, plain)
        if value != plain and not (plain in ({}, None, False) and not value):
            raise UploadError(key, f"{value!r} is not served (only plain LoRA: {plain!r})")
    for key in ("r", "lora_alpha"):
        if not isinstance(config.get(key), (int, float)) or isinstance(config.get(key), bool) or config[key] <= 0:
            raise UploadError(key, f"{config.get(key)!r} must be a positive number")
    return config


def lora_from_peft(files: dict[str, bytes], targets: list[LoraTarget], rank: int, alpha: float, base_sha256: str,
                   base_names: Iterable[str]) -> tuple[LoraWeights, dict]:
    """The uploaded adapter as LoraWeights (N=1) at the server's rank and scaling, and its config.
    `base_sha256` / `base_names`: the served base's content hash and the names it goes by."""
    config = _config(files[CONFIG_NAME])
    declared = _metadata(files[WEIGHTS_NAME]).get("base_sha256") or config.get("base_sha256")
    if declared:
        if declared != base_sha256:
            raise UploadError("base_sha256", f"the adapter was trained on base {declared[:12]}..., this server "
                                             f"serves {base_sha256[:12]}...")
    elif config.get("base_model_name_or_path") not in set(base_names):
        raise UploadError("base_model_name_or_path", f"{config.get('base_model_name_or_path')!r} is not this "
                                                     f"server's base (one of {sorted(set(base_names))})")
    r = int(config["r"])
    if r > rank:
        raise UploadError("r", f"rank {r} is above this server's limit {rank}")
    file_scale = config["lora_alpha"] / (math.sqrt(r) if config.get("use_rslora") else r)
    factor = file_scale / (alpha / rank)
    try:
        tensors = load_safetensors(files[WEIGHTS_NAME])
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise UploadError(WEIGHTS_NAME, f"not a readable safetensors file ({e})") from None
    by_name = {t.name: t for t in targets}
    A = {t.name: torch.zeros(1, rank, t.in_features) for t in targets}
    B = {t.name: torch.zeros(1, t.out_features, rank) for t in targets}
    seen: dict[str, set[str]] = {}
    for key, value in tensors.items():
        which = key.rsplit(".", 2)[-2] if key.count(".") >= 2 else ""
        name = key[len(_PREFIX):].rsplit(".", 2)[0] if key.startswith(_PREFIX) else ""
        if which not in ("lora_A", "lora_B") or not key.endswith(".weight"):
            raise UploadError(key, "unexpected tensor (only base_model.model.<module>.lora_A/B.weight)")
        if name not in by_name:
            raise UploadError(key, f"module {name!r} is not one of this server's LoRA targets "
                                   f"({len(by_name)}, e.g. {next(iter(by_name))!r})")
        t = by_name[name]
        want = (r, t.in_features) if which == "lora_A" else (t.out_features, r)
        if tuple(value.shape) != want:
            raise UploadError(key, f"shape {tuple(value.shape)}, expected {want}")
        value = value.to(torch.float32)
        if not torch.isfinite(value).all():
            raise UploadError(key, "holds NaN or inf")
        if which == "lora_A":
            A[name][0, :r] = value
        else:
            B[name][0, :, :r] = value * factor
        seen.setdefault(name, set()).add(which)
    unpaired = sorted(n for n, parts in seen.items() if len(parts) != 2)
    if unpaired:
        raise UploadError(WEIGHTS_NAME, f"lora_A without lora_B (or the reverse) for {unpaired[:3]}")
    if not seen:
        raise UploadError(WEIGHTS_NAME, "holds no LoRA tensors")
    return LoraWeights(A, B), config


def _metadata(data: bytes) -> dict:
    """The `__metadata__` of a safetensors file's header, read from its bytes."""
    size = int.from_bytes(data[:8], "little") if len(data) >= 8 else -1
    try:
        header = json.loads(data[8:8 + size]) if 0 < size <= len(data) - 8 else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        header = None
    if not isinstance(header, dict):
        raise UploadError(WEIGHTS_NAME, "not a safetensors file (unreadable header)")
    return header.get("__metadata__") or {}
