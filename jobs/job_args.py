"""The arguments every job entry point shares: --config, --set, --out (and --address)."""
from __future__ import annotations

import argparse

from tagi_ray.cli import OneLineParser
from tagi_ray.config import TagiConfig, load_config
from tagi_ray.run_dir import RunDir


def job_parser(description: str, out_default: str | None = None, address: bool = True,
               prog: str | None = None) -> argparse.ArgumentParser:
    """A parser with the shared job arguments; callers add their own."""
    p = OneLineParser(prog=prog, description=description)
    p.add_argument("--config", default=None, help="YAML preset (default: configs/tiny.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.lr=1e-3 (repeatable)")
    p.add_argument("--out", default=out_default,
                   help="run directory" + (" (default: train.out_dir)" if out_default is None else " (resumable)"))
    if address:
        p.add_argument("--address", default="", help="Ray address (default: RAY_ADDRESS or a local cluster)")
    return p


def job_config(args: argparse.Namespace) -> tuple[TagiConfig, RunDir]:
    """The validated config (with --address applied) and the run directory of parsed job args."""
    cfg = load_config(args.config, args.overrides)
    cfg.ray.address = getattr(args, "address", "") or cfg.ray.address
    return cfg, RunDir.of(cfg, args.out)
