"""Meta-training speed-ups, each measured before/after in one run (in-process, no Ray).

    .venv/bin/python bench/meta_speedups.py [--config configs/smollm2-sni.yaml] [--steps 4]

On the configured base and tasks (default: SmolLM2-135M on the real SNI training tasks of
../shared/data/sni, Def+2Pos), with a teacher bank of the configured rank:
1. the LM head at the scored positions only (`TagiModel.label_logits`) vs over every position;
2. a meta step (forward + backward of L_ce + λ1·L_kl + λ2·L_ins) with instructions encoded at
   every step vs once per run (`InstructionCache`), and with live teachers vs their stored
   top-k logits (`teacher_logits.py`), plus the one-time cost of each cache;
3. teacher evaluation of a pack's held-back instances in one batch vs in chunks.
Prints one table; times are medians over `--steps` repetitions after one warm-up.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shapes import summary  # noqa: E402  (also keeps freed blocks in the process: steady timing)

from tagi_ray.config import load_config
from tagi_ray.data.prompts import parse_prompt_format
from tagi_ray.data.tables import select_split
from tagi_ray.lora import LoraWeights
from tagi_ray.losses import ce_loss
from tagi_ray.models.base import load_base
from tagi_ray.run_dir import RunDir
from tagi_ray.stages import ensure_data
from tagi_ray.tagi import TagiModel
from tagi_ray.training.examples import table_examples
from tagi_ray.training.meta import MetaObjective
from tagi_ray.instruction_cache import InstructionCache
from tagi_ray.training.steps import make_batch
from tagi_ray.training.teacher_logits import compute_topk, load_topk, save_topk
from tagi_ray.training.teacher_store import TeacherStore
from tagi_ray.training.teachers import TaskData, evaluate_pack, held_back_loss


def timed(fn, steps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="configs/smollm2-sni.yaml")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--tasks", type=int, default=8, help="training tasks in the bank")
    p.add_argument("--batch", type=int, default=8, help="examples per meta step")
    args = p.parse_args()
    torch.manual_seed(0)
    cfg = load_config(args.config)
    work = Path(tempfile.mkdtemp(prefix="tagi-bench-"))
    table = ensure_data(cfg, RunDir(work))
    bundle = load_base(cfg.model)
    model = TagiModel(bundle, cfg.lora, cfg.hypernet, cfg.instruction)
    tok = bundle.tokenizer
    train = table_examples(select_split(table, "train"), parse_prompt_format(cfg.data.prompt))
    tasks = sorted({e.task for e in train})[:args.tasks]
    rows = {t: i for i, t in enumerate(tasks)}
    data = [e for e in train if e.task in rows]
    g = torch.Generator().manual_seed(1)
    bank = LoraWeights({t.name: torch.randn(len(tasks), cfg.lora.rank, t.in_features, generator=g) * 0.02
                        for t in model.targets},
                       {t.name: torch.randn(len(tasks), t.out_features, cfg.lora.rank, generator=g) * 0.02
                        for t in model.targets})
    batch = [data[(i * 7919) % len(data)] for i in range(args.batch)]  # mixed tasks
    lines = [f"base {cfg.model.name}, {args.tasks} tasks, batch {args.batch}, prompt {cfg.data.prompt}, "
             f"{torch.get_num_threads()} threads"]

    # 1. LM head over every position vs the scored ones
    b = make_batch(model, tok, batch, cfg.model, with_prompt=False, task_ids=[rows[e.task] for e in batch])

    def full_head():
        logits, labels = model(b.input_ids, b.attention_mask, b.labels, bank, b.task_ids, fuse=False)
        ce_loss(logits, labels)

    def label_head():
        logits, labels, _ = model.label_logits(b.input_ids, b.attention_mask, b.labels, bank, b.task_ids, fuse=False)
        ce_loss(logits, labels)

    with torch.no_grad():
        t_full, t_label = timed(full_head, args.steps), timed(label_head, args.steps)
    lines.append(f"teacher forward, LM head at every position -> scored only: {t_full * 1e3:.0f} -> "
                 f"{t_label * 1e3:.0f} ms ({t_full / t_label:.2f}x)")

    # 2. meta steps
    def step(objective):
        def run():
            out = objective(batch)
            out["loss"].backward()
            model.zero_grad(set_to_none=True)
        return run

    t_live = timed(step(MetaObjective(model, tok, cfg, cfg.loss, TeacherStore.in_memory(bank, rows))), args.steps)
    cache = InstructionCache(model, tok, cfg.model.max_instruction_length)
    t0 = time.perf_counter()
    cache.encode(sorted({e.instruction for e in data}))
    t_encode = time.perf_counter() - t0
    t_cached = timed(step(MetaObjective(model, tok, cfg, cfg.loss, TeacherStore.in_memory(bank, rows), cache)), args.steps)
    t0 = time.perf_counter()
    store_dir = work / "teachers"
    for t, i in rows.items():
        mine = [e for e in data if e.task == t]
        (store_dir / t).mkdir(parents=True)
        save_topk(store_dir / t, cfg, [e.id for e in mine], *compute_topk(model, tok, cfg, mine, bank.select([i])))
    t_store = time.perf_counter() - t0
    size = sum(f.stat().st_size for f in store_dir.rglob("*.safetensors"))
    store = load_topk(store_dir, tasks, cfg)
    t_topk = timed(step(MetaObjective(model, tok, cfg, cfg.loss, TeacherStore.in_memory(bank, rows, store), cache)), args.steps)
    lines += [f"meta step, instructions encoded every step, live teachers: {t_live:.2f} s",
              f"meta step, instructions encoded once: {t_cached:.2f} s ({t_live / t_cached:.2f}x; one-time "
              f"encoding of {len(cache)} instructions {t_encode:.1f} s)",
              f"meta step, + stored top-{cfg.teachers.logits_topk} teacher logits: {t_topk:.2f} s "
              f"({t_live / t_topk:.2f}x vs before; one-time {t_store:.1f} s for {len(data)} instances, "
              f"{size / 2**20:.1f} MiB)"]

    # 3. teacher evaluation: one batch vs chunks
    packs = [TaskData(t, [], [e for e in data if e.task == t][:cfg.teachers.held_back]) for t in tasks]
    n = sum(len(t.held_back) for t in packs)
    sub = bank.select(list(range(len(packs))))
    chunk = min(16, cfg.teachers.eval_batch_size)
    with torch.no_grad():
        for size_ in (n, chunk):
            cfg.teachers.eval_batch_size = size_
            t0 = time.perf_counter()
            evaluate_pack(model, tok, cfg, packs, sub)
            held_back_loss(model, tok, cfg, packs, sub)
            lines.append(f"teacher evaluation, pack of {len(packs)} ({n} held-back instances), batches of {size_}: "
                         f"{time.perf_counter() - t0:.1f} s")
    every = make_batch(model, tok, [e for t in packs for e in t.held_back], cfg.model, with_prompt=False)
    vocab = model.base.config.vocab_size
    scored = int((every.labels != -100).sum())
    lines.append(f"largest logits tensor of the held-back loss: one batch over every position "
                 f"{every.input_ids.numel() * vocab * 4 / 2**20:.0f} MiB -> chunks of {chunk}, scored positions only "
                 f"{scored * chunk / n * vocab * 4 / 2**20:.0f} MiB")
    print("\n".join(lines))
    summary("meta_speedups", t_live / t_topk, "meta step faster with both caches (no goal set)", t_topk < t_live,
            head_ratio=round(t_full / t_label, 3), instruction_cache_ratio=round(t_live / t_cached, 3))


if __name__ == "__main__":
    main()
