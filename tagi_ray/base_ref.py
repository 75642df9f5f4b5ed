"""A checkpoint's frozen base, referenced by content hash instead of copied.

The base is stored once per run (`<run>/base/`). A checkpoint holds `base.json`:

    {"sha256": "<digest of every file of the base directory>", "path": "<absolute path when saved>"}

and, where meta-training changed the base (`train.train_layer_norms`), only the changed tensors
(`base_overrides.safetensors`). Loading looks for the base at the recorded path, in a `base/`
beside the checkpoint or up to three directories above it (the run layout), and in
`$TAGI_CACHE_DIR/bases/<sha256>/`, and verifies the digest: a missing or different base is a
clear error, never a silent mismatch. A checkpoint with its own `base/` directory (older
layout, or one saved standalone) is still loaded from it.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from tagi_ray.cache import cache_root

REF_FILE = "base.json"
OVERRIDES_FILE = "base_overrides.safetensors"
DIGEST_FILE = ".tagi_digest.json"  # inside a base directory: the digest, keyed by file sizes and mtimes


class BaseMismatchError(ValueError):
    """The base found for a checkpoint is not the one it was trained on."""


def _files(base_dir: Path) -> list[Path]:
    return sorted(p for p in base_dir.rglob("*") if p.is_file() and not p.name.startswith(DIGEST_FILE))


def base_digest(base_dir: str | Path) -> str:
    """sha256 over every file of a model directory (relative names and bytes). Cached in the
    directory, keyed by each file's size and mtime, so an unchanged base is hashed once."""
    base_dir = Path(base_dir)
    files = _files(base_dir)
    stamp = [[str(p.relative_to(base_dir)), p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    cached = base_dir / DIGEST_FILE
    if cached.is_file():
        stored = json.loads(cached.read_text())
        if stored.get("files") == stamp:
            return stored["sha256"]
    h = hashlib.sha256()
    for p in files:
        h.update(str(p.relative_to(base_dir)).encode() + b"\0")
        with p.open("rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
    digest = h.hexdigest()
    try:  # atomically: runs sharing a base may hash it at the same time
        tmp = base_dir / f"{DIGEST_FILE}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps({"sha256": digest, "files": stamp}))
        tmp.replace(cached)
    except OSError:  # a read-only base: hash again next time
        pass
    return digest


def write_base_ref(ckpt_dir: Path, base_dir: str | Path) -> dict:
    """Record in `ckpt_dir` which base the checkpoint needs."""
    ref = {"sha256": base_digest(base_dir), "path": str(Path(base_dir).resolve())}
    (ckpt_dir / REF_FILE).write_text(json.dumps(ref, indent=1))
    return ref


def _candidates(ckpt: Path, ref: dict) -> list[Path]:
    out = [Path(ref["path"])]
    parent = ckpt.resolve()
    for _ in range(3):
        parent = parent.parent
        out.append(parent / "base")
    out.append(cache_root() / "bases" / ref["sha256"])
    return list(dict.fromkeys(out))


def resolve_base(ckpt_dir: str | Path) -> Path:
    """The verified base directory of a checkpoint (see the module docstring)."""
    ckpt = Path(ckpt_dir)
    if (ckpt / "base" / "config.json").is_file():
        return ckpt / "base"
    if not (ckpt / REF_FILE).is_file():
        raise FileNotFoundError(f"{ckpt}: neither a base/ directory nor {REF_FILE} (not a tagi-ray checkpoint?)")
    ref = json.loads((ckpt / REF_FILE).read_text())
    mismatched = []
    for cand in _candidates(ckpt, ref):
        if (cand / "config.json").is_file():
            digest = base_digest(cand)
            if digest == ref["sha256"]:
                return cand
            mismatched.append(f"{cand} (sha256 {digest[:12]})")
    if mismatched:
        raise BaseMismatchError(f"{ckpt}: its base has sha256 {ref['sha256'][:12]}, but the bases found differ: "
                                f"{', '.join(mismatched)}; restore the run's base/ or copy it to "
                                f"$TAGI_CACHE_DIR/bases/{ref['sha256']}")
    raise FileNotFoundError(f"{ckpt}: its base (sha256 {ref['sha256'][:12]}) is missing: looked in "
                            f"{', '.join(str(c) for c in _candidates(ckpt, ref))}")
