"""Where tagi-ray keeps what it builds once and reuses across runs: the converted SmolLM2 base,
bases found by content hash, served adapters."""
from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "TAGI_CACHE_DIR"


def cache_root() -> Path:
    """$TAGI_CACHE_DIR, else $XDG_CACHE_HOME/tagi-ray, else ~/.cache/tagi-ray."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "tagi-ray"
