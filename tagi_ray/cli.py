"""The `tagi` command: one subcommand per stage of the pipeline.

Ray jobs (teachers, meta-train, pipeline, eval, tune, serve, demo) parse their own arguments.
A user error (bad config, missing file, bad value) prints one line naming it and exits non-zero;
`--debug` (anywhere on the line, or TAGI_DEBUG=1) shows the traceback instead.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

from tagi_ray.config import ConfigError

# subcommands that are Ray jobs: `tagi NAME ARGS` runs the job's main(ARGS) in this process
JOB_HELP = {
    "teachers": "train one LoRA teacher per training task (Ray Train)  [jobs/train_teachers.py]",
    "baselines": "train the baselines: Tk-Instruct (full, LoRA) per format, held-out oracles  [jobs/baselines.py]",
    "meta-train": "meta-train the hypernetwork, both stages (Ray Train + DeepSpeed)  [jobs/meta_train.py]",
    "pipeline": "data -> teachers -> meta-training -> evaluation -> report, resumable  [jobs/pipeline.py]",
    "demo": "the embedded default end to end: pipeline, then Serve answers a held-out task  [jobs/demo.py]",
    "serve": "serve adapter generation + inference over HTTP (Ray Serve)  [serve/main.py]",
    "eval": "evaluate a checkpoint on held-out tasks; metrics.json + report.md  [jobs/evaluate.py]",
    "experiment": "TAGI, retrained ablations and baselines, Def and Def+2Pos, with CIs (Ray Tune grid)  [tune/experiment.py]",
    "tune": "Ray Tune sweep over loss weights, LoRA rank and lr (ASHA on validation tasks)  [tune/sweep.py]",
}


class UserError(Exception):
    """Something the user can fix (e.g. the cluster lacks what a command asks for)."""


# errors a user can fix: shown as one line (anything else too, with a hint to use --debug)
USER_ERRORS = (UserError, ConfigError, FileNotFoundError, NotADirectoryError, ValueError)


class OneLineParser(argparse.ArgumentParser):
    """argparse, with usage errors on one line (`prog: error: ... (see prog --help)`)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def job_main(name: str) -> Callable[[list[str]], int]:
    """The main() of a job subcommand (imported only when that subcommand runs)."""
    if name == "teachers":
        from tagi_ray.jobs.train_teachers import main
    elif name == "baselines":
        from tagi_ray.jobs.baselines import main
    elif name == "meta-train":
        from tagi_ray.jobs.meta_train import main
    elif name == "pipeline":
        from tagi_ray.jobs.pipeline import main
    elif name == "demo":
        from tagi_ray.jobs.demo import main
    elif name == "eval":
        from tagi_ray.jobs.evaluate import main
    elif name == "experiment":
        from tagi_ray.tune.experiment import main
    elif name == "tune":
        from tagi_ray.tune.sweep import main
    elif name == "serve":
        from tagi_ray.serve.main import main
    else:
        raise KeyError(name)
    return main


def cmd_data(args: argparse.Namespace) -> int:
    """Export SNI tasks to an Arrow/Parquet table, or write the embedded suite as SNI JSON."""
    from tagi_ray.data.builtin import write_suite
    from tagi_ray.data.export import export_sni_table

    if args.builtin:
        out = write_suite(args.out, seed=args.seed, n_instances=args.n_instances)
        print(f"wrote the builtin suite in SNI layout to {out}")
        if args.sni is None:
            return 0
    if args.sni is None:
        raise ValueError("give --sni DIR (export a table) or --builtin (write the embedded suite)")
    if not Path(args.sni).is_dir():
        raise NotADirectoryError(f"--sni {args.sni}: no such directory")
    summary = export_sni_table(args.sni, args.out, splits=args.split, max_instances=args.max_instances,
                               max_eval_instances=args.max_eval_instances, seed=args.seed)
    print(json.dumps(summary, indent=1))
    return 1 if summary["errors"] and args.strict else 0


