"""10,000 adapters in the shared AdapterStore, 1,000 resident: does a request's latency depend on
how many adapters a replica holds, and what does a non-resident adapter cost?

    .venv/bin/python bench/adapter_store.py [--adapters 10000] [--resident 1000] [--requests 300]

The tiny Llama of the test suite (`configs/tiny.yaml` shape, decoder-only, fusion on) generates
`--adapters` adapters from distinct instructions (the real AdapterFactory: instruction encoded,
hypernetwork run) and persists them in an AdapterStore on local disk. A request is what
InstanceInference does per instance, without HTTP: `ResidentAdapters.get(id)` + one greedy
generation (8 tokens) with that adapter (`generate_mixed`). Measured, sides interleaved:
- resident requests with 10 adapters resident vs with `--resident` resident (goal: p50 and p99
  within 10%);
- a non-resident request (the adapter loaded from the store first), and the load alone.
Prints a table and a one-line JSON summary.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from shapes import steady_allocator  # noqa: E402

from tagi_ray.adapter_store import AdapterStore, ResidentAdapters  # noqa: E402
from tagi_ray.config import load_config  # noqa: E402
from tagi_ray.models import build_tiny  # noqa: E402
from tagi_ray.serving import AdapterFactory, generate_mixed  # noqa: E402
from tagi_ray.tagi import TagiModel  # noqa: E402


def pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--adapters", type=int, default=10_000)
    p.add_argument("--resident", type=int, default=1_000)
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--store", default="", help="store directory (default: a temporary one)")
    args = p.parse_args()
    steady_allocator()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = load_config(overrides=["model.name=tiny-llama", "model.arch=llama"])
    bundle = build_tiny(cfg.model, "llama")
    model = TagiModel(bundle, cfg.lora, cfg.hypernet, cfg.instruction).eval()
    factory = AdapterFactory(model, bundle.tokenizer, cfg, "bench")
    tmp = tempfile.TemporaryDirectory()
    store = AdapterStore(args.store or tmp.name)

    start = time.time()
    ids = []
    with torch.no_grad():
        for i in range(args.adapters):
            instruction = f"Task {i}: return the {i % 7 + 1}th word of the sentence, then {['sort', 'reverse'][i % 2]} it."
            aid = factory.adapter_id(instruction)
            if aid not in store:
                store.put(factory.create(instruction), {"instruction": instruction})
            ids.append(aid)
    register_s = time.time() - start
    size = sum(f.stat().st_size for f in Path(store.root).rglob("*") if f.is_file())
    print(f"registered {len(ids)} adapters in {register_s:.0f} s ({size / len(ids) / 1024:.1f} KiB each on disk)")

    small, large = ResidentAdapters(store, 10), ResidentAdapters(store, args.resident)
    for aid in ids[:10]:
        small.get(aid)
    for aid in ids[:args.resident]:
        large.get(aid)
    assert len(large.cache) == args.resident

    def request(adapters: ResidentAdapters, aid: str) -> float:
        t = time.perf_counter()
        entry = adapters.get(aid)
        generate_mixed(model, bundle.tokenizer, cfg, [entry], ["red green blue yellow"], [8])
        return time.perf_counter() - t

    rng = random.Random(0)
    lat = {"10 resident": [], f"{args.resident} resident": [], "not resident": [], "load only": []}
    cold = iter(ids[args.resident:])
    with torch.no_grad():
        for aid in ids[:5]:
            request(small, aid), request(large, aid)  # warm-up
        for _ in range(args.requests):  # interleaved: a machine-speed drift hits every side
            lat["10 resident"].append(request(small, rng.choice(ids[:10])))
            lat[f"{args.resident} resident"].append(request(large, rng.choice(ids[:args.resident])))
            aid = next(cold)
            t = time.perf_counter()
            store.load(aid)
            lat["load only"].append(time.perf_counter() - t)
            lat["not resident"].append(request(large, aid))  # evicts one: resident set stays bounded
    assert len(large.cache) == args.resident

    print("| requests | p50 ms | p99 ms |\n|---|---|---|")
    for name, v in lat.items():
        print(f"| {name} | {1000 * statistics.median(v):.2f} | {1000 * pct(v, 0.99):.2f} |")
    a, b = lat["10 resident"], lat[f"{args.resident} resident"]
    p50, p99 = statistics.median(b) / statistics.median(a), pct(b, 0.99) / pct(a, 0.99)
    print(json.dumps({"name": "adapter_store", "adapters": len(ids), "resident": args.resident,
                      "p50_ratio": round(p50, 3), "p99_ratio": round(p99, 3), "goal": "both within 1 +- 0.10",
                      "pass": abs(p50 - 1) <= 0.10 and abs(p99 - 1) <= 0.10,
                      "non_resident_p50_ms": round(1000 * statistics.median(lat["not resident"]), 2),
                      "load_p50_ms": round(1000 * statistics.median(lat["load only"]), 2),
                      "register_s": round(register_s, 1), "bytes_per_adapter": size // len(ids)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
