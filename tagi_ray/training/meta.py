"""Meta-training the hypernetwork with DeepSpeed, one Ray Train worker per rank.

Two stages share this loop:
- "pretrain": plain text split in three (first part -> hypernetwork, middle -> input, rest ->
  target), L_ce only;
- "meta": training tasks, L = L_ce + lambda_kl * L_kl + lambda_ins * L_ins against each batch's
  teachers, read lazily from the fleet (`TeacherStore`; teacher distributions from their stored
  top-k, or recomputed through the batched LoRA on the same batch). Each training task's
  instruction is encoded once per run (`InstructionCache`).

Checkpoints are DeepSpeed's: every rank saves its shard into one directory, then every rank
calls `ctx.report(metrics, directory)`; a restarted loop resumes from `ctx.latest_checkpoint()`
(under Ray, Ray Train's checkpoints; in a plain process, `worker.run_in_process`'s). Rank 0 also
appends each optimizer step to `steps.jsonl` (the training curve, and evidence of which steps
ran) and, at the end, writes a standalone TAGI checkpoint (no DeepSpeed needed to load it) into
the final checkpoint under `export/`.

With validation rows ("val_data", tasks split off the training tasks), stage "meta" also
computes `val_loss` (L_ce of the generated adapters on them) at every checkpoint and adds it to
the step's record: it goes to steps.jsonl and with the report to Ray (Ray Tune's ASHA reads it).
"""
from __future__ import annotations

import hashlib
import json
import random
import tempfile
import time
import warnings
from pathlib import Path

import pyarrow as pa
import torch
from safetensors.torch import load_file
from tqdm.auto import tqdm

from tagi_ray.base_ref import base_digest
from tagi_ray.checkpoint import HYPERNET_FILE, load_checkpoint_base, save_checkpoint
from tagi_ray.config import LossConfig, TagiConfig, config_from_dict
from tagi_ray.data.prompts import parse_prompt_format
from tagi_ray.batching import dedup
from tagi_ray.inference import fit_hypernet_input_stats
from tagi_ray.instruction_cache import InstructionCache
from tagi_ray.models.base import load_pretrained
from tagi_ray.tagi import TagiModel
from tagi_ray.training.deepspeed_setup import ds_config, skip_shm_build
from tagi_ray.training.examples import Example, random_batches, table_examples
from tagi_ray.training.loop import linear_schedule
from tagi_ray.training.pretrain_text import split_texts
from tagi_ray.training.steps import make_batch, tagi_step
from tagi_ray.training.teacher_store import TeacherStore
from tagi_ray.training.validation import validation_batches, validation_loss
from tagi_ray.training.worker import InjectedFault, WorkerContext

PROGRESS_FILE = "progress.json"
EXPORT_DIR = "export"
STEPS_LOG = "steps.jsonl"


class MetaObjective(torch.nn.Module):
    """What DeepSpeed wraps: the TAGI model plus the loss; forward(examples) -> loss terms.
    `teachers`: the TeacherStore (each batch's teachers, and their stored distributions when
    there are), or None (no teacher losses). `instructions`: an InstructionCache (each task's
    instruction encoded once), or None (encoded at every step)."""

    def __init__(self, model: TagiModel, tokenizer, cfg: TagiConfig, loss: LossConfig,
                 teachers: TeacherStore | None, instructions: InstructionCache | None = None):
        super().__init__()
        self.model, self.tokenizer, self.cfg, self.loss = model, tokenizer, cfg, loss
        self.teachers, self.instructions = teachers, instructions

    def forward(self, examples: list[Example], ce_only: bool = False) -> dict:
        """`ce_only`: L_ce alone, no teacher (validation tasks have none)."""
        device = next(self.model.parameters()).device
        loss = LossConfig.ce_only(self.loss.temperature) if ce_only else self.loss
        teacher, ids, topk = None, None, None
        if self.teachers is not None and not ce_only:
            teacher, rows = self.teachers.bank([e.task for e in examples])
            ids = [rows[e.task] for e in examples]
            topk = self.teachers.topk(examples) if loss.uses_kl else None
        cached = self.instructions is not None
        batch = make_batch(self.model, self.tokenizer, examples, self.cfg.model, with_prompt=False, task_ids=ids,
                           instructions=not cached)
        instr = None
        if cached:
            texts, batch.index = dedup([e.instruction for e in examples])
            instr = self.instructions.encode(texts)
        return {**tagi_step(self.model, batch.to(device), loss, teacher, instr, topk), "tokens": batch.num_tokens}


