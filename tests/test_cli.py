import json
import subprocess
import sys

import pytest

from tagi_ray.cli import main

SUBCOMMANDS = ["data", "teachers", "meta-train", "eval", "tune", "serve", "demo", "export-adapter", "report"]


def test_help_lists_every_subcommand():
    out = subprocess.run([sys.executable, "-m", "tagi_ray.cli", "--help"], capture_output=True, text=True, check=True)
    for name in SUBCOMMANDS:
        assert name in out.stdout


def test_data_builtin_then_sni_export(tmp_path, capsys):
    assert main(["data", "--builtin", "--out", str(tmp_path / "suite"), "--n-instances", "8"]) == 0
    assert main(["data", "--sni", str(tmp_path / "suite"), "--out", str(tmp_path / "t.parquet")]) == 0
    summary = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert summary["tasks"]["train"] >= 40 and summary["tasks"]["test"] >= 12 and not summary["errors"]


def test_demo_asks_about_a_held_out_task_in_the_checkpoints_format(tmp_path):
    from tagi_ray.jobs.demo import held_out_requests
    from tagi_ray.config import load_config, preset_path
    from tagi_ray.data.tables import read_table, select_split
    from tagi_ray.run_dir import RunDir
    from tagi_ray.stages import ensure_data

    cfg = load_config(preset_path("demo"))
    assert cfg.data.source == "lexicon" and cfg.model.name == "smollm2-135m"
    run = RunDir(tmp_path)
    ensure_data(cfg, run)
    test_tasks = set(select_split(read_table(run.table), "test").column("task").to_pylist())
    for num_pos in (0, 2):
        request, rows = held_out_requests(run, num_pos)
        assert len(rows) == 8 and {r["task"] for r in rows} <= test_tasks and len(request["examples"]) == num_pos
        assert request["instruction"] == rows[0]["definition"]


def test_config_error_exits_2(capsys):
    assert main(["demo", "--set", "train.lr=-1"]) == 2
    assert "train.lr" in capsys.readouterr().err


def test_job_subcommand_reports_config_errors(capsys):
    assert main(["teachers", "--set", "teachers.pack_size=0"]) == 2
    assert "teachers.pack_size" in capsys.readouterr().err


BAD_INPUT = [  # (arguments, what the one line must name)
    (["data", "--sni", "{tmp}/nope", "--out", "{tmp}/t.parquet"], "--sni {tmp}/nope: no such directory"),
    (["data", "--sni", "{tmp}", "--out", "{tmp}/t.parquet"], "no train_tasks.txt under {tmp}"),
    (["data", "--sni", "{tmp}", "--out", "{tmp}/t.parquet", "--split", "dev"], "invalid choice: 'dev'"),
    (["teachers", "--config", "{tmp}/missing.yaml"], "config file not found: {tmp}/missing.yaml"),
    (["meta-train", "--set", "train.lr=-1"], "train.lr: -1"),
    (["pipeline", "--set", "loss.lambda_ins=cosine"], "loss.lambda_ins: 'cosine'"),
    (["pipeline", "--sett", "x=1"], "unrecognized arguments: --sett"),
    (["eval", "--checkpoint", "{tmp}/nope", "--out", "{tmp}/run"], "{tmp}/nope is not a tagi-ray checkpoint"),
    (["export-adapter", "--checkpoint", "{tmp}/nope", "--instruction", "x", "--out", "{tmp}/a"],
     "{tmp}/nope is not a tagi-ray checkpoint"),
    (["serve", "--checkpoint", "{tmp}/nope"], "{tmp}/nope is not a tagi-ray checkpoint"),
    (["tune", "--space", "{tmp}/nope.yaml"], "space file not found: {tmp}/nope.yaml"),
    (["demo", "--set", "model.arch=gpt"], "model.arch: 'gpt'"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
]


def _cli(args: list[str]) -> int:
    try:
        return main(args)
    except SystemExit as exc:  # argparse usage errors exit directly
        return exc.code


@pytest.mark.parametrize("args, needle", BAD_INPUT, ids=[" ".join(a[:2]) for a, _ in BAD_INPUT])
def test_bad_input_prints_one_line_naming_it(args, needle, tmp_path, capsys):
    fill = lambda text: text.replace("{tmp}", str(tmp_path))  # noqa: E731
    rc = _cli([fill(a) for a in args])
    err = capsys.readouterr().err
    assert rc not in (0, None), err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert fill(needle) in lines[0] and lines[0].startswith("tagi"), lines[0]


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a tagi-ray checkpoint"):
        main(["--debug", "export-adapter", "--checkpoint", str(tmp_path), "--instruction", "x",
              "--out", str(tmp_path / "a")])
