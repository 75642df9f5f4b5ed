"""Teacher LoRAs, packed: K tasks train together on one frozen base as rows of a LoraBank.

Every step draws `batch_per_task` examples from each task of the pack; `task_ids` route each
example to its own bank row through the batched-LoRA gather, and each task's loss is tracked
separately, so a task whose loss turns NaN is dropped (recorded as failed) without stopping
the others. After training, each task is scored on its held-back training instances (never
trained on) against the base without adapter, and written to the teacher store
(`teacher_store.py`) with its top-k logits on the task's instances for L_kl
(`teacher_logits.py`).

`teacher_worker_loop(config, ctx)` is the same code with or without Ray: it takes its shard of
the pending tasks by `ctx.rank` and reports progress through `ctx.report`.
"""
from __future__ import annotations

import os
import random
import resource
import socket
import time
from collections.abc import Sequence
from functools import partial
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from tagi_ray.batching import prompt_batch
from tagi_ray.config import ModelConfig, TagiConfig, config_from_dict
from tagi_ray.data.prompts import parse_prompt_format
from tagi_ray.data.tables import read_task_rows
from tagi_ray.lora import LoraBank, LoraWeights
from tagi_ray.memory import release_freed_memory
from tagi_ray.metrics import compute_metrics
from tagi_ray.models.base import load_pretrained
from tagi_ray.tagi import TagiModel
from tagi_ray.training.examples import Example, table_examples
from tagi_ray.training.steps import length_chunks, make_batch
from tagi_ray.training.teacher_logits import compute_topk, save_topk
from tagi_ray.training.teacher_store import record_failure, write_teacher
from tagi_ray.training.worker import InjectedFault, WorkerContext


@dataclass
class TaskData:
    name: str
    train: list[Example]
    held_back: list[Example]  # training instances the teacher never trains on: its score


