"""Adapter generation cost: a cache miss (encode the instruction + run the hypernetwork) vs one
encoder pass over the same instruction; and a cache hit (content-hash id + LRU lookup).

    python bench/adapter_gen.py [--model t5-small]

For Def (69 tokens) and Def+2Pos (197 tokens) instructions, rank 32 on q/v, the default
hypernetwork. Goals: miss <= 1.5 x one encoder pass; hit <= 2 ms. Last line: JSON summary
(worst case).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from shapes import DEVICE, DTYPE, LENGTHS, MODELS, random_ids, summary, tagi_model, timed  # noqa: E402

from tagi_ray.lru_cache import LruCache  # noqa: E402
from tagi_ray.serving import adapter_id  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="t5-small", choices=list(MODELS))
    args = p.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    model = tagi_model(MODELS[args.model]())
    rows = [measure(model, fmt) for fmt in ("def", "def+2pos")]
    worst = max(r["ratio"] for r in rows)
    hit = max(r["hit_ms"] for r in rows)
    summary("adapter_gen", worst, "miss <= 1.5 x encoder pass, hit <= 2 ms", worst <= 1.5 and hit <= 2.0,
            model=args.model, rows=rows)


def measure(model, fmt: str) -> dict:
    ids, mask = random_ids(1, LENGTHS[fmt], seed=1)
    encode = timed(lambda: model.encode_instruction(ids, mask), repeat=20, warmup=3)
    miss = timed(lambda: model.generate_adapter(model.encode_instruction(ids, mask)), repeat=20, warmup=3)
    pooled = torch.randn(1, model.hypernet.in_mean.shape[0], device=DEVICE, dtype=DTYPE)
    hypernet_only = timed(lambda: model.hypernet(pooled), repeat=20, warmup=3)

    # a hit: what AdapterGenerator does for a known instruction (hash the request, LRU lookup)
    instruction = "Definition: " + "word " * LENGTHS[fmt]
    examples = [{"input": "alpha beta gamma " * 5, "output": "gamma"}] * 2
    cache = LruCache(256)
    with torch.no_grad():
        entry = model.generate_adapter(model.encode_instruction(ids, mask))
    for k in range(255):
        cache.put(f"other-{k}", entry)
    cache.put(adapter_id("ckpt", instruction, examples), entry)
    t0, n = time.perf_counter(), 2000
    for _ in range(n):
        assert cache.get(adapter_id("ckpt", instruction, examples)) is not None
    hit = (time.perf_counter() - t0) / n
    ratio = miss / encode
    print(f"{fmt:9s} instruction ({LENGTHS[fmt]} tokens), {len(model.targets)} modules, adapter "
          f"{entry.nbytes() / 1e6:.1f} MB: encoder pass {encode * 1e3:.2f} ms; miss (encode + hypernetwork) "
          f"{miss * 1e3:.2f} ms = {ratio:.2f}x (hypernetwork alone {hypernet_only * 1e3:.2f} ms); "
          f"hit {hit * 1e3:.4f} ms", flush=True)
    return {"format": fmt, "ratio": round(ratio, 3), "encoder_ms": round(encode * 1e3, 2),
            "miss_ms": round(miss * 1e3, 2), "hypernet_ms": round(hypernet_only * 1e3, 2), "hit_ms": round(hit * 1e3, 4)}


if __name__ == "__main__":
    main()
