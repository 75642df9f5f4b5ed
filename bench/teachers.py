"""Packed teacher training (K tasks on one base, batched LoRA) vs one task at a time with PEFT.

    python bench/teachers.py [--k 16] [--steps 60] [--config configs/tiny.yaml]

Both sides do the whole job of making K teachers from a base on disk, with the same steps,
examples per task per step, rank, targets and optimizer:
- one at a time: per task, load the base, wrap it with PEFT, train, save the adapter;
- packed: load the base once, train the K tasks as rows of one LoraBank (task id per example),
  export K PEFT adapters.
Prints tasks/hour of each, the split of the one-at-a-time time (load/wrap vs train vs save),
and the ratio; the last line is a JSON summary (goal: packed >= 4x one-at-a-time on CPU).

Also the batching bound (what batching alone can give where compute, not overhead, is the
limit): K separate training steps of one task each (a 1-row LoraBank, its own examples) divided
by one packed step of the same K x examples (a K-row bank), interleaved and repeated; the
packed training loop's speed-up over the PEFT loop is printed as a fraction of that bound.
"""
from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import torch

from tagi_ray.config import load_config
from tagi_ray.data.builtin import write_suite
from tagi_ray.data.export import build_table
from tagi_ray.adapters import export_peft
from tagi_ray.models.base import load_base, load_pretrained, save_base
from tagi_ray.tagi import TagiModel
from tagi_ray.training.examples import table_examples
from tagi_ray.training.steps import make_batch
from tagi_ray.lora import LoraBank
from tagi_ray.training.teachers import per_task_loss, split_task_examples, train_pack


