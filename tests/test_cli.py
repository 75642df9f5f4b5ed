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


@pytest.mark.parametrize("name", ["tune"])
def test_unfilled_subcommands_exit_2(name, capsys):
    assert main([name]) == 2
    assert "not implemented yet" in capsys.readouterr().err


def test_data_builtin_then_sni_export(tmp_path, capsys):
    assert main(["data", "--builtin", "--out", str(tmp_path / "suite"), "--n-instances", "8"]) == 0
    assert main(["data", "--sni", str(tmp_path / "suite"), "--out", str(tmp_path / "t.parquet")]) == 0
    summary = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert summary["tasks"]["train"] >= 40 and summary["tasks"]["test"] >= 12 and not summary["errors"]


def test_demo_writes_data_and_metrics(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path)]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["oracle"]["overall"]["exact_match"] == 100.0
    assert (tmp_path / "data" / "tasks.parquet").is_file()
    assert "not implemented yet" in capsys.readouterr().out


def test_config_error_exits_2(capsys):
    assert main(["demo", "--set", "train.lr=-1"]) == 2
    assert "train.lr" in capsys.readouterr().err


def test_job_subcommand_reports_config_errors(capsys):
    assert main(["teachers", "--set", "teachers.pack_size=0"]) == 2
    assert "teachers.pack_size" in capsys.readouterr().err
