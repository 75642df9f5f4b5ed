"""Which linear layers of a base model get LoRA, and their (layer depth, module type) ids.

Config names are architecture-neutral: "q", "k", "v", "o", "ffn" (or a literal leaf name such
as "wi_0" / "gate_proj"). For T5 "q" matches every attention block's q: encoder self-,
decoder self- and decoder cross-attention, as PEFT's `target_modules=["q"]` does.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

ALIASES = {
    "t5": {"q": ["q"], "k": ["k"], "v": ["v"], "o": ["o"], "ffn": ["wi", "wi_0", "wi_1", "wo"]},
    "llama": {"q": ["q_proj"], "k": ["k_proj"], "v": ["v_proj"], "o": ["o_proj"],
              "ffn": ["gate_proj", "up_proj", "down_proj"]},
}
_LAYER = re.compile(r"\.(?:block|layers|h)\.(\d+)\.")


@dataclass(frozen=True)
class LoraTarget:
    """One adapted linear layer: its module path, depth index, module-type name and shape."""

    name: str
    layer: int
    kind: str
    in_features: int
    out_features: int


def resolve_leaf_names(arch: str, target_modules: list[str]) -> set[str]:
    names: set[str] = set()
    for t in target_modules:
        names.update(ALIASES.get(arch, {}).get(t, [t]))
    return names


def find_targets(model: nn.Module, arch: str, target_modules: list[str]) -> list[LoraTarget]:
    """All nn.Linear modules whose leaf name matches `target_modules`, in module order.

    Depth: T5 decoder blocks are numbered after the encoder's, so every block has its own id.
    """
    leaves = resolve_leaf_names(arch, target_modules)
    n_enc = getattr(model.config, "num_layers", 0) if arch == "t5" else 0
    found: list[LoraTarget] = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or name.rsplit(".", 1)[-1] not in leaves:
            continue
        match = _LAYER.search("." + name + ".")
        if match is None:
            continue  # not inside a transformer block (e.g. lm_head)
        layer = int(match.group(1)) + (n_enc if name.startswith("decoder.") else 0)
        kind = re.sub(r"\.\d+", "", name)
        found.append(LoraTarget(name, layer, kind, module.in_features, module.out_features))
    matched = {t.name.rsplit(".", 1)[-1] for t in found}
    for requested in target_modules:
        if not matched & resolve_leaf_names(arch, [requested]):
            raise ValueError(f"lora.target_modules: {requested!r} matches no linear layer of this {arch} model")
    return found