def instruction_cache(model: TagiModel, tokenizer, cfg: TagiConfig) -> InstructionCache | None:
    """The run's InstructionCache, or None where the encoding changes during training (the
    base's layer norms train and the base is the encoder) or `train.cache_instructions` is off."""
    trains_encoder = cfg.train.train_layer_norms and model.instruction_encoder is None
    if not cfg.train.cache_instructions or trains_encoder:
        return None
    return InstructionCache(model, tokenizer, cfg.model.max_instruction_length)


def set_trainable(model: TagiModel, layer_norms: bool) -> list[torch.nn.Parameter]:
    """The hypernetwork (incl. its fusion projections) and, optionally, the base's layer norms."""
    if layer_norms:
        for name, p in model.base.named_parameters():
            if "norm" in name.lower():
                p.requires_grad_(True)
    return [p for p in model.parameters() if p.requires_grad]


def _rows_to_examples(table: pa.Table, stage: str, num_pos: int, rng: random.Random) -> list[Example]:
    if stage == "pretrain":
        return split_texts(table.column("text").to_pylist(), rng)
    return table_examples(table, num_pos)


def worker_shard(table: pa.Table, rank: int, world: int) -> pa.Table:
    """Rank `rank`'s contiguous 1/world of the rows (zero-copy). The driver shuffled the rows
    once, so every shard mixes tasks. Task tables are small and the driver holds them anyway, so
    they travel to the workers with the loop's config (Ray's object store, like "val_data"), the
    same code with and without Ray. (A Ray Data split did the same job with two more actors
    alive next to the training step and ~3 s more start-up per stage.)"""
    start, stop = rank * table.num_rows // world, (rank + 1) * table.num_rows // world
    return table.slice(start, stop - start)


def example_stream(table: pa.Table, stage: str, batch_size: int, num_pos: int, seed: int):
    """Endless micro-batches of Examples from this worker's rows, reshuffled each epoch."""
    if table.num_rows < batch_size:
        raise ValueError(f"{stage}: this worker's data shard holds {table.num_rows} rows, fewer than "
                         f"batch_size={batch_size}")
    rng = random.Random(seed)  # the pretraining splits
    for rows in random_batches(range(table.num_rows), batch_size, seed):
        yield _rows_to_examples(table.take(rows), stage, num_pos, rng)


def _restore(engine, ctx: WorkerContext) -> tuple[int, bool]:
    """Load the DeepSpeed state of the latest checkpoint, if any; returns (next step, restored?)."""
    with ctx.latest_checkpoint() as d:
        if d is None:
            return 0, False
        engine.load_checkpoint(str(d), tag="ds", load_module_strict=False)
        return json.loads((Path(d) / PROGRESS_FILE).read_text())["step"], True


def pooled_cache(config: dict, cfg: TagiConfig) -> Path:
    """Where the pooled training instructions of this computation are kept, shared by every run
    on the same base (experiment variants, sweep trials): beside the base, keyed by the base's
    and the instruction encoder's content hashes, the pooling, the length limit and the texts."""
    base = Path(config["base"]).resolve()
    encoder = config.get("instruction_encoder")
    key = json.dumps([base_digest(base), base_digest(encoder) if encoder else None, cfg.instruction.pooling,
                      cfg.model.max_instruction_length, sorted(set(config["instructions"]))])
    return base.parent / "pooled_instructions" / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.safetensors"


