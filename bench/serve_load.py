"""Bounded HTTP load on the Serve app over loopback: req/s and p50/p99 latency.

    python bench/serve_load.py [--checkpoint DIR] [--requests 400] [--seconds 60] [--concurrency 16]
                               [--adapters 8]

Without --checkpoint a random-init tiny checkpoint (configs/tiny.yaml) is written to a temp dir:
latency and batching do not depend on trained weights. Each request is one /v1/generate call
with one input for one of `--adapters` adapters (created first), so concurrent requests mix
adapters and the inference deployment batches them. Stops after `--requests` or `--seconds`,
whichever comes first. The last line is a JSON summary.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

for _k, _v in {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", "DS_ACCELERATOR": "cpu"}.items():
    os.environ.setdefault(_k, _v)


def tiny_checkpoint(out: Path) -> Path:
    from tagi_ray.checkpoint import save_checkpoint
    from tagi_ray.config import load_config
    from tagi_ray.training.base_warmup import build_model

    cfg = load_config(None)
    model, tokenizer = build_model(cfg)
    return save_checkpoint(model.eval(), tokenizer, cfg, out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--requests", type=int, default=400)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--adapters", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=16)
    args = p.parse_args()

    import ray
    from ray import serve

    from tagi_ray.serve.main import start

    tmp = tempfile.TemporaryDirectory()
    ckpt = args.checkpoint or str(tiny_checkpoint(Path(tmp.name) / "ckpt"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False)
    url = start(ckpt, "127.0.0.1", port, overrides={"max_batch_size": 32, "batch_wait_timeout_s": 0.01},
                num_cpus=0.25)
    ids = [requests.post(f"{url}/v1/adapters", json={"instruction": f"Task {i}: copy the words of the input."},
                         timeout=60).json()["adapter_id"] for i in range(args.adapters)]
    inputs = ["the quick brown fox jumps over the lazy dog", "one two three", "alpha beta gamma delta"]
    requests.post(f"{url}/v1/generate", json={"adapter_id": ids[0], "inputs": inputs}, timeout=60)  # warm-up

    latencies: list[float] = []
    lock = threading.Lock()
    deadline = time.perf_counter() + args.seconds
    counter = iter(range(args.requests))

    def worker() -> None:
        session = requests.Session()
        for i in counter:
            if time.perf_counter() > deadline:
                return
            body = {"adapter_id": ids[i % len(ids)], "inputs": [inputs[i % len(inputs)]],
                    "max_new_tokens": args.max_new_tokens}
            t0 = time.perf_counter()
            r = session.post(f"{url}/v1/generate", json=body, timeout=120)
            r.raise_for_status()
            with lock:
                latencies.append(time.perf_counter() - t0)

    before = requests.get(f"{url}/v1/stats", timeout=30).json()["instance_inference"]
    start_t = time.perf_counter()
    with ThreadPoolExecutor(args.concurrency) as pool:
        for _ in range(args.concurrency):
            pool.submit(worker)
    wall = time.perf_counter() - start_t
    after = requests.get(f"{url}/v1/stats", timeout=30).json()["instance_inference"]
    serve.shutdown()
    ray.shutdown()

    q = statistics.quantiles(latencies, n=100)
    batches = after["forward_batches"] - before["forward_batches"]
    summary = {"name": "serve_load", "requests": len(latencies), "seconds": round(wall, 2),
               "req_per_s": round(len(latencies) / wall, 1), "p50_ms": round(q[49] * 1000, 1),
               "p99_ms": round(q[98] * 1000, 1), "concurrency": args.concurrency, "adapters": args.adapters,
               "forward_batches": batches, "mean_batch": round(len(latencies) / max(batches, 1), 1),
               "max_new_tokens": args.max_new_tokens}
    print(f"{summary['requests']} requests in {summary['seconds']} s: {summary['req_per_s']} req/s, "
          f"p50 {summary['p50_ms']} ms, p99 {summary['p99_ms']} ms; {batches} forward batches "
          f"(mean {summary['mean_batch']} instances, {args.adapters} adapters mixed)")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
