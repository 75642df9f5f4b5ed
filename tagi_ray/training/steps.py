"""Loss computations for one batch, shared by the local loop, Ray Train and DeepSpeed.

- `prompt_step`: instruction-in-prompt LM loss on the base (warm-up / Tk-Instruct baseline);
  `prompt_chunks` splits its batch into micro-batches with the same gradient (`length_chunks`,
  which packed teacher steps use too).
- `tagi_step`: encode the batch's instructions, generate adapters, forward with per-example
  adapters (+ fusion), and TAGI's loss; with a teacher bank also L_kl and L_ins.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from tagi_ray.batching import IGNORE, Batch, train_batch
from tagi_ray.config import LossConfig, ModelConfig
from tagi_ray.losses import TeacherTopK, ce_loss, tagi_loss
from tagi_ray.lora.weights import LoraWeights
from tagi_ray.tagi import Instruction, TagiModel
from tagi_ray.training.examples import Example


def make_batch(model: TagiModel, tokenizer, examples: Sequence[Example], mcfg: ModelConfig, with_prompt: bool,
               task_ids: Sequence[int] | None = None, instructions: bool = True) -> Batch:
    """Tokenize examples: the full Tk-Instruct prompt (`with_prompt`) or instance + instruction
    (`instructions=False`: the instance only; the caller brings encoded instructions)."""
    sources = [e.prompt if with_prompt else e.source for e in examples]
    max_src = mcfg.max_source_length + (mcfg.max_instruction_length if with_prompt else 0)
    batch = train_batch(tokenizer, model.is_encoder_decoder, sources, [e.target for e in examples], max_src,
                        mcfg.max_target_length,
                        [e.instruction for e in examples] if instructions and not with_prompt else None,
                        mcfg.max_instruction_length)
    if task_ids is not None:
        batch.task_ids = torch.as_tensor(list(task_ids), dtype=torch.long)
    return batch


def length_chunks(lengths: Sequence[int], max_rows: int = 0, max_tokens: int = 0) -> list[list[int]]:
    """Indices sorted by length, cut into chunks of at most `max_rows` rows whose padded size
    (rows × the chunk's longest) is at most `max_tokens` (a longer row goes alone); 0 = no bound.
    Both 0: one chunk, in the given order."""
    if not (max_rows or max_tokens):
        return [list(range(len(lengths)))] if lengths else []
    chunks: list[list[int]] = []
    for j in sorted(range(len(lengths)), key=lambda j: lengths[j]):
        cur = chunks[-1] if chunks else []
        full = (max_rows and len(cur) >= max_rows) or (max_tokens and (len(cur) + 1) * lengths[j] > max_tokens)
        if cur and not full:
            cur.append(j)
        else:
            chunks.append([j])
    return chunks


def prompt_chunks(model: TagiModel, tokenizer, mcfg: ModelConfig, size: int, device: torch.device | str
                  ) -> Callable[[Sequence[Example]], list[tuple[Batch, float]]]:
    """A `split` for `loop.run_steps`: a step's examples with the instruction in the prompt,
    tokenized in length-sorted chunks of `size` (0: one batch), each chunk padded to its own
    longest row and weighted by its share of the step's scored tokens. The chunks' token-mean CE
    losses so weighted add up to the whole batch's token-mean CE: the same gradient, with one
    chunk's activations in memory at a time."""
    def split(examples: Sequence[Example]) -> list[tuple[Batch, float]]:
        parts = length_chunks([len(e.prompt) + len(e.target) for e in examples], max_rows=size)
        batches = [make_batch(model, tokenizer, [examples[j] for j in part], mcfg, with_prompt=True).to(device)
                   for part in parts]
        tokens = [int((b.labels != IGNORE).sum()) for b in batches]
        total = max(1, sum(tokens))
        return [(b, n / total) for b, n in zip(batches, tokens)]
    return split


def prompt_step(model: TagiModel, batch: Batch) -> dict:
    logits, labels, _ = model.label_logits(batch.input_ids, batch.attention_mask, batch.labels)
    return {"loss": ce_loss(logits, labels)}


def tagi_step(model: TagiModel, batch: Batch, loss_cfg: LossConfig, teacher: LoraWeights | None = None,
              instr: Instruction | None = None, teacher_topk: TeacherTopK | None = None) -> dict:
    """TAGI loss for a batch. `teacher`: the teacher bank, rows indexed by `batch.task_ids`.
    `instr`: the batch's instructions already encoded (rows indexed by `batch.index`; e.g. from
    an InstructionCache), else they are encoded here. `teacher_topk`: the teachers' stored
    distributions on the batch's scored tokens (then no teacher forward for L_kl). With L_ce and
    L_kl off (an L_ins-only objective) the model's forward is skipped."""
    if instr is None:
        with torch.no_grad():  # the base is frozen: instruction states need no graph
            instr = model.encode_instruction(batch.instr_ids, batch.instr_mask)
    adapter = model.generate_adapter(instr)
    logits = labels = teacher_logits = teacher_rows = None
    if loss_cfg.uses_ce or loss_cfg.uses_kl:
        logits, labels, _ = model.label_logits(batch.input_ids, batch.attention_mask, batch.labels, adapter,
                                               batch.index, instr)
    if teacher is not None and batch.task_ids is not None:
        if loss_cfg.uses_kl and teacher_topk is not None:
            if teacher_topk.idx.shape[0] != labels.shape[0]:
                raise ValueError(f"teacher logits: {teacher_topk.idx.shape[0]} stored tokens for a batch that scores "
                                 f"{labels.shape[0]} (tokenizer or lengths changed since the teachers were trained)")
            teacher_logits = teacher_topk.to(logits.device)
        elif loss_cfg.uses_kl:
            with torch.no_grad():
                teacher_logits, _, _ = model.label_logits(batch.input_ids, batch.attention_mask, batch.labels,
                                                          teacher, batch.task_ids, fuse=False)
        # teacher row of each instruction row (all examples of an instruction share a task)
        if loss_cfg.uses_ins:
            rows = torch.zeros(instr.n, dtype=torch.long, device=batch.index.device)
            teacher_rows = teacher.select(rows.scatter_(0, batch.index, batch.task_ids))
    terms = tagi_loss(loss_cfg, logits, labels, teacher_logits, adapter, teacher_rows)
    return {"loss": terms.total, **{k: v for k, v in terms.as_floats().items() if k != "loss"}}
