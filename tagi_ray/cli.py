"""The `tagi` command: one subcommand per stage of the pipeline.

Ray jobs (teachers, meta-train, pipeline, eval, tune, serve, demo) parse their own arguments;
config errors exit with status 2 and name the key and value.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tagi_ray.config import ConfigError

# subcommands that are Ray jobs: `tagi NAME ARGS` runs `jobs/<module>.py ARGS` in this process
JOB_COMMANDS = {
    "teachers": ("jobs.train_teachers", "train one LoRA teacher per training task (Ray Train)"),
    "meta-train": ("jobs.meta_train", "meta-train the hypernetwork, both stages (Ray Train + DeepSpeed)"),
    "pipeline": ("jobs.pipeline", "data -> teachers -> meta-training -> evaluation -> report, resumable"),
    "demo": ("jobs.demo", "the embedded default end to end: pipeline, then Serve answers a held-out task"),
    "serve": ("serve.main", "serve adapter generation + inference over HTTP (Ray Serve)"),
    "eval": ("jobs.evaluate", "evaluate a checkpoint on held-out tasks; metrics.json + report.md"),
    "tune": ("tune.sweep", "Ray Tune sweep over loss weights, LoRA rank and lr (ASHA on validation tasks)"),
}


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="YAML preset (default: configs/tiny.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.lr=1e-3 (repeatable)")


def cmd_data(args: argparse.Namespace) -> int:
    """Export SNI tasks to an Arrow/Parquet table, or write the embedded suite as SNI JSON."""
    from tagi_ray.data.export import export_sni_table
    from tagi_ray.data.builtin import write_suite

    if args.builtin:
        out = write_suite(args.out, seed=args.seed, n_instances=args.n_instances)
        print(f"wrote the builtin suite in SNI layout to {out}")
        if args.sni is None:
            return 0
    if args.sni is None:
        print("tagi data: give --sni DIR (export a table) or --builtin (write the embedded suite)", file=sys.stderr)
        return 2
    summary = export_sni_table(args.sni, args.out, splits=args.split, max_instances=args.max_instances,
                               max_eval_instances=args.max_eval_instances, seed=args.seed)
    print(json.dumps(summary, indent=1))
    return 1 if summary["errors"] and args.strict else 0


def cmd_export_adapter(args: argparse.Namespace) -> int:
    """Generate the adapter for an instruction from a checkpoint; write it as a PEFT directory."""
    from tagi_ray.export_adapter import export_generated_adapter

    examples = json.loads(Path(args.examples).read_text()) if args.examples else []
    out = export_generated_adapter(args.checkpoint, args.instruction, args.out, examples)
    print(f"wrote PEFT adapter to {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tagi", description="TAGI on Ray: instructions -> LoRA adapters.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

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

    for name, (module, text) in JOB_COMMANDS.items():
        # parsed by the job's own main(); listed here for `tagi --help`
        sub.add_parser(name, help=f"{text} (= python {module.replace('.', '/')}.py)", add_help=False)
    p = sub.add_parser("export-adapter", help="write the adapter generated for an instruction as a PEFT directory")
    p.add_argument("--checkpoint", required=True, help="TAGI checkpoint directory")
    p.add_argument("--instruction", required=True, help="the task definition")
    p.add_argument("--examples", default=None, help='JSON file: [{"input": ..., "output": ...}, ...]')
    p.add_argument("--out", required=True, help="output PEFT adapter directory")
    p.set_defaults(func=cmd_export_adapter)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in JOB_COMMANDS:
        import importlib

        module = importlib.import_module(JOB_COMMANDS[argv[0]][0])
        try:
            return module.main(argv[1:])
        except ConfigError as exc:
            print(f"config error: {exc}", file=sys.stderr)
            return 2
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
