"""Multi-adapter batches: B requests with B distinct adapters vs the same batch with one adapter.

    python bench/hetero_batch.py [--model t5-small] [--sizes 8 32] [--new-tokens 16]

The batched-LoRA mechanism gathers each example's adapter and applies it with batched matmuls
(distinct adapters) or takes the exact fast path (one adapter). Both sides run the same inputs
(i=44 tokens, with the fused instruction states) for a teacher-forced forward and a greedy decode
of --new-tokens tokens, the two sides' calls interleaved. Goal: distinct-adapter throughput
>= 0.9 x single-adapter throughput. Last line: JSON summary (worst case).
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from shapes import DEVICE, LENGTHS, MODELS, random_ids, summary, tagi_model, timed_interleaved  # noqa: E402

from tagi_ray.tagi import Instruction  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="t5-small", choices=list(MODELS))
    p.add_argument("--sizes", type=int, nargs="+", default=[8, 32])
    p.add_argument("--new-tokens", type=int, default=16)
    args = p.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    model = tagi_model(MODELS[args.model]())
    model.eos_id = -1  # decode exactly new_tokens on both sides
    rows = []
    for b in args.sizes:
        instr_ids, instr_mask = random_ids(b, LENGTHS["def"], seed=1)
        with torch.no_grad():
            instr = model.encode_instruction(instr_ids, instr_mask)
            adapters = model.generate_adapter(Instruction(instr.states, instr.mask, torch.randn_like(instr.pooled),
                                                          instr.past))  # B distinct adapters
        ids, mask = random_ids(b, LENGTHS["instance"], seed=2)
        labels, _ = random_ids(b, args.new_tokens, seed=3)
        distinct, single = torch.arange(b, device=DEVICE), torch.zeros(b, dtype=torch.long, device=DEVICE)
        row = {"batch": b}
        for kind, fn in {
            "forward": lambda index: model(ids, mask, labels, adapters, index, instr),
            "decode": lambda index: model.generate(ids, mask, adapters, index, instr, max_new_tokens=args.new_tokens),
        }.items():
            t = timed_interleaved({"single": lambda: fn(single), "distinct": lambda: fn(distinct)}, repeat=5)
            t_single, t_distinct = t["single"], t["distinct"]
            row[kind] = round(t_single / t_distinct, 3)
            row[f"{kind}_single_ms"], row[f"{kind}_distinct_ms"] = round(t_single * 1e3, 1), round(t_distinct * 1e3, 1)
            print(f"B={b:3d} {kind:8s}: one adapter {t_single * 1e3:7.1f} ms, {b} adapters {t_distinct * 1e3:7.1f} ms "
                  f"-> {row[kind]:.3f} of single-adapter throughput", flush=True)
        rows.append(row)
    worst = min(min(r["forward"], r["decode"]) for r in rows)
    summary("hetero_batch", worst, "distinct-adapter throughput >= 0.9 x single-adapter", worst >= 0.9,
            model=args.model, rows=rows)


if __name__ == "__main__":
    main()
