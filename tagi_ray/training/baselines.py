"""The trained baselines TAGI is compared with, each on the run's frozen base:

- `tk_instruct`: the base fully fine-tuned multi-task on the training tasks with the instruction
  in the prompt (Tk-Instruct's recipe), one per prompt format -> a model directory of its own;
- `tk_instruct_lora`: one multi-task LoRA (TAGI's rank and targets) on the same prompts, one per
  format -> a PEFT directory;
- `oracle`: per held-out task, LoRAs trained on that task's own instances with the teachers'
  recipe (instance only), 2-fold: the LoRA of fold f trains on the other fold's instances and
  scores fold f, so every scored instance is scored by a LoRA that never saw it -> a teacher
  store of `<task>__fold<f>` adapters.

`baseline_worker_loop(config, ctx)` trains this rank's share of the jobs; the same with and
without Ray. Paths: `BaselinePaths`.
"""
from __future__ import annotations

import shutil
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import torch

from tagi_ray.adapters import export_peft
from tagi_ray.batching import Batch
from tagi_ray.config import TagiConfig, config_from_dict
from tagi_ray.data.tables import select_split
from tagi_ray.lora import LoraBank
from tagi_ray.losses import ce_loss
from tagi_ray.models.base import BaseBundle, load_pretrained, save_base
from tagi_ray.tagi import TagiModel
from tagi_ray.training.base_warmup import prompt_tune_base
from tagi_ray.training.examples import random_batches, table_examples
from tagi_ray.training.loop import run_steps
from tagi_ray.training.steps import prompt_chunks
from tagi_ray.training.teacher_store import completed_tasks, record_failure, write_teacher
from tagi_ray.training.teachers import TaskData, evaluate_pack, train_pack
from tagi_ray.training.worker import WorkerContext

FOLDS = 2


def fold_name(task: str, fold: int) -> str:
    return f"{task}__fold{fold}"


def format_dir(fmt: str) -> str:
    return fmt.replace("+", "_")


@dataclass(frozen=True)
class BaselinePaths:
    """Where a run's baselines live: `<run>/baselines/`."""

    root: Path

    def tk_instruct(self, fmt: str) -> Path:
        return self.root / f"tk_instruct_{format_dir(fmt)}"

    def tk_instruct_lora(self, fmt: str) -> Path:
        return self.root / f"tk_instruct_lora_{format_dir(fmt)}"

    @property
    def oracle(self) -> Path:
        return self.root / "oracle"

    def done(self, method: str, fmt: str) -> bool:
        """Whether the tk_instruct / tk_instruct_lora baseline of `fmt` is trained."""
        path = self.tk_instruct(fmt) if method == "tk_instruct" else self.tk_instruct_lora(fmt)
        return (path / "done.json").is_file()


def _atomic(out: Path) -> Path:
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    return tmp


CPU = torch.device("cpu")


def train_tk_instruct(cfg: TagiConfig, table: pa.Table, base: Path, num_pos: int, out: Path,
                      device: torch.device = CPU) -> Path:
    """The base fully fine-tuned with Tk-Instruct prompts (k positive examples) -> a model dir."""
    bundle = load_pretrained(str(base), cfg.model.dtype)
    model = TagiModel(bundle, cfg.lora, cfg.hypernet, cfg.instruction).to(device)
    steps = cfg.baselines.tk_instruct_steps or cfg.train.meta_steps
    start = time.time()
    history = prompt_tune_base(model, bundle.tokenizer, cfg, table, steps, cfg.baselines.tk_instruct_lr, num_pos,
                               desc=f"tk_instruct (def+{num_pos}pos)", micro_batch=cfg.baselines.micro_batch)
    tmp = _atomic(out)
    save_base(BaseBundle(model.base.to("cpu"), bundle.tokenizer, model.arch), tmp)
    (tmp / "done.json").write_text(_summary(steps, history, start))
    tmp.rename(out)
    return out


def train_tk_instruct_lora(cfg: TagiConfig, table: pa.Table, base: Path, num_pos: int, out: Path,
                           device: torch.device = CPU) -> Path:
    """One multi-task LoRA on the frozen base with Tk-Instruct prompts -> a PEFT directory."""
    bundle = load_pretrained(str(base), cfg.model.dtype)
    model = TagiModel(bundle, cfg.lora, cfg.hypernet, cfg.instruction).to(device)
    bank = LoraBank(model.targets, 1, cfg.lora.rank, seed=cfg.train.seed).to(device)
    examples = table_examples(select_split(table, "train"), num_pos)
    steps = cfg.baselines.tk_instruct_lora_steps or cfg.train.meta_steps

    def step(b: Batch) -> dict:
        logits, labels, _ = model.label_logits(b.input_ids, b.attention_mask, b.labels, bank.weights())
        return {"loss": ce_loss(logits, labels)}

    start = time.time()
    history = run_steps(step, list(bank.parameters()), random_batches(examples, cfg.train.batch_size, cfg.train.seed),
                        steps, cfg.baselines.tk_instruct_lora_lr, desc=f"tk_instruct_lora (def+{num_pos}pos)",
                        split=prompt_chunks(model, bundle.tokenizer, cfg.model, cfg.baselines.micro_batch, device))
    tmp = _atomic(out)
    export_peft(bank.weights().detach().to("cpu"), model.targets, cfg.lora.rank, cfg.lora.alpha, model.arch,
                str(base), tmp)
    (tmp / "done.json").write_text(_summary(steps, history, start))
    tmp.rename(out)
    return out