def meta_worker_loop(config: dict, ctx: WorkerContext) -> None:
    """One meta-training worker (rank `ctx.rank` of `ctx.world_size`). `config`: {"cfg": dict,
    "stage": "pretrain"|"meta", "base": path, "init_hypernet": path|None (stage 2: start from stage 1),
    "instructions": [str] (what the hypernetwork's input standardisation is fitted on, without init),
    "instruction_encoder": path|None (a model directory that encodes instructions instead of the base),
    "teachers_dir": path|None, "teacher_tasks": [str], "log_dir": path, "data": Arrow table of
    all ranks' rows, shuffled (each rank takes its `worker_shard`), optional "val_data": Arrow
    table of validation rows (stage "meta": `val_loss` at every checkpoint)}."""
    import deepspeed

    # DeepSpeed's ZeRO calls a torch.distributed function that torch has renamed (not our call)
    warnings.filterwarnings("ignore", message=".*all_gather_into_tensor.* is deprecated", category=FutureWarning)
    cfg = config_from_dict(config["cfg"])
    stage = config["stage"]
    rank, world, device = ctx.rank, ctx.world_size, ctx.device
    ctx.record(config["log_dir"], f"meta-{stage}")
    on_gpu = device.type == "cuda"
    if not on_gpu:
        skip_shm_build()
        torch.set_num_threads(max(1, int(cfg.ray.cpus_per_worker)))
    torch.manual_seed(cfg.train.seed)

    # stage 2 continues stage 1's base as trained (its layer norms, with train.train_layer_norms)
    bundle = load_checkpoint_base(config["init_hypernet"], cfg.model.dtype) if config.get("init_hypernet") \
        else load_pretrained(config["base"], cfg.model.dtype)
    encoder = load_pretrained(config["instruction_encoder"], cfg.model.dtype).model \
        if config.get("instruction_encoder") else None
    model = TagiModel(bundle, cfg.lora, cfg.hypernet, cfg.instruction, encoder).to(device)
    if config.get("init_hypernet"):  # stage 2 starts from stage 1: its weights AND its input standardisation
        model.hypernet.load_state_dict(load_file(str(Path(config["init_hypernet"]) / HYPERNET_FILE)))
    else:  # fitted once, on what both stages' hypernetwork reads (the same on every rank)
        fit_hypernet_input_stats(model, bundle.tokenizer, cfg.model, config["instructions"],
                                 cache=pooled_cache(config, cfg))
    params = set_trainable(model, cfg.train.train_layer_norms)

    total = cfg.train.pretrain_steps if stage == "pretrain" else cfg.train.meta_steps
    loss_cfg = LossConfig.ce_only(cfg.loss.temperature) if stage == "pretrain" else cfg.loss
    teachers = None
    if stage == "meta" and config.get("teachers_dir") and loss_cfg.uses_teachers:
        teachers = TeacherStore.open(Path(config["teachers_dir"]), config["teacher_tasks"], cfg, device)
        if rank == 0 and loss_cfg.uses_kl and not teachers.has_topk:
            print(f"L_kl: teachers run live (no stored top-{cfg.teachers.logits_topk} logits at temperature "
                  f"{cfg.loss.temperature} for every teacher)")
    num_pos = parse_prompt_format(cfg.data.prompt)
    cache = instruction_cache(model, bundle.tokenizer, cfg) if stage == "meta" else None
    if cache is not None:  # every instruction of every rank's rows, in the same order on every rank: under
        # ZeRO-3 the base's forward is collective, so no rank may encode what another does not
        tables = [config["data"]] + ([config["val_data"]] if config.get("val_data") is not None else [])
        cache.encode(sorted({e.instruction for t in tables for e in table_examples(t, num_pos)}))
    objective = MetaObjective(model, bundle.tokenizer, cfg, loss_cfg, teachers, cache)
    engine, _, _, _ = deepspeed.initialize(
        model=objective, model_parameters=params, config=ds_config(cfg, total, on_gpu),
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: linear_schedule(s, total, cfg.train.warmup_steps)))

    start, restored = _restore(engine, ctx)
    stream = example_stream(worker_shard(config["data"], rank, world), stage, cfg.train.batch_size, num_pos,
                            cfg.train.seed + 7919 * rank + start)
    log = Path(config["log_dir"]) / STEPS_LOG
    log.parent.mkdir(parents=True, exist_ok=True)
    bar = tqdm(range(start, total), desc=f"{stage} rank {rank}", initial=start, total=total, disable=rank != 0,
               dynamic_ncols=True, mininterval=2.0)
    every = cfg.train.checkpoint_every or total
    val_batches = validation_batches(config["val_data"], num_pos, cfg.train.batch_size) \
        if stage == "meta" and config.get("val_data") is not None else []
    for step in bar:
        t0 = time.time()
        terms: dict[str, float] = {}
        data_seconds, tokens = 0.0, 0
        for _ in range(cfg.train.grad_accum):
            t_data = time.time()
            examples = next(stream)
            data_seconds += time.time() - t_data
            out = engine(examples)
            engine.backward(out["loss"])
            engine.step()
            tokens += out.pop("tokens")
            for k, v in out.items():
                terms[k] = terms.get(k, 0.0) + float(v.detach() if torch.is_tensor(v) else v) / cfg.train.grad_accum
        record = {"stage": stage, "step": step + 1, "lr": engine.get_lr()[0], "seconds": time.time() - t0,
                  "data_seconds": data_seconds, "tokens": tokens, "restored": restored, **terms}
        last = step + 1 == total
        at_checkpoint = (step + 1) % every == 0 or last
        if val_batches and at_checkpoint:
            record["val_loss"] = validation_loss(lambda b: engine(b, ce_only=True), engine, val_batches)
        if rank == 0:
            with log.open("a") as f:
                f.write(json.dumps(record) + "\n")
            bar.set_postfix(loss=f"{terms['loss']:.3f}")
        if (stage == "meta" and step + 1 == cfg.train.fail_at_step and not restored
                and rank == world - 1):
            raise InjectedFault(f"injected worker failure at {stage} step {step + 1} (train.fail_at_step)")
        # a report syncs all workers (under Ray, ~1-2 s here), so metrics are reported with
        # each checkpoint; every step is in steps.jsonl
        if at_checkpoint:
            _save_and_report(ctx, engine, model, bundle.tokenizer, cfg, record, last, Path(config["base"]))


