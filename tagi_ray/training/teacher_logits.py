"""Teacher logits for L_kl, computed once per training instance and stored compactly.

A teacher is frozen once trained, so its next-token distributions on a task's instances are the
same at every meta step. After a pack trains, each teacher's distributions at temperature T on
all its task's training instances are kept as the top k token ids and their log-probabilities
(`teachers.logits_topk`; the rest of the mass is implied), next to the adapter:

    <teachers>/<task>/logits_topk.safetensors   idx (tokens, k) int32, logp (tokens, k) float32,
                                                offsets (instances + 1); metadata: instance ids,
                                                temperature, k, source/target lengths

Meta-training then needs no teacher forward for L_kl (`losses.kl_topk_loss`). The file is used
only when it matches the run (temperature, k, token lengths); otherwise the teachers run live.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from tagi_ray.config import TagiConfig
from tagi_ray.losses import TeacherTopK
from tagi_ray.lora import LoraWeights
from tagi_ray.tagi import TagiModel
from tagi_ray.training.examples import Example
from tagi_ray.training.steps import make_batch

FILE = "logits_topk.safetensors"


def cache_key(cfg: TagiConfig) -> dict[str, str]:
    """What the stored distributions depend on besides the teacher and the instances."""
    return {"temperature": repr(float(cfg.loss.temperature)), "k": str(cfg.teachers.logits_topk),
            "max_source_length": str(cfg.model.max_source_length),
            "max_target_length": str(cfg.model.max_target_length)}


@torch.no_grad()
def compute_topk(model: TagiModel, tokenizer, cfg: TagiConfig, examples: Sequence[Example], weights: LoraWeights
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(idx, logp, offsets) of one teacher (`weights.n == 1`) on `examples`, in chunks of
    `teachers.eval_batch_size`; instance i's tokens are rows offsets[i]:offsets[i+1]."""
    device = next(model.parameters()).device
    k = min(cfg.teachers.logits_topk, model.base.config.vocab_size)
    idx, logp, lengths = [], [], []
    size = cfg.teachers.eval_batch_size
    for i in range(0, len(examples), size):
        batch = make_batch(model, tokenizer, examples[i:i + size], cfg.model, with_prompt=False,
                           instructions=False).to(device)
        logits, _, rows = model.label_logits(batch.input_ids, batch.attention_mask, batch.labels, weights, None,
                                             fuse=False)
        top = F.log_softmax(logits.float() / cfg.loss.temperature, dim=-1).topk(k, dim=-1)
        idx.append(top.indices.to(torch.int32).cpu())
        logp.append(top.values.cpu())
        lengths.append(torch.bincount(rows, minlength=batch.input_ids.shape[0]).cpu())
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), torch.cat(lengths).cumsum(0)])
    return torch.cat(idx), torch.cat(logp), offsets


def save_topk(directory: Path, cfg: TagiConfig, ids: Sequence[str], idx: torch.Tensor, logp: torch.Tensor,
              offsets: torch.Tensor) -> Path:
    path = directory / FILE
    save_file({"idx": idx.contiguous(), "logp": logp.contiguous(), "offsets": offsets.contiguous()}, str(path),
              metadata={**cache_key(cfg), "ids": json.dumps(list(ids))})
    return path


def topk_matches(path: Path, cfg: TagiConfig) -> bool:
    """Whether a stored file exists and was written at this run's temperature, k and lengths
    (reads the header only)."""
    if not path.is_file():
        return False
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    return all(meta.get(key) == value for key, value in cache_key(cfg).items())


def read_topk(path: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """instance id -> (idx, logp) of one teacher's file."""
    with safe_open(str(path), "pt") as f:
        ids = json.loads(f.metadata()["ids"])
        tensors = {name: f.get_tensor(name) for name in f.keys()}
    offsets = tensors["offsets"].tolist()
    return {ex_id: (tensors["idx"][offsets[i]:offsets[i + 1]], tensors["logp"][offsets[i]:offsets[i + 1]])
            for i, ex_id in enumerate(ids)}


def load_topk(teachers_dir: Path, tasks: Sequence[str], cfg: TagiConfig
              ) -> dict[str, tuple[torch.Tensor, torch.Tensor]] | None:
    """instance id -> (idx, logp) for every instance of `tasks`, or None unless every task has a
    file that matches this run (then L_kl runs the teachers live)."""
    if not all(topk_matches(teachers_dir / task / FILE, cfg) for task in tasks):
        return None
    return {ex_id: v for task in tasks for ex_id, v in read_topk(teachers_dir / task / FILE).items()}


def gather_topk(store: dict[str, tuple[torch.Tensor, torch.Tensor]], examples: Sequence[Example]) -> TeacherTopK:
    """The batch's teacher distributions in `label_logits` order (example by example)."""
    missing = [e.id for e in examples if e.id not in store]
    if missing:
        raise KeyError(f"teacher logits: no stored distributions for instances {missing[:3]} (teachers/<task>/{FILE})")
    return TeacherTopK(torch.cat([store[e.id][0] for e in examples]), torch.cat([store[e.id][1] for e in examples]))
