"""`tagi serve --checkpoint DIR`: run the Serve app on a checkpoint (blocks until Ctrl-C / SIGTERM).

    tagi serve --checkpoint runs/tiny/hypernet [--host 127.0.0.1] [--port 8000] [--set max_batch_size=16]

CPUs per replica are sized to the cluster it starts on (`app.replica_cpus`; `--num-cpus`
overrides). If the app is not running within `serve.start_timeout_s` (e.g. its replicas do not
fit the cluster), it is deleted and the command fails with one line saying what is missing.
"""
from __future__ import annotations

import signal
import sys
import time

import yaml

from tagi_ray.checkpoint import check_checkpoint
from tagi_ray.cli import OneLineParser, UserError
from tagi_ray.edge.cluster import connect, resources, stop
from tagi_ray.serve.app import DEPLOYMENTS, build_app, replica_cpus, replica_gpus, serve_limits

APP_NAME = "tagi"


class ServeStartError(UserError):
    """The app did not become healthy in time; the message names what is missing."""


def _not_running(app: str, cpus: dict[str, float]) -> str:
    """One line: which deployments have no running replica, what each replica asks, what is free."""
    from ray import serve

    status = serve.status().applications.get(app)
    waiting = []
    for name, dep in (status.deployments.items() if status else []):
        if dep.status != "HEALTHY":
            running = dep.replica_states.get("RUNNING", 0)
            waiting.append(f"{name} ({running} replica(s) running, each needs {{'CPU': {cpus.get(name, 1.0):g}}})")
    free, total = resources(available=True), resources()
    return (f"{', '.join(waiting) or 'the app'} not running; the cluster has {free.get('CPU', 0.0):g} of "
            f"{total.get('CPU', 0.0):g} CPUs free (lower --num-cpus, or add nodes)")


def wait_until_running(app: str, timeout_s: float, cpus: dict[str, float]) -> None:
    """Poll Serve until `app` is RUNNING; on failure or after `timeout_s`, delete it and raise."""
    from ray import serve

    deadline = time.monotonic() + timeout_s
    while True:
        status = serve.status().applications.get(app)
        if status is not None and status.status == "RUNNING":
            return
        if status is not None and status.status == "DEPLOY_FAILED":
            serve.delete(app)
            raise ServeStartError(f"Serve app {app!r} failed to deploy: {' '.join(status.message.split())[:500]}")
        if time.monotonic() > deadline:
            message = _not_running(app, cpus)
            serve.delete(app, _blocking=False)
            raise ServeStartError(f"Serve app {app!r} not running after {timeout_s:g} s: {message}")
        time.sleep(0.5)


def start(checkpoint: str, host: str | None = None, port: int | None = None, overrides: dict | None = None,
          num_cpus: float | None = None, address: str = "", app_name: str = APP_NAME, route_prefix: str = "/",
          num_replicas: dict[str, int] | None = None) -> str:
    """Deploy the app on the connected/started Ray cluster and wait until it runs; returns its
    base URL. `num_cpus`: CPUs per replica of every deployment (default: sized to the cluster);
    `num_replicas`: {deployment name: replicas} (default 1 each)."""
    from ray import serve
    from ray.serve.api import RunTarget

    check_checkpoint(checkpoint)
    connect(address)
    limits = serve_limits(checkpoint, overrides)
    host, port = host or limits["host"], port or limits["port"]
    cluster = resources()
    cpus = {name: num_cpus for name in DEPLOYMENTS} if num_cpus is not None else replica_cpus(cluster.get("CPU", 1.0))
    serve.start(http_options={"host": host, "port": port})
    app = build_app({"checkpoint": checkpoint, "serve": overrides or {}, "num_cpus": cpus,
                     "num_gpus": replica_gpus(cluster.get("GPU", 0.0)), "num_replicas": num_replicas or {}})
    serve.run_many([RunTarget(app, name=app_name, route_prefix=route_prefix)],
                   wait_for_ingress_deployment_creation=False, wait_for_applications_running=False)
    wait_until_running(app_name, limits["start_timeout_s"], cpus)
    return f"http://{host}:{port}"


def _stop_on_sigterm(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(prog="tagi serve", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, help="TAGI checkpoint directory (e.g. runs/tiny/hypernet)")
    p.add_argument("--host", default=None, help="bind address (default: serve.host of the config, 127.0.0.1)")
    p.add_argument("--port", type=int, default=None)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of the serve: section, e.g. max_batch_size=16")
    p.add_argument("--num-cpus", type=float, default=None, help="CPUs per replica (default: sized to the cluster)")
    p.add_argument("--address", default="", help="Ray address (default: RAY_ADDRESS or a local cluster)")
    args = p.parse_args(argv)
    overrides = {}
    for item in args.overrides:
        key, sep, value = item.partition("=")
        if not sep:
            p.error(f"--set {item!r}: expected KEY=VALUE")
        overrides[key.removeprefix("serve.")] = yaml.safe_load(value)
    try:
        check_checkpoint(args.checkpoint)  # before a cluster starts
        connect(args.address)
        signal.signal(signal.SIGTERM, _stop_on_sigterm)  # after ray.init (it installs its own): stop cleanly
        url = start(args.checkpoint, args.host, args.port, overrides, args.num_cpus, args.address)
        print(f"tagi-ray serving {args.checkpoint} at {url}  (try: curl {url}/healthz; Ctrl-C stops)", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        stop(APP_NAME)
    return 0


if __name__ == "__main__":
    sys.exit(main())