def _save_and_report(ctx: WorkerContext, engine, model: TagiModel, tokenizer, cfg: TagiConfig, record: dict,
                     last: bool, base_dir: Path) -> None:
    """Every rank saves its DeepSpeed shard (trained tensors only: the frozen base is stored once,
    in the run), rank 0 the progress (and, at the end, the standalone export, which references
    `base_dir` by hash); then every rank reports the same directory as the checkpoint."""
    with tempfile.TemporaryDirectory() as tmp:
        engine.save_checkpoint(tmp, tag="ds", exclude_frozen_parameters=True)
        if last:
            _gather_for_export(engine, model, cfg, tokenizer, Path(tmp) / EXPORT_DIR if ctx.rank == 0 else None,
                               base_dir)
        if ctx.rank == 0:
            (Path(tmp) / PROGRESS_FILE).write_text(json.dumps({"step": record["step"], "stage": record["stage"]}))
        ctx.report(record, Path(tmp))


def _gather_for_export(engine, model: TagiModel, cfg: TagiConfig, tokenizer, out: Path | None,
                       base_dir: Path) -> None:
    """Write the TAGI checkpoint from rank 0 (ZeRO-3 gathers the partitioned weights first)."""
    if cfg.train.zero_stage == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
            if out is not None:
                save_checkpoint(model, tokenizer, cfg, out, base_dir)
    elif out is not None:
        save_checkpoint(model, tokenizer, cfg, out, base_dir)
