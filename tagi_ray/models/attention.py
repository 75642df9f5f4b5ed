"""Grouped-query attention without the `repeat_kv` copies on CPU.

transformers' "sdpa" attention hands grouped K/V (SmolLM2: 3 K/V heads for 9 query heads) to
the kernel only when there is no attention mask; with a mask (padding, or TAGI's cached
instruction prefix) it first copies K and V `num_key_value_groups` times. On CPU, torch's SDPA
takes grouped K/V with a mask (`enable_gqa=True`), with bit-identical results, so the copies
are pure overhead: about half of the attention time at SNI lengths. `use_grouped_sdpa(model)`
switches a causal LM to that path; other devices and unusual calls fall back to "sdpa".
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "sdpa_grouped"


def grouped_sdpa_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                           attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                           is_causal: bool | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """An AttentionInterface function: q (b, h, q, d), k/v (b, h_kv, k, d) -> (b, q, h, d)."""
    q_len, kv_len = query.shape[2], key.shape[2]
    is_causal = bool(is_causal if is_causal is not None else getattr(module, "is_causal", True))
    is_causal = q_len > 1 and attention_mask is None and is_causal
    if (query.device.type != "cpu" or key.shape[1] == query.shape[1] or kwargs.get("position_bias") is not None
            or kwargs.get("softcap") is not None or (is_causal and kv_len != q_len)):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=dropout,
                                         scale=scaling, is_causal=is_causal, enable_gqa=True)
    return out.transpose(1, 2).contiguous(), None


def use_grouped_sdpa(model: nn.Module) -> bool:
    """Switch a grouped-query causal LM from "sdpa" to `grouped_sdpa_attention`; True if switched."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    heads, kv_heads = getattr(config, "num_attention_heads", None), getattr(config, "num_key_value_heads", None)
    if not heads or not kv_heads or kv_heads == heads:
        return False
    if NAME not in AttentionInterface._global_mapping:
        AttentionInterface.register(NAME, grouped_sdpa_attention)
        AttentionMaskInterface.register(NAME, sdpa_mask)  # same masks as "sdpa" (unregistered: no mask at all)
    model.set_attn_implementation(NAME)
    return True