def peft_one_task(base_dir: Path, model: TagiModel, tokenizer, cfg, task, steps: int, seed: int, out: Path,
                  clock: dict) -> float:
    """Classic per-task LoRA job: load the base, wrap it with PEFT, train, save; returns final loss."""
    import peft
    from transformers import AutoModelForSeq2SeqLM

    t0 = time.perf_counter()
    base = AutoModelForSeq2SeqLM.from_pretrained(base_dir)
    lcfg = peft.LoraConfig(r=cfg.lora.rank, lora_alpha=cfg.lora.alpha, lora_dropout=0.0,
                           target_modules=[t.name for t in model.targets], task_type="SEQ_2_SEQ_LM")
    pm = peft.get_peft_model(base, lcfg)
    t1 = time.perf_counter()
    opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=cfg.teachers.lr, weight_decay=0.0)
    rng = random.Random(seed)
    loss = torch.tensor(0.0)
    for _ in range(steps):
        examples = [rng.choice(task.train) for _ in range(cfg.teachers.batch_per_task)]
        b = make_batch(model, tokenizer, examples, cfg.model, with_prompt=False)
        loss = pm(input_ids=b.input_ids, attention_mask=b.attention_mask, labels=b.labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    t2 = time.perf_counter()
    pm.save_pretrained(out / task.name)
    t3 = time.perf_counter()
    for key, dt in (("load", t1 - t0), ("train", t2 - t1), ("save", t3 - t2)):
        clock[key] = clock.get(key, 0.0) + dt
    return float(loss)


def training_step(model: TagiModel, tokenizer, cfg, bank: LoraBank, tasks, rng: random.Random) -> float:
    """Seconds of one packed-teacher step (forward, backward, AdamW) over `tasks` (bank row i = task i)."""
    opt = torch.optim.AdamW(bank.parameters(), lr=cfg.teachers.lr, weight_decay=0.0)
    examples, ids = [], []
    for i, t in enumerate(tasks):
        examples += [rng.choice(t.train) for _ in range(cfg.teachers.batch_per_task)]
        ids += [i] * cfg.teachers.batch_per_task
    t0 = time.perf_counter()
    batch = make_batch(model, tokenizer, examples, cfg.model, with_prompt=False, task_ids=ids)
    logits, labels, at = model.label_logits(batch.input_ids, batch.attention_mask, batch.labels, bank.weights(),
                                            batch.task_ids, fuse=False)
    loss = per_task_loss(logits, labels, at, batch.task_ids, len(tasks)).sum()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return time.perf_counter() - t0


def batching_bound(model: TagiModel, tokenizer, cfg, tasks, reps: int = 10) -> tuple[float, float, float]:
    """(bound, K separate steps s, one packed step s): medians over interleaved repetitions."""
    import statistics

    rng = random.Random(0)
    singles = [LoraBank(model.targets, 1, cfg.lora.rank, seed=i) for i in range(len(tasks))]
    packed = LoraBank(model.targets, len(tasks), cfg.lora.rank, seed=0)
    sep, pk = [], []
    for _ in range(reps):
        sep.append(sum(training_step(model, tokenizer, cfg, b, [t], rng) for b, t in zip(singles, tasks)))
        pk.append(training_step(model, tokenizer, cfg, packed, tasks, rng))
    s, p = statistics.median(sep), statistics.median(pk)
    return s / p, s, p


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=None)
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    cfg.teachers.steps = args.steps
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        table, _ = build_table(write_suite(tmp / "sni", seed=0), ("train",), 64, 32, 0)
        data = split_task_examples(table_examples(table, 0), cfg.teachers.held_back, 0)
        tasks = [data[name] for name in sorted(data)[:args.k]]
        save_base(load_base(cfg.model), tmp / "base")
        warm = load_pretrained(str(tmp / "base"))
        train_pack(TagiModel(warm, cfg.lora, cfg.hypernet), warm.tokenizer, cfg, tasks[:2], seed=0)  # warm-up

        start = time.perf_counter()
        bundle = load_pretrained(str(tmp / "base"))
        model = TagiModel(bundle, cfg.lora, cfg.hypernet)
        result = train_pack(model, bundle.tokenizer, cfg, tasks, seed=0)
        weights = result.bank.weights().detach()
        for i, t in enumerate(tasks):
            export_peft(weights.select(i), model.targets, cfg.lora.rank, cfg.lora.alpha, model.arch,
                        str(tmp / "base"), tmp / "packed" / t.name)
        packed_s = time.perf_counter() - start

        clock: dict[str, float] = {}
        start = time.perf_counter()
        seq_loss = [peft_one_task(tmp / "base", model, bundle.tokenizer, cfg, t, args.steps, i, tmp / "peft", clock)
                    for i, t in enumerate(tasks)]
        seq_s = time.perf_counter() - start

        bound, sep_s, pk_s = batching_bound(model, bundle.tokenizer, cfg, tasks)
    packed_rate, seq_rate = 3600 * len(tasks) / packed_s, 3600 * len(tasks) / seq_s
    print(f"model {cfg.model.name} ({sum(p.numel() for p in bundle.model.parameters()) / 1e6:.2f}M params), "
          f"K={len(tasks)}, {args.steps} steps x {cfg.teachers.batch_per_task} examples per task, rank {cfg.lora.rank}")
    print(f"packed (batched LoRA bank): {packed_s:6.1f} s  {packed_rate:8.0f} tasks/h  "
          f"mean final loss {sum(result.final_loss.values()) / len(result.final_loss):.3f}")
    print(f"one at a time (PEFT):       {seq_s:6.1f} s  {seq_rate:8.0f} tasks/h  "
          f"mean final loss {sum(seq_loss) / len(seq_loss):.3f}  "
          f"(load+wrap {clock['load']:.1f} s, train {clock['train']:.1f} s, save {clock['save']:.1f} s)")
    print(f"training loop alone: packed {result.seconds:.1f} s vs one at a time {clock['train']:.1f} s "
          f"= {clock['train'] / result.seconds:.2f}x")
    loop_ratio = clock["train"] / result.seconds
    print(f"batching bound: {len(tasks)} separate steps {1000 * sep_s:.1f} ms / one packed step {1000 * pk_s:.1f} ms "
          f"= {bound:.2f}x; the packed loop's {loop_ratio:.2f}x over PEFT is {loop_ratio / bound:.2f} of it")
    ratio = packed_rate / seq_rate
    print(json.dumps({"name": "teachers_packed_vs_peft", "ratio": round(ratio, 2), "goal": 4.0, "pass": ratio >= 4.0,
                      "k": len(tasks), "packed_tasks_per_hour": round(packed_rate), "peft_tasks_per_hour": round(seq_rate),
                      "batching_bound": round(bound, 2), "loop_ratio": round(loop_ratio, 2),
                      "fraction_of_bound": round(loop_ratio / bound, 2), "fraction_goal": 0.9}))


if __name__ == "__main__":
    main()
