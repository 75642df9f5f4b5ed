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


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster for the whole session (dashboard on: Train/Tune cleanup needs it)."""
    import ray

    from tagi_ray.ports import free_ports

    # Prometheus metrics of this node (tests scrape the serve metrics)
    os.environ["TAGI_TEST_METRICS_PORT"] = str(free_ports()[0])
    ray.init(num_cpus=2, include_dashboard=True, _metrics_export_port=int(os.environ["TAGI_TEST_METRICS_PORT"]))
    yield
    ray.shutdown()


def tiny_test_config(**sections):
    """configs/tiny.yaml with test-sized budgets; `sections` override per section, e.g.
    tiny_test_config(teachers={"steps": 10})."""
    from tagi_ray.config import load_config

    cfg = load_config(None)
    cfg.train.prompt_tuning_steps = 30
    cfg.teachers.steps = 40
    cfg.teachers.pack_size = 4
    cfg.ray.num_workers = 2
    cfg.data.max_eval_instances = 16  # per test task: tests check the protocol, not the figures
    for section, values in sections.items():
        for key, value in values.items():
            setattr(getattr(cfg, section), key, value)
    return cfg


@pytest.fixture(scope="session")
def warm_run(tmp_path_factory):
    """A run directory with the task table and a (briefly) warmed-up base, shared by the Ray tests."""
    from tagi_ray.run_dir import RunDir
    from tagi_ray.stages import ensure_base, ensure_data

    run = RunDir(tmp_path_factory.mktemp("warm_run"))
    cfg = tiny_test_config()
    table = ensure_data(cfg, run)
    ensure_base(cfg, run, table)
    return run


def run_with_shared_base(warm: "object", root: Path):
    """A fresh run directory that reuses `warm`'s table and base (symlinks), so tests stay fast."""
    from tagi_ray.run_dir import RunDir

    run = RunDir(root)
    (root / "data").mkdir(parents=True, exist_ok=True)
    (root / "data" / "tasks.parquet").symlink_to(warm.table)
    root.joinpath("base").symlink_to(warm.base)
    return run
