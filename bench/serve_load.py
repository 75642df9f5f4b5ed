"""Bounded HTTP load on the Serve app over loopback, in three phases, with 2 InstanceInference
replicas and small queues (so overload is reachable on 2 cores):

  1. mixed: `--concurrency` clients for `--requests` requests or `--seconds`, over `--adapters`
     adapters: /v1/generate, /v1/completions, streamed completions and chat (SSE to [DONE]),
     and malformed requests (unknown adapter, bad fields, unsupported options, a bad upload);
  2. burst: `--burst` requests at once, beyond max_ongoing + max_queued: 503s with Retry-After;
  3. after: normal service again.

A fixed greedy request is sent before, between and after the phases; its output must never
change. Any 5xx other than the burst's 503s is a failure. Reported: req/s, p50/p99 of the mixed
phase's valid requests, instances per forward batch, the status codes of every phase.

    python bench/serve_load.py [--checkpoint DIR] [--requests 400] [--seconds 90] [--concurrency 16]
                               [--adapters 16] [--burst 160] [--batch-wait-s 0.01]

Without --checkpoint a seeded random tiny checkpoint (configs/tiny.yaml) is written to a temp dir:
latency and batching do not depend on trained weights. The last line is a JSON summary; the
exit status is 1 when a check fails.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

for _k, _v in {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", "DS_ACCELERATOR": "cpu"}.items():
    os.environ.setdefault(_k, _v)

CHAT_TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<assistant>{% endif %}")
INPUTS = ["the quick brown fox jumps over the lazy dog", "one two three", "alpha beta gamma delta"]


def tiny_checkpoint(out: Path) -> Path:
    """configs/tiny.yaml with a seeded random hypernetwork (answers vary by adapter and input)."""
    import torch

    from tagi_ray.checkpoint import save_checkpoint
    from tagi_ray.config import load_config
    from tagi_ray.training.base_warmup import build_model

    cfg = load_config(None)
    model, tokenizer = build_model(cfg)
    noise = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.hypernet.parameters():
            p.add_(torch.randn(p.shape, generator=noise) * 0.02)
    return save_checkpoint(model.eval(), tokenizer, cfg, out)


def read_sse(response: requests.Response) -> tuple[str, bool]:
    """(the streamed text, whether it ended with [DONE])."""
    text, done = [], False
    for line in response.iter_lines():
        if not line.startswith(b"data: "):
            continue
        data = line[6:]
        if data == b"[DONE]":
            done = True
            break
        choice = json.loads(data)["choices"][0]
        text.append(choice.get("text") or (choice.get("delta") or {}).get("content") or "")
    return "".join(text), done


class Load:
    """Request kinds of the mixed phase, status codes and latencies."""

    def __init__(self, url: str, ids: list[str], max_new: int):
        self.url, self.ids, self.max_new = url, ids, max_new
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.codes: collections.Counter = collections.Counter()
        self.errors: list[str] = []

    def one(self, i: int, session: requests.Session) -> None:
        aid, x = self.ids[i % len(self.ids)], INPUTS[i % len(INPUTS)]
        kind = ("generate", "completion", "stream", "chat_stream", "generate", "completion", "malformed")[i % 7]
        t0 = time.perf_counter()
        if kind == "generate":
            r = session.post(f"{self.url}/v1/generate", json={"adapter_id": aid, "inputs": [x],
                                                              "max_new_tokens": self.max_new}, timeout=300)
        elif kind == "completion":
            r = session.post(f"{self.url}/v1/completions", json={"model": aid, "prompt": x, "max_tokens": self.max_new,
                                                                 "temperature": 0.8, "seed": i}, timeout=300)
        elif kind in ("stream", "chat_stream"):
            path, body = (("/v1/completions", {"model": aid, "prompt": x}) if kind == "stream" else
                          ("/v1/chat/completions", {"model": aid, "messages": [{"role": "user", "content": x}]}))
            with session.post(f"{self.url}{path}", json={**body, "max_tokens": self.max_new, "stream": True},
                              stream=True, timeout=300) as r:
                if r.status_code == 200 and not read_sse(r)[1]:
                    self.errors.append(f"{kind}: stream without [DONE]")
        else:
            bad = [("/v1/generate", {"adapter_id": "tagi-unknown", "inputs": [x]}),
                   ("/v1/completions", {"model": aid, "prompt": x, "n": 3}),
                   ("/v1/generate", {"adapter_id": aid, "inputs": [x], "max_new_tokens": -4}),
                   ("/v1/chat/completions", {"model": aid, "messages": []}),
                   ("/v1/adapters/upload", b"not an archive")][(i // 7) % 5]
            if isinstance(bad[1], bytes):
                r = session.post(f"{self.url}{bad[0]}", data=bad[1], timeout=300)
            else:
                r = session.post(f"{self.url}{bad[0]}", json=bad[1], timeout=300)
        elapsed = time.perf_counter() - t0
        with self.lock:
            self.codes[r.status_code] += 1
            if kind != "malformed" and r.status_code == 200:
                self.latencies.append(elapsed)
            elif kind == "malformed" and not 400 <= r.status_code < 500:
                self.errors.append(f"malformed request got {r.status_code}")
            elif kind != "malformed":
                self.errors.append(f"{kind} got {r.status_code}: {r.text[:200]}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--requests", type=int, default=400)
    p.add_argument("--seconds", type=float, default=90.0)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--adapters", type=int, default=16)
    p.add_argument("--burst", type=int, default=160)
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--batch-wait-s", type=float, default=0.01, help="serve.batch_wait_timeout_s")
    args = p.parse_args()

    import ray
    from ray import serve

    from tagi_ray.ports import free_ports
    from tagi_ray.serve.main import start

    tmp = tempfile.TemporaryDirectory()
    ckpt = args.checkpoint or str(tiny_checkpoint(Path(tmp.name) / "ckpt"))
    port = free_ports()[0]
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False)
    limits = {"max_batch_size": 32, "batch_wait_timeout_s": args.batch_wait_s, "max_ongoing_requests": 8,
              "max_queued_requests": 16, "retry_after_s": 1.0, "chat_template": CHAT_TEMPLATE,
              "adapter_store": str(Path(tmp.name) / "store")}
    url = start(ckpt, "127.0.0.1", port, overrides=limits, num_cpus=0.25, num_replicas={"InstanceInference": 2})
    ids = [requests.post(f"{url}/v1/adapters", json={"instruction": f"Task {i}: copy the words of the input."},
                         timeout=120).json()["adapter_id"] for i in range(args.adapters)]
    probe_body = {"adapter_id": ids[0], "inputs": INPUTS, "max_new_tokens": args.max_new_tokens}

    def probe() -> list[str]:
        r = requests.post(f"{url}/v1/generate", json=probe_body, timeout=300)
        r.raise_for_status()
        return r.json()["outputs"]

    reference = probe()
    probes = [reference]

    def stats() -> dict[str, dict]:
        """Counters of every InstanceInference replica (each /v1/stats call reaches one)."""
        seen: dict[str, dict] = {}
        for _ in range(40):
            s = requests.get(f"{url}/v1/stats", timeout=60).json()["instance_inference"]
            seen[s["replica"]] = s
            if len(seen) == 2:
                break
        return seen

    # 1. mixed load, bounded by count and time
    load = Load(url, ids, args.max_new_tokens)
    before = stats()
    deadline = time.perf_counter() + args.seconds
    counter = iter(range(args.requests))

    def worker() -> None:
        session = requests.Session()
        for i in counter:
            if time.perf_counter() > deadline:
                return
            load.one(i, session)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(args.concurrency) as pool:
        for _ in range(args.concurrency):
            pool.submit(worker)
    wall = time.perf_counter() - t0
    after = stats()
    probes.append(probe())

    # 2. a burst beyond the queues
    burst_codes: collections.Counter = collections.Counter()
    retry_after: set[str] = set()

    def burst_one(i: int) -> None:
        """Every fourth request of the burst is streamed: a full queue must be a 503 for it too,
        and a stream that got its 200 must end with [DONE]."""
        kind = "stream" if i % 4 == 3 else "generate"
        if kind == "stream":
            r = requests.post(f"{url}/v1/completions", json={"model": ids[i % len(ids)], "prompt": INPUTS[i % 3],
                                                             "max_tokens": args.max_new_tokens, "stream": True},
                              stream=True, timeout=300)
            if r.status_code == 200 and not read_sse(r)[1]:
                with load.lock:
                    load.errors.append("burst stream: 200 without [DONE]")
        else:
            r = requests.post(f"{url}/v1/generate", json={"adapter_id": ids[i % len(ids)], "inputs": [INPUTS[i % 3]],
                                                          "max_new_tokens": args.max_new_tokens}, timeout=300)
        with load.lock:
            burst_codes[f"{kind} {r.status_code}"] += 1
            if r.status_code == 503:
                retry_after.add(r.headers.get("retry-after", "missing"))

    b0 = time.perf_counter()
    with ThreadPoolExecutor(args.burst) as pool:
        list(pool.map(burst_one, range(args.burst)))
    burst_wall = time.perf_counter() - b0

    # 3. normal service again
    time.sleep(2)
    after_codes: collections.Counter = collections.Counter()
    with ThreadPoolExecutor(4) as pool:
        for r in pool.map(lambda i: requests.post(f"{url}/v1/generate", json={
                "adapter_id": ids[i % len(ids)], "inputs": [INPUTS[i % 3]], "max_new_tokens": args.max_new_tokens},
                timeout=300), range(32)):
            after_codes[r.status_code] += 1
    probes.append(probe())
    serve.shutdown()
    ray.shutdown()

    q = statistics.quantiles(load.latencies, n=100)
    batches = sum(after[r]["forward_batches"] - before.get(r, {}).get("forward_batches", 0) for r in after)
    instances = sum(after[r]["instances"] - before.get(r, {}).get("instances", 0) for r in after)
    busy = [(after[r]["busy_s"] - before.get(r, {}).get("busy_s", 0.0)) / wall for r in after]
    five_xx = sum(n for code, n in (load.codes + after_codes).items() if code >= 500)
    five_xx += sum(n for key, n in burst_codes.items() if int(key.split()[1]) >= 500 and not key.endswith(" 503"))
    summary = {"name": "serve_load", "replicas": len(after), "adapters": args.adapters, "concurrency": args.concurrency,
               "mixed_requests": sum(load.codes.values()), "mixed_seconds": round(wall, 2),
               "req_per_s": round(sum(load.codes.values()) / wall, 1), "valid_ok": len(load.latencies),
               "p50_ms": round(q[49] * 1000, 1), "p99_ms": round(q[98] * 1000, 1),
               "instances_per_forward_batch": round(instances / max(batches, 1), 2),
               "replica_busy_share": [round(b, 2) for b in busy],
               "mixed_codes": dict(load.codes), "burst": args.burst, "burst_codes": dict(burst_codes),
               "burst_seconds": round(burst_wall, 2), "retry_after": sorted(retry_after),
               "after_codes": dict(after_codes), "probe_unchanged": all(x == reference for x in probes),
               "other_5xx": five_xx, "errors": load.errors[:5]}
    ok = (summary["probe_unchanged"] and five_xx == 0 and burst_codes.get("generate 503", 0) > 0 and not load.errors
          and after_codes == {200: 32} and "missing" not in retry_after)
    print(f"mixed: {summary['mixed_requests']} requests in {summary['mixed_seconds']} s ({summary['req_per_s']} "
          f"req/s; valid p50 {summary['p50_ms']} ms, p99 {summary['p99_ms']} ms; "
          f"{summary['instances_per_forward_batch']} instances per forward batch; replicas busy "
          f"{summary['replica_busy_share']} of the time); codes {dict(load.codes)}")
    print(f"burst of {args.burst}: {dict(burst_codes)} in {summary['burst_seconds']} s, Retry-After "
          f"{sorted(retry_after)}; after: {dict(after_codes)}; probe unchanged: {summary['probe_unchanged']}; "
          f"other 5xx: {five_xx} -> {'OK' if ok else 'FAILED'}")
    print(json.dumps(summary))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
