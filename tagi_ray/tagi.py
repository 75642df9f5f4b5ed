"""The TAGI model: frozen base + batched LoRA + hypernetwork + instruction fusion.

    instr = model.encode_instruction(instr_ids, instr_mask)   # once per task
    adapter = model.generate_adapter(instr)                   # cacheable LoraWeights
    logits, labels = model(input_ids, mask, labels, adapter, index, instr)
    tokens = model.generate(input_ids, mask, adapter, index, instr)   # transformers' generate

`index[i]` names example i's adapter/instruction, so one batch can mix tasks. Instruction
fusion (switch: `instruction.fusion`): for T5 the instruction's encoder states are concatenated
in front of the instance's encoder output (masks too) for cross-attention; for decoder-only
models the instruction is a prefix whose key/values were computed once in `encode_instruction`.
The instruction is always encoded by the base without any adapter.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import DynamicCache, GenerationConfig
from transformers.cache_utils import DynamicLayer
from transformers.modeling_outputs import BaseModelOutput

from tagi_ray.batching import IGNORE
from tagi_ray.config import HypernetConfig, InstructionConfig, LoraConfig
from tagi_ray.hypernet import HyperNetwork, SharedAdapter
from tagi_ray.lora import BatchedLora, LoraWeights, find_targets
from tagi_ray.models.base import BaseBundle


@dataclass
class Instruction:
    """Encoded instructions (N of them): states for fusion, pooled vector for the hypernetwork."""

    states: torch.Tensor  # (N, Ti, d)
    mask: torch.Tensor  # (N, Ti)
    pooled: torch.Tensor  # (N, d)
    past: tuple[tuple[torch.Tensor, torch.Tensor], ...] | None = None  # causal LMs: per-layer (k, v)

    @property
    def n(self) -> int:
        return self.states.shape[0]

    def select(self, index: torch.Tensor) -> Instruction:
        past = None if self.past is None else tuple((k[index], v[index]) for k, v in self.past)
        return Instruction(self.states[index], self.mask[index], self.pooled[index], past)

    @staticmethod
    def cat(items: list[Instruction]) -> Instruction:
        """Stack encoded instructions of different lengths (right-padded, mask 0 on the padding)."""
        width = max(x.states.shape[1] for x in items)

        def right_pad(t: torch.Tensor, dim: int) -> torch.Tensor:
            extra = width - t.shape[dim]
            if not extra:
                return t
            shape = list(t.shape)
            shape[dim] = extra
            return torch.cat([t, t.new_zeros(shape)], dim=dim)

        past = None
        if items[0].past is not None:
            past = tuple((torch.cat([right_pad(x.past[i][0], 2) for x in items]),
                          torch.cat([right_pad(x.past[i][1], 2) for x in items])) for i in range(len(items[0].past)))
        return Instruction(torch.cat([right_pad(x.states, 1) for x in items]),
                           torch.cat([right_pad(x.mask, 1) for x in items]),
                           torch.cat([x.pooled for x in items]), past)

    def to(self, device) -> Instruction:
        past = None if self.past is None else tuple((k.to(device), v.to(device)) for k, v in self.past)
        return Instruction(self.states.to(device), self.mask.to(device), self.pooled.to(device), past)

    def expand(self, batch: int) -> Instruction:
        """One instruction as `batch` rows: broadcast views, nothing is copied."""
        def rows(t: torch.Tensor) -> torch.Tensor:
            return t.expand(batch, *t.shape[1:])

        past = None if self.past is None else tuple((rows(k), rows(v)) for k, v in self.past)
        return Instruction(rows(self.states), rows(self.mask), rows(self.pooled), past)

    def for_batch(self, index: torch.Tensor | None, batch: int) -> Instruction:
        """Row i = the instruction of example i (index None: one for all, or one per example)."""
        if index is None:
            if self.n == batch:
                return self
            if self.n != 1:
                raise ValueError(f"{self.n} instructions for a batch of {batch}: pass an index")
            return self.expand(batch)
        return self.select(index.to(self.states.device))


def prefix_cache(config, past: tuple[tuple[torch.Tensor, torch.Tensor], ...]) -> DynamicCache:
    """A cache that starts out holding the instruction prefix's per-layer (k, v) as they are
    (possibly broadcast views): the first forward's concatenation is the only copy. (Building it
    with `DynamicCache(ddp_cache_data=...)` would copy the prefix once more, layer by layer.)"""
    cache = DynamicCache(config=config)
    if len(cache.layers) != len(past):
        raise ValueError(f"prefix has {len(past)} layers, the model {len(cache.layers)}")
    for layer, (k, v) in zip(cache.layers, past):
        if type(layer) is DynamicLayer:
            layer.lazy_initialization(k, v)
            layer.keys, layer.values = k, v
        else:  # sliding-window and other layers keep their own bookkeeping
            layer.update(k, v)
    return cache


def masked_mean(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(states.dtype).unsqueeze(-1)
    return (states * m).sum(1) / m.sum(1).clamp(min=1.0)


class TagiModel(nn.Module):
    def __init__(self, bundle: BaseBundle, lora: LoraConfig, hypernet: HypernetConfig,
                 instruction: InstructionConfig | None = None, instruction_encoder: nn.Module | None = None):
        """`instruction_encoder`: a frozen model of the base's architecture that encodes the
        instruction instead of the base (`instruction.encoder: tk_instruct`); None = the base."""
        super().__init__()
        instruction = instruction or InstructionConfig()
        self.instruction_encoder = instruction_encoder
        if instruction_encoder is not None:
            instruction_encoder.requires_grad_(False)
        self.base = bundle.model
        self.arch = bundle.arch
        self.base.requires_grad_(False)
        self.pad_id = bundle.tokenizer.pad_token_id
        self.eos_id = bundle.tokenizer.eos_token_id
        self.targets = find_targets(self.base, self.arch, lora.target_modules)
        self.lora = BatchedLora(self.base, self.targets, lora.rank, lora.alpha, lora.dropout)
        self.fusion = instruction.fusion
        self.pooling = instruction.pooling
        d_model = self.base.config.d_model if self.arch == "t5" else self.base.config.hidden_size
        self.hypernet = HyperNetwork(d_model, self.targets, lora.rank, hypernet.hidden_dim, hypernet.embed_dim,
                                     hypernet.init_scale) if hypernet.kind == "mlp" \
            else SharedAdapter(self.targets, lora.rank)

    @property
    def is_encoder_decoder(self) -> bool:
        return self.arch == "t5"

    @property
    def device(self) -> torch.device:
        return next(self.base.parameters()).device

    # ---- instruction side -------------------------------------------------------------
    def encode_instruction(self, ids: torch.Tensor, mask: torch.Tensor) -> Instruction:
        """Run the base (or the instruction encoder), no adapter, over right-padded instruction tokens."""
        want_layers = self.pooling == "first_last_mean"
        encoder = self.instruction_encoder if self.instruction_encoder is not None else self.base
        with self.lora.apply(None):
            if self.is_encoder_decoder:
                out = encoder.encoder(input_ids=ids, attention_mask=mask, output_hidden_states=want_layers)
                past = None
            else:
                out = encoder.model(input_ids=ids, attention_mask=mask, use_cache=self.fusion,
                                    output_hidden_states=want_layers)
                past = (tuple((layer.keys, layer.values) for layer in out.cache.layers)
                        if self.fusion else None)
        states = out.last_hidden_state
        pool_states = (out.hidden_states[1] + out.hidden_states[-1]) / 2 if want_layers else states
        return Instruction(states, mask, masked_mean(pool_states, mask), past)

    def generate_adapter(self, instruction: Instruction) -> LoraWeights:
        """One adapter per encoded instruction."""
        return self.hypernet(instruction.pooled)

    # ---- instance side ----------------------------------------------------------------
    def _encode_t5(self, input_ids, attention_mask, instruction, index, fuse):
        enc = self.base.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if fuse and instruction is not None:
            ins = instruction.for_batch(index, input_ids.shape[0])
            enc = torch.cat([ins.states.to(enc.dtype), enc], dim=1)
            attention_mask = torch.cat([ins.mask.to(attention_mask.dtype), attention_mask], dim=1)
        return BaseModelOutput(last_hidden_state=enc), attention_mask

    def _prefix(self, instruction, index, batch, fuse, attention_mask):
        """Causal LMs: (cache holding the instruction prefix or empty, full attention mask)."""
        if not (fuse and instruction is not None):
            return DynamicCache(config=self.base.config), attention_mask
        ins = instruction.for_batch(index, batch)
        full = torch.cat([ins.mask.to(attention_mask.dtype), attention_mask], dim=1)
        return prefix_cache(self.base.config, ins.past), full

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                adapter: LoraWeights | None = None, index: torch.Tensor | None = None,
                instruction: Instruction | None = None, fuse: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced logits aligned with labels: logits[b, t] predicts labels[b, t] (-100 = ignore).

        T5: input_ids = instance source, labels = target. Causal: input_ids = source + target,
        labels = -100 on the source part."""
        fuse = self.fusion if fuse is None else fuse
        with self.lora.apply(adapter, index):
            if self.is_encoder_decoder:
                enc, mask = self._encode_t5(input_ids, attention_mask, instruction, index, fuse)
                dec_in = self.base._shift_right(labels)
                out = self.base(encoder_outputs=enc, attention_mask=mask, decoder_input_ids=dec_in, use_cache=False)
                return out.logits, labels
            cache, full = self._prefix(instruction, index, input_ids.shape[0], fuse, attention_mask)
            pos = (full.long().cumsum(-1) - 1).clamp(min=0)[:, -input_ids.shape[1]:]
            out = self.base(input_ids=input_ids, attention_mask=full, position_ids=pos, cache=cache, use_cache=True)
            return out.logits[:, :-1], labels[:, 1:]

    def label_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                     adapter: LoraWeights | None = None, index: torch.Tensor | None = None,
                     instruction: Instruction | None = None, fuse: bool | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`forward` at the scored positions only: (logits (N, vocab), labels (N,), the example row
        of each (N,)). Causal LMs apply the LM head there only: over every position of a short
        instance a 49k-vocabulary head costs as much as a third of SmolLM2's layers."""
        fuse = self.fusion if fuse is None else fuse
        if self.is_encoder_decoder:
            logits, labels = self(input_ids, attention_mask, labels, adapter, index, instruction, fuse)
            keep = labels != IGNORE
            return logits[keep], labels[keep], keep.nonzero()[:, 0]
        with self.lora.apply(adapter, index):
            cache, full = self._prefix(instruction, index, input_ids.shape[0], fuse, attention_mask)
            pos = (full.long().cumsum(-1) - 1).clamp(min=0)[:, -input_ids.shape[1]:]
            hidden = self.base.get_decoder()(input_ids=input_ids, attention_mask=full, position_ids=pos, cache=cache,
                                             use_cache=True).last_hidden_state[:, :-1]
            shifted = labels[:, 1:]
            keep = shifted != IGNORE
            return self.base.get_output_embeddings()(hidden[keep]), shifted[keep], keep.nonzero()[:, 0]

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, adapter: LoraWeights | None = None,
                 index: torch.Tensor | None = None, instruction: Instruction | None = None,
                 max_new_tokens: int = 32, fuse: bool | None = None, **options) -> list[list[int]]:
        """transformers' `generate` over a batch whose examples carry different adapters (and
        fused instructions). Greedy unless `options` (generate's keyword arguments: do_sample,
        temperature, logits_processor, stopping_criteria, ...) say otherwise. Causal LMs:
        left-padded prompts. Returns each example's new tokens up to (not including) EOS."""
        fuse = self.fusion if fuse is None else fuse
        if options.get("num_beams", 1) != 1 or options.get("num_return_sequences", 1) != 1:
            raise ValueError("generate: one sequence per example (num_beams, num_return_sequences = 1): the batch's "
                             "rows carry their own adapters")
        config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                  pad_token_id=self.pad_id, eos_token_id=self.eos_id,
                                  decoder_start_token_id=getattr(self.base.config, "decoder_start_token_id", None))
        with self.lora.apply(adapter, index):
            if self.is_encoder_decoder:
                enc, mask = self._encode_t5(input_ids, attention_mask, instruction, index, fuse)
                out = self.base.generate(encoder_outputs=enc, attention_mask=mask, generation_config=config, **options)
                new = out[:, 1:]  # after the decoder start token
            else:
                # generate expects the ids of every cached position too; the prefix's are never read
                cache, full = self._prefix(instruction, index, input_ids.shape[0], fuse, attention_mask)
                ids = torch.cat([input_ids.new_full((input_ids.shape[0], full.shape[1] - input_ids.shape[1]),
                                                    self.pad_id), input_ids], dim=1)
                out = self.base.generate(input_ids=ids, attention_mask=full, cache=cache, generation_config=config,
                                         **options)
                new = out[:, ids.shape[1]:]
        rows = new.tolist()
        return [[t for t in row[: row.index(self.eos_id)] if t != self.pad_id] if self.eos_id in row else
                [t for t in row if t != self.pad_id] for row in rows]
