"""One teacher worker in this process (no Ray): its resident set after every pack, before and
after the heap trim, and its peak. Separates what a pack's working set costs from anything that
accumulates across packs.

    python bench/teacher_rss.py --run runs/fleet/n756-k16 [--rank 0 --world 2] [--steps 10]

`--run` is a finished `bench/fleet.py` run directory (its `data/tasks.parquet` and `base/`);
the teachers are written to a temporary directory. One JSON line per pack, then a summary.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import psutil
import torch

from tagi_ray.config import load_config
from tagi_ray.data.tables import read_table, select_split
from tagi_ray.training import teachers
from tagi_ray.training.worker import WorkerContext

REPO = Path(__file__).resolve().parent.parent


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", required=True)
    p.add_argument("--rank", type=int, default=0)
    p.add_argument("--world", type=int, default=2)
    p.add_argument("--steps", type=int, default=10, help="teachers.steps (the working set does not depend on it)")
    p.add_argument("--pack-size", type=int, default=16)
    args = p.parse_args()
    run = Path(args.run)
    cfg = load_config(REPO / "configs" / "tiny.yaml", [f"teachers.steps={args.steps}",
                                                       f"teachers.pack_size={args.pack_size}"])
    lengths = teachers.task_lengths(select_split(read_table(run / "data" / "tasks.parquet"), "train"))
    proc, rows = psutil.Process(), []
    trim = teachers.release_freed_memory

    def by_mapping() -> dict[str, int]:
        """Resident MB by kind of mapping: glibc's main heap, anonymous (thread arenas, mmapped
        blocks, other allocators), file-backed (libraries, memory-mapped files)."""
        out = {"heap_mb": 0.0, "anon_mb": 0.0, "file_mb": 0.0}
        for m in proc.memory_maps(grouped=False):
            kind = "heap_mb" if m.path == "[heap]" else "file_mb" if m.path.startswith("/") else "anon_mb"
            out[kind] += m.rss / 2**20
        return {k: round(v) for k, v in out.items()}

    def measured_trim() -> bool:  # called by the worker loop after each pack
        before = proc.memory_info().rss / 2**20
        done = trim()
        row = {"pack": len(rows) + 1, "rss_before_trim_mb": round(before),
               "rss_after_trim_mb": round(proc.memory_info().rss / 2**20),
               "peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024), **by_mapping()}
        rows.append(row)
        print(json.dumps(row), flush=True)
        return done

    teachers.release_freed_memory = measured_trim
    torch.set_num_threads(1)
    start = time.time()
    with tempfile.TemporaryDirectory() as out:
        config = {"cfg": cfg.to_dict(), "table_path": str(run / "data" / "tasks.parquet"), "lengths": lengths,
                  "base": str(run / "base"), "teachers_dir": out, "pending": sorted(lengths)}
        teachers.teacher_worker_loop(config, WorkerContext(args.rank, args.world, torch.device("cpu"),
                                                           lambda metrics, checkpoint_dir=None: None))
    after = [r["rss_after_trim_mb"] for r in rows]
    before = [r["rss_before_trim_mb"] for r in rows]
    print(json.dumps({"name": "teacher_rss", "tasks": len(lengths), "packs": len(rows),
                      "after_trim_mb": [min(after), max(after)], "before_trim_mb": [min(before), max(before)],
                      "peak_mb": rows[-1]["peak_mb"] if rows else None,
                      "seconds": round(time.time() - start, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