def cmd_export_adapter(args: argparse.Namespace) -> int:
    """Generate the adapter for an instruction from a checkpoint; write it as a PEFT directory."""
    from tagi_ray.export_adapter import export_generated_adapter

    examples = []
    if args.examples:
        try:
            examples = json.loads(Path(args.examples).read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"--examples {args.examples}: not valid JSON ({exc})") from None
    out = export_generated_adapter(args.checkpoint, args.instruction, args.out, examples)
    print(f"wrote PEFT adapter to {out}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """The tables (with CIs and paired differences) rebuilt from stored predictions: one or more
    predictions.jsonl(.gz) files of `tagi eval`/`tagi experiment`; a later file's (format, method)
    rows replace an earlier file's. Writes report.md, metrics.json and the merged predictions."""
    from tagi_ray.evaluation import read_records, results_from_records
    from tagi_ray.jobs.evaluate import ORDER, ablation_section, split_ablation, write_report
    from tagi_ray.report import methods_table
    from tagi_ray.run_dir import RunDir

    records = read_records([Path(p) for p in args.predictions])
    main, ablations = split_ablation(records)
    results = results_from_records(main)
    appendix = []
    if ablations:
        results["ablations"] = results_from_records(ablations)["formats"]
        appendix = ablation_section(results["ablations"], "Ablations (TAGI − method against full TAGI at the "
                                                          "ablation budget)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = write_report(RunDir(out), results, records, title=args.title, appendix=appendix)
    print(methods_table(results, ORDER) + ("\n\n" + "\n".join(appendix) if appendix else "") + f"\nreport -> {report}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="tagi", description="TAGI on Ray: instructions -> LoRA adapters.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=OneLineParser)

    p = sub.add_parser("data", help="export SNI tasks to Arrow/Parquet, or write the embedded task suite")
    p.add_argument("--sni", default=None, help="SNI directory (tasks/ + train_tasks.txt/test_tasks.txt)")
    p.add_argument("--builtin", action="store_true", help="write the embedded suite (SNI JSON) to --out")
    p.add_argument("--out", required=True, help="table file (.parquet/.arrow) for --sni; directory for --builtin")
    p.add_argument("--split", nargs="+", default=["train", "test"], choices=["train", "test"])
    p.add_argument("--max-instances", type=int, default=100, help="per training task (seeded sample)")
    p.add_argument("--max-eval-instances", type=int, default=100, help="per test task (the first N)")
    p.add_argument("--n-instances", type=int, default=64, help="instances per builtin task")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--strict", action="store_true", help="exit 1 if any task file failed to load")
    p.set_defaults(func=cmd_data)

    for name, text in JOB_HELP.items():  # parsed by the job's own main(); listed for `tagi --help`
        sub.add_parser(name, help=text, add_help=False)
    p = sub.add_parser("export-adapter", help="write the adapter generated for an instruction as a PEFT directory")
    p.add_argument("--checkpoint", required=True, help="TAGI checkpoint directory")
    p.add_argument("--instruction", required=True, help="the task definition")
    p.add_argument("--examples", default=None, help='JSON file: [{"input": ..., "output": ...}, ...]')
    p.add_argument("--out", required=True, help="output PEFT adapter directory")
    p.set_defaults(func=cmd_export_adapter)
    p = sub.add_parser("report", help="rebuild the tables with CIs from stored predictions (predictions.jsonl[.gz])")
    p.add_argument("predictions", nargs="+", help="predictions.jsonl(.gz) files; later ones replace a (format, method)")
    p.add_argument("--out", required=True, help="directory for report.md, metrics.json, predictions.jsonl")
    p.add_argument("--title", default="tagi-ray evaluation (from stored predictions)")
    p.set_defaults(func=cmd_report)
    return parser


def _run(argv: list[str]) -> int:
    if argv and argv[0] in JOB_HELP:
        return job_main(argv[0])(argv[1:])
    args = build_parser().parse_args(argv)
    return args.func(args)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, KeyError):
        text = f"unknown {text}"
    return text[:600] + ("..." if len(text) > 600 else "")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv or os.environ.get("TAGI_DEBUG") == "1"
    argv = [a for a in argv if a != "--debug"]
    command = f"tagi {argv[0]}" if argv and not argv[0].startswith("-") else "tagi"
    try:
        return _run(argv)
    except KeyboardInterrupt:
        print(f"{command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001  (one line for the user; --debug for the traceback)
        if debug:
            raise
        kind = "config error" if isinstance(exc, ConfigError) else "error" if isinstance(exc, USER_ERRORS) \
            else f"error ({type(exc).__name__}; rerun with --debug for the traceback)"
        print(f"{command}: {kind}: {_one_line(exc)}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1


if __name__ == "__main__":
    sys.exit(main())