def oracle_folds(table: pa.Table) -> list[TaskData]:
    """Per test task and fold f: train on the instances of the other fold, score fold f (instance
    i is in fold i % FOLDS, in table order)."""
    examples = table_examples(select_split(table, "test"), 0)
    by_task: dict[str, list] = {}
    for e in examples:
        by_task.setdefault(e.task, []).append(e)
    out = []
    for task, items in sorted(by_task.items()):
        for f in range(FOLDS):
            out.append(TaskData(fold_name(task, f), [e for i, e in enumerate(items) if i % FOLDS != f],
                                [e for i, e in enumerate(items) if i % FOLDS == f]))
    return out


def train_oracles(cfg: TagiConfig, table: pa.Table, base: Path, out: Path, folds: Sequence[str],
                  device: torch.device = CPU) -> list[str]:
    """The oracle `folds` (names), packed K at a time like teachers; returns their names."""
    bundle = load_pretrained(str(base), cfg.model.dtype)
    model = TagiModel(bundle, cfg.lora, cfg.hypernet, cfg.instruction).eval().to(device)
    wanted = set(folds)
    pending = [t for t in oracle_folds(table) if t.name in wanted]
    steps = cfg.baselines.oracle_steps or cfg.teachers.steps
    data = cfg.to_dict()
    data["teachers"]["steps"] = steps
    pack_cfg = config_from_dict(data)
    out.mkdir(parents=True, exist_ok=True)
    k = cfg.teachers.pack_size
    for i in range(0, len(pending), k):
        pack = pending[i:i + k]
        result = train_pack(model, bundle.tokenizer, pack_cfg, pack, seed=cfg.train.seed + 7 * i,
                            desc=f"oracle pack {i // k + 1}/{-(-len(pending) // k)}")
        weights = result.bank.weights()
        scores = evaluate_pack(model, bundle.tokenizer, cfg, pack, weights)
        for j, t in enumerate(pack):
            if t.name in result.failed:  # not written: the next run retries it
                record_failure(out, t.name, result.failed[t.name], 0)
                continue
            row = {"task": t.name, "status": "complete", "steps": steps, "rougeL": scores[t.name]["rougeL"],
                   "exact_match": scores[t.name]["exact_match"], "trained_on": len(t.train), "scored": len(t.held_back),
                   "seconds": result.seconds / len(pack), "host": socket.gethostname(), "time": time.time(),
                   "rank": cfg.lora.rank}
            write_teacher(out, t.name, weights.select(j).detach().to("cpu"), model.targets, cfg, model.arch, base, row)
    return [t.name for t in pending]


def _summary(steps: int, history: list[dict], start: float) -> str:
    import json

    losses = [h["loss"] for h in history]
    return json.dumps({"steps": steps, "seconds": time.time() - start, "first_loss": losses[0] if losses else None,
                       "last_loss": losses[-1] if losses else None})


def baseline_jobs(cfg: TagiConfig, table: pa.Table, paths: BaselinePaths, formats: dict[str, int]) -> list[list]:
    """Jobs still to do: [method, format] for tk_instruct / tk_instruct_lora, and ["oracle", fold
    name] for every missing oracle fold (decided here, once, so ranks never race over them)."""
    jobs = []
    for method in cfg.baselines.methods:
        if method == "oracle":
            done = completed_tasks(paths.oracle)
            jobs += [["oracle", t.name] for t in oracle_folds(table) if t.name not in done]
            continue
        jobs += [[method, fmt] for fmt in formats if not paths.done(method, fmt)]
    return jobs


def baseline_worker_loop(config: dict, ctx: WorkerContext) -> None:
    """Train this rank's share of `config["jobs"]` (from `baseline_jobs`): the tk jobs one per
    rank in turn, the oracle folds split evenly. `config`: {"cfg": dict, "table": Arrow table,
    "base": path, "out": baselines dir, "formats": {name: k}, "jobs": [[method, format|fold]]}."""
    cfg = config_from_dict(config["cfg"])
    if ctx.device.type == "cpu":
        torch.set_num_threads(max(1, int(cfg.ray.cpus_per_worker)))
    torch.manual_seed(cfg.train.seed)
    paths, table, base = BaselinePaths(Path(config["out"])), config["table"], Path(config["base"])
    formats, done = config["formats"], []
    folds = [fold for method, fold in config["jobs"] if method == "oracle"][ctx.rank::ctx.world_size]
    if folds:
        done += train_oracles(cfg, table, base, paths.oracle, folds, ctx.device)
    tk_jobs = [job for job in config["jobs"] if job[0] != "oracle"]
    for i, (method, fmt) in enumerate(tk_jobs):
        if i % ctx.world_size == ctx.rank:
            trainer = train_tk_instruct if method == "tk_instruct" else train_tk_instruct_lora
            out = paths.tk_instruct(fmt) if method == "tk_instruct" else paths.tk_instruct_lora(fmt)
            trainer(cfg, table, base, formats[fmt], out, ctx.device)
            done.append(f"{method}:{fmt}")
    ctx.report({"trained": done}, None)
