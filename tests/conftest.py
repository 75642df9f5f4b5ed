"""Shared fixtures: the real SNI files in ../shared (skip when absent, fail when required)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# Ray/DeepSpeed settings verified on CPU machines (see ../shared/stack-notes.md).
for _key, _value in {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "DS_ACCELERATOR": "cpu",
    "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "120",
}.items():
    os.environ.setdefault(_key, _value)

REPO = Path(__file__).resolve().parent.parent
SHARED_SNI = REPO.parent / "shared" / "data" / "sni"


@pytest.fixture(scope="session")
def shared_sni_dir() -> Path:
    """../shared/data/sni; skipped on a user's fresh clone, required when TAGI_REQUIRE_SHARED=1."""
    if not (SHARED_SNI / "train_tasks.txt").is_file():
        if os.environ.get("TAGI_REQUIRE_SHARED") == "1":
            pytest.fail(f"TAGI_REQUIRE_SHARED=1 but the shared SNI data is missing at {SHARED_SNI}")
        pytest.skip(f"shared SNI data not found at {SHARED_SNI}")
    return SHARED_SNI
