"""`tagi serve --checkpoint DIR`: run the Serve app on a checkpoint (blocks until Ctrl-C).

    tagi serve --checkpoint runs/tiny/hypernet [--host 127.0.0.1] [--port 8000] [--set max_batch_size=16]
"""
from __future__ import annotations

import argparse
import sys
import time

import yaml

from jobs.ray_session import connect
from serve.app import build_app, serve_limits

APP_NAME = "tagi"


def start(checkpoint: str, host: str | None = None, port: int | None = None, overrides: dict | None = None,
          num_cpus: float | None = None, address: str = "") -> str:
    """Deploy the app (non-blocking) on the connected/started Ray cluster; returns its base URL."""
    from ray import serve

    connect(address)
    limits = serve_limits(checkpoint, overrides)
    host, port = host or limits["host"], port or limits["port"]
    serve.start(http_options={"host": host, "port": port})
    args = {"checkpoint": checkpoint, "serve": overrides or {}}
    if num_cpus is not None:
        args["num_cpus"] = num_cpus
    serve.run(build_app(args), name=APP_NAME, route_prefix="/")
    return f"http://{host}:{port}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, help="TAGI checkpoint directory (e.g. runs/tiny/hypernet)")
    p.add_argument("--host", default=None, help="bind address (default: serve.host of the config, 127.0.0.1)")
    p.add_argument("--port", type=int, default=None)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of the serve: section, e.g. max_batch_size=16")
    p.add_argument("--num-cpus", type=float, default=None, help="CPUs per replica (default: Serve's)")
    p.add_argument("--address", default="", help="Ray address (default: RAY_ADDRESS or a local cluster)")
    args = p.parse_args(argv)
    overrides = {}
    for item in args.overrides:
        key, sep, value = item.partition("=")
        if not sep:
            p.error(f"--set {item!r}: expected KEY=VALUE")
        overrides[key.removeprefix("serve.")] = yaml.safe_load(value)
    url = start(args.checkpoint, args.host, args.port, overrides, args.num_cpus, args.address)
    print(f"tagi-ray serving {args.checkpoint} at {url}  (try: curl {url}/healthz; Ctrl-C stops)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        from ray import serve

        serve.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
