import json
import subprocess
import sys

import pytest

from tagi_ray.cli import main

SUBCOMMANDS = ["data", "teachers", "meta-train", "eval", "tune", "serve", "demo", "export-adapter"]


def test_help_lists_every_subcommand():
    out = subprocess.run([sys.executable, "-m", "tagi_ray.cli", "--help"], capture_output=True, text=True, check=True)
    for name in SUBCOMMANDS:
        assert name in out.stdout


def test_data_builtin_then_sni_export(tmp_path, capsys):
    assert main(["data", "--builtin", "--out", str(tmp_path / "suite"), "--n-instances", "8"]) == 0
    assert main(["data", "--sni", str(tmp_path / "suite"), "--out", str(tmp_path / "t.parquet")]) == 0
    summary = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert summary["tasks"]["train"] >= 40 and summary["tasks"]["test"] >= 12 and not summary["errors"]


def test_demo_asks_about_a_held_out_task(tmp_path):
    from jobs.demo import held_out_requests
    from tagi_ray.config import load_config
    from tagi_ray.data.tables import read_table, select_split
    from tagi_ray.run_dir import RunDir, ensure_data

    run = RunDir(tmp_path)
    ensure_data(load_config(None), run)
    request, rows = held_out_requests(run)
    test_tasks = set(select_split(read_table(run.table), "test").column("task").to_pylist())
    assert rows and {r["task"] for r in rows} <= test_tasks and len(request["examples"]) == 2
    assert request["instruction"] == rows[0]["definition"]


def test_config_error_exits_2(capsys):
    assert main(["demo", "--set", "train.lr=-1"]) == 2
    assert "train.lr" in capsys.readouterr().err


def test_job_subcommand_reports_config_errors(capsys):
    assert main(["teachers", "--set", "teachers.pack_size=0"]) == 2
    assert "teachers.pack_size" in capsys.readouterr().err