def split_task_examples(examples: Sequence[Example], held_back: int, seed: int) -> dict[str, TaskData]:
    """Per task: a seeded set of `held_back` instances (at most half) and the rest to train."""
    by_task: dict[str, list[Example]] = {}
    for e in examples:
        by_task.setdefault(e.task, []).append(e)
    out = {}
    for name, items in by_task.items():
        items = list(items)
        random.Random(f"{seed}:{name}").shuffle(items)
        n_hold = min(held_back, len(items) // 2)
        out[name] = TaskData(name, items[n_hold:], items[:n_hold])
    return out


# ---- training a pack ------------------------------------------------------------------------
def per_example_loss(logits: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor, n: int) -> torch.Tensor:
    """Mean token CE per example: (n,). `logits`, `labels`, `rows`: the scored tokens and their
    example (`TagiModel.label_logits`)."""
    tok = F.cross_entropy(logits.float(), labels, reduction="none")
    sums = torch.zeros(n, device=labels.device).index_add_(0, rows, tok)
    return sums / torch.zeros(n, device=labels.device).index_add_(0, rows, torch.ones_like(tok)).clamp(min=1.0)


def per_task_loss(logits: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor, task_ids: torch.Tensor, k: int
                  ) -> torch.Tensor:
    """Mean token CE per bank row: (k,) (rows without examples get 0); `task_ids`: bank row per example."""
    per_example = per_example_loss(logits, labels, rows, task_ids.shape[0])
    sums = torch.zeros(k, device=labels.device).index_add_(0, task_ids, per_example)
    counts = torch.zeros(k, device=labels.device).index_add_(0, task_ids, torch.ones_like(per_example))
    return sums / counts.clamp(min=1.0)


@dataclass
class PackResult:
    bank: LoraBank
    final_loss: dict[str, float] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


def token_lengths(tokenizer, examples: Sequence[Example], mcfg: ModelConfig) -> list[int]:
    """Tokens of each example's source + target, each truncated as `make_batch` truncates it."""
    src = tokenizer([e.source for e in examples])["input_ids"]
    tgt = tokenizer([e.target for e in examples])["input_ids"]
    return [min(len(a), mcfg.max_source_length) + min(len(b), mcfg.max_target_length) for a, b in zip(src, tgt)]


def pack_backward(model: TagiModel, tokenizer, cfg: TagiConfig, bank: LoraBank, examples: Sequence[Example],
                  ids: Sequence[int], dead: set[int], nan_row: int | None = None) -> torch.Tensor:
    """Backward of one packed step: the sum over bank rows of each row's mean per-example token
    CE. With `teachers.micro_batch` or `teachers.micro_batch_tokens` > 0 the examples go in
    length-sorted chunks of at most that many rows / padded tokens (each chunk padded to its own
    longest row: less padding, and activation memory bounded by the chunk, not by the pack's
    longest rows) with gradients accumulated: the same gradient as one batch. Rows in `dead` are
    left out; a row whose loss is not finite joins `dead`. Returns the per-row losses (k,), detached."""
    device = next(model.parameters()).device
    k = bank.k
    per_row = torch.tensor(list(ids), dtype=torch.long)
    n_row = torch.bincount(per_row, minlength=k).clamp(min=1).to(device)
    tcfg = cfg.teachers
    lengths = token_lengths(tokenizer, examples, cfg.model) if tcfg.micro_batch or tcfg.micro_batch_tokens \
        else [0] * len(examples)
    losses = torch.zeros(k, device=device)
    for part in length_chunks(lengths, tcfg.micro_batch, tcfg.micro_batch_tokens):
        rows = per_row[part].to(device)
        batch = make_batch(model, tokenizer, [examples[j] for j in part], cfg.model, with_prompt=False,
                           task_ids=rows.tolist()).to(device)
        logits, labels, at = model.label_logits(batch.input_ids, batch.attention_mask, batch.labels, bank.weights(),
                                                batch.task_ids, fuse=False)  # weights() per chunk: its own graph
        per_ex = per_example_loss(logits, labels, at, len(part)) / n_row[rows]
        if nan_row is not None:
            per_ex = torch.where(rows == nan_row, torch.nan, per_ex)
        bad = ~torch.isfinite(per_ex.detach())
        dead.update(rows[bad].tolist())
        keep = torch.tensor([int(r) not in dead for r in rows.tolist()], device=device)
        losses.index_add_(0, rows, torch.where(keep, per_ex.detach(), torch.zeros_like(per_ex)))
        if bool(keep.any()):
            per_ex[keep].sum().backward()
    for r in dead:
        losses[r] = torch.nan
    return losses


def train_pack(model: TagiModel, tokenizer, cfg: TagiConfig, tasks: Sequence[TaskData], seed: int,
               nan_task: str | None = None, desc: str | None = None) -> PackResult:
    """Train len(tasks) teachers together. `nan_task` (tests) poisons one task's loss with NaN;
    `desc`: a progress bar over the pack's steps with this label (None: no bar)."""
    tcfg, k = cfg.teachers, len(tasks)
    device = next(model.parameters()).device
    bank = LoraBank(model.targets, k, cfg.lora.rank, seed=seed).to(device)
    opt = torch.optim.AdamW(bank.parameters(), lr=tcfg.lr, weight_decay=0.0)
    rng = random.Random(seed)
    result = PackResult(bank)
    dead = {i for i, t in enumerate(tasks) if not t.train}
    for i in dead:
        result.failed[tasks[i].name] = "no training instances"
    nan_row = next((i for i, t in enumerate(tasks) if t.name == nan_task), None)
    start, last = time.time(), torch.zeros(k)
    for step in tqdm(range(tcfg.steps), desc=desc or "pack", unit="step", leave=False, mininterval=10.0,
                     disable=desc is None, dynamic_ncols=True):
        rows = [i for i in range(k) if i not in dead]
        if not rows:
            break
        examples, ids = [], []
        for i in rows:
            examples += [rng.choice(tasks[i].train) for _ in range(tcfg.batch_per_task)]
            ids += [i] * tcfg.batch_per_task
        opt.zero_grad(set_to_none=True)
        before = set(dead)
        losses = pack_backward(model, tokenizer, cfg, bank, examples, ids, dead, nan_row)
        for i in sorted(dead - before):
            result.failed[tasks[i].name] = f"non-finite loss ({float(losses[i])}) at step {step}"
        if len(dead) == k:
            break
        opt.step()
        last = losses.cpu()
    result.final_loss = {t.name: float(last[i]) for i, t in enumerate(tasks) if i not in dead}
    result.seconds = time.time() - start
    return result


def _chunks(n: int, size: int) -> list[slice]:
    return [slice(i, min(n, i + size)) for i in range(0, n, size)]


@torch.no_grad()
def held_back_loss(model: TagiModel, tokenizer, cfg: TagiConfig, tasks: Sequence[TaskData], weights: LoraWeights | None
                   ) -> dict[str, float]:
    """Mean token cross-entropy of each task's held-back references (with its teacher, or the
    base), `teachers.eval_batch_size` examples per forward."""
    examples = [e for t in tasks for e in t.held_back]
    ids = [i for i, t in enumerate(tasks) for _ in t.held_back]
    device = next(model.parameters()).device
    sums, counts = torch.zeros(len(tasks)), torch.zeros(len(tasks))
    for part in _chunks(len(examples), cfg.teachers.eval_batch_size):
        batch = make_batch(model, tokenizer, examples[part], cfg.model, with_prompt=False, task_ids=ids[part]).to(device)
        logits, labels, at = model.label_logits(batch.input_ids, batch.attention_mask, batch.labels, weights,
                                                batch.task_ids if weights is not None else None, fuse=False)
        per_example = per_example_loss(logits, labels, at, len(batch.task_ids)).cpu()
        sums.index_add_(0, batch.task_ids.cpu(), per_example)
        counts.index_add_(0, batch.task_ids.cpu(), torch.ones_like(per_example))
    losses = sums / counts.clamp(min=1.0)
    return {t.name: float(losses[i]) for i, t in enumerate(tasks)}


@torch.no_grad()
def evaluate_pack(model: TagiModel, tokenizer, cfg: TagiConfig, tasks: Sequence[TaskData], weights: LoraWeights | None
                  ) -> dict[str, dict]:
    """ROUGE-L / EM on each task's held-back instances: heterogeneous batches (each row with its
    own teacher) of `teachers.eval_batch_size` instances."""
    examples = [e for t in tasks for e in t.held_back]
    rows = torch.tensor([i for i, t in enumerate(tasks) for _ in t.held_back], dtype=torch.long)
    device = next(model.parameters()).device
    preds: list[str] = []
    for part in _chunks(len(examples), cfg.teachers.eval_batch_size):
        ids, mask = prompt_batch(tokenizer, model.is_encoder_decoder, [e.source for e in examples[part]],
                                 cfg.model.max_source_length)
        tokens = model.generate(ids.to(device), mask.to(device), weights,
                                rows[part].to(device) if weights is not None else None, None,
                                cfg.model.max_target_length, fuse=False)
        preds += tokenizer.batch_decode(tokens, skip_special_tokens=True)
    out = {}
    for i, t in enumerate(tasks):  # by position: an oracle fold's examples carry their task's name, not the fold's
        sel = (rows == i).nonzero().flatten().tolist()
        out[t.name] = compute_metrics([preds[j] for j in sel], [list(examples[j].outputs) for j in sel])
    return out


# ---- the worker loop (same with and without Ray) ---------------------------------------------
def task_lengths(table: pa.Table) -> dict[str, float]:
    """Each task's 90th-percentile instance length (characters of input + first reference): a
    pack's batches are padded to their longest row, so packs group tasks of similar length."""
    lengths: dict[str, list[int]] = {}
    for task, text, outputs in zip(table.column("task").to_pylist(), table.column("input").to_pylist(),
                                   table.column("outputs").to_pylist()):
        lengths.setdefault(task, []).append(len(text) + len(outputs[0] if outputs else ""))
    return {t: sorted(v)[int(0.9 * (len(v) - 1))] for t, v in lengths.items()}


def by_length(tasks: Sequence[str], lengths: dict[str, float] | None = None) -> list[str]:
    """The tasks sorted by length (`lengths`), then by name."""
    return sorted(tasks, key=lambda t: ((lengths or {}).get(t, 0.0), t))


def plan_packs(pending: Sequence[str], world: int, pack_size: int,
               lengths: dict[str, float] | None = None) -> list[list[list[str]]]:
    """packs[worker][round] = task names: the tasks sorted by length (`lengths`, else by name),
    cut into packs of K, the packs dealt round-robin to the workers."""
    ordered = by_length(pending, lengths)
    packs = [ordered[i:i + pack_size] for i in range(0, len(ordered), pack_size)]
    return [packs[w::world] for w in range(world)]


def plan_runs(pending: Sequence[str], world: int, pack_size: int, packs_per_worker: int,
              lengths: dict[str, float] | None = None) -> list[list[str]]:
    """The pending tasks in runs of at most `packs_per_worker` packs per worker (0: one run), in
    length order like `plan_packs`. Each run is a fresh worker group: a worker process's resident
    set creeps up with the packs it has trained (allocator fragmentation, per-shape kernel
    caches), so recycling the processes bounds it whatever the fleet size (the same idea as Ray's
    `max_calls` for tasks)."""
    ordered = by_length(pending, lengths)
    size = world * pack_size * packs_per_worker or len(ordered)
    return [ordered[i:i + size] for i in range(0, len(ordered), max(1, size))]


def teacher_worker_loop(config: dict, ctx: WorkerContext) -> None:
    """Train this worker's shard of pending teachers. `config`: {"cfg": dict, "table_path": the
    run's Parquet task table, "lengths": `task_lengths` (for the packing plan), "base": path,
    "teachers_dir": path, "pending": [task names]}. Each pack's rows are read from the table when
    the pack starts, so a worker never holds the whole fleet's data."""
    cfg = config_from_dict(config["cfg"])
    table_path = Path(config["table_path"])
    rank, world = ctx.rank, ctx.world_size
    if ctx.device.type == "cpu":
        torch.set_num_threads(max(1, int(cfg.ray.cpus_per_worker)))
    torch.manual_seed(cfg.train.seed + rank)
    teachers_dir, base_path = Path(config["teachers_dir"]), Path(config["base"])
    teachers_dir.mkdir(parents=True, exist_ok=True)

    bundle = load_pretrained(str(base_path), cfg.model.dtype)
    model = TagiModel(bundle, cfg.lora, cfg.hypernet, cfg.instruction).eval().to(ctx.device)
    tokenizer = bundle.tokenizer
    plan = plan_packs(list(config["pending"]), world, cfg.teachers.pack_size, config["lengths"])
    rounds = max((len(p) for p in plan), default=0)
    mine = plan[rank]
    num_pos = parse_prompt_format(cfg.data.prompt)

    def pack_data(names: list[str]) -> dict[str, TaskData]:
        """One pack's examples, read and built when the pack starts: a worker's memory does not
        grow with the fleet (all of a 756-task worker's examples up front cost ~280 MB)."""
        rows = read_task_rows(table_path, "train", names)
        return split_task_examples(table_examples(rows, num_pos), cfg.teachers.held_back, cfg.data.seed)
    nan_task = cfg.teachers.inject_nan_task or None
    total = sum(len(p) for p in mine)
    bar = tqdm(total=total, desc=f"teachers worker {rank}", unit="task", position=rank, dynamic_ncols=True)
    done = 0
    for r in range(rounds):  # every rank reports once per round (Ray Train's report is collective)
        metrics = {"round": r, "tasks_done": done, "tasks_total": total}
        if r < len(mine):
            data = pack_data(mine[r])
            pack = [data.get(name, TaskData(name, [], [])) for name in mine[r]]
            result = train_pack(model, tokenizer, cfg, pack, seed=cfg.train.seed + 1000 * rank + r, nan_task=nan_task,
                                desc=f"worker {rank} pack {r + 1}/{len(mine)}")
            ok = [t for t in pack if t.name not in result.failed]
            weights = result.bank.weights()
            ok_weights = weights.select([pack.index(t) for t in ok]) if ok else None
            teacher_scores = evaluate_pack(model, tokenizer, cfg, ok, ok_weights) if ok else {}
            base_scores = evaluate_pack(model, tokenizer, cfg, ok, None) if ok else {}
            teacher_loss = held_back_loss(model, tokenizer, cfg, ok, ok_weights) if ok else {}
            base_loss = held_back_loss(model, tokenizer, cfg, ok, None) if ok else {}
            for t in pack:
                if t.name in result.failed:
                    record_failure(teachers_dir, t.name, result.failed[t.name], rank)
                    continue
                row = {"task": t.name, "status": "complete", "steps": cfg.teachers.steps, "pack_size": len(pack),
                       "final_loss": result.final_loss[t.name], "rougeL": teacher_scores[t.name]["rougeL"],
                       "exact_match": teacher_scores[t.name]["exact_match"], "held_back": len(t.held_back),
                       "base_rougeL": base_scores[t.name]["rougeL"], "base_exact_match": base_scores[t.name]["exact_match"],
                       "held_back_loss": teacher_loss[t.name], "base_held_back_loss": base_loss[t.name],
                       "seconds": result.seconds / len(pack), "worker": rank, "pid": os.getpid(),
                       "host": socket.gethostname(), "node": ctx.node, "time": time.time(), "rank": cfg.lora.rank,
                       "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # Linux: KiB
                own = weights.select(pack.index(t)).detach()
                extra = None
                if cfg.teachers.logits_topk and cfg.loss.uses_kl:
                    instances = t.train + t.held_back
                    topk = compute_topk(model, tokenizer, cfg, instances, own)
                    extra = partial(save_topk, cfg=cfg, ids=[e.id for e in instances], idx=topk[0], logp=topk[1],
                                    offsets=topk[2])
                write_teacher(teachers_dir, t.name, own.to("cpu"), model.targets, cfg, model.arch, base_path, row, extra)
                done += 1
                bar.update(1)
                if 0 <= cfg.teachers.fail_after_tasks <= done:
                    raise InjectedFault(f"injected failure after {done} teachers (teachers.fail_after_tasks)")
            final_loss, seconds = result.final_loss, result.seconds
            del data, pack, ok, result, weights, ok_weights
            release_freed_memory()  # a worker's resident set does not creep up pack after pack
            mean_loss = sum(final_loss.values()) / max(1, len(final_loss))
            metrics.update(tasks_done=done, pack_loss=mean_loss, pack_seconds=seconds)
        ctx.report(metrics, None)
    bar.close()
