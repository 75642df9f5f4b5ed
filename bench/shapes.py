"""Random-init models with real architectures' shapes for the benchmarks (speed does not depend
on trained weights): t5-small and SmolLM2-135M, with TAGI's batched LoRA + hypernetwork.
On a GPU machine everything runs there in bf16; on CPU in fp32 with a steady allocator."""
from __future__ import annotations

import ctypes
import json
import statistics
import sys
import time
from collections.abc import Callable
from types import SimpleNamespace

import torch
from transformers import LlamaConfig, LlamaForCausalLM, T5Config, T5ForConditionalGeneration

from tagi_ray.config import HypernetConfig, LoraConfig
from tagi_ray.models.base import BaseBundle
from tagi_ray.tagi import TagiModel

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
DTYPE = torch.bfloat16 if DEVICE.type == "cuda" else torch.float32


def steady_allocator() -> bool:
    """CPU: keep freed blocks of up to 32 MB in the process (glibc `mallopt`) instead of handing
    them back to the OS and page-faulting them in again on the next forward. Without this, glibc
    decides by what ran earlier in the process (its mmap threshold grows as big blocks are
    freed), and the side with the larger activations (instruction-in-prompt) measured 5-15 %
    slower or not depending on the benchmark's history. True if set."""
    if DEVICE.type != "cpu" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_mmap_threshold, 32 << 20)) and bool(libc.mallopt(m_trim_threshold, 1 << 30))


STEADY_ALLOCATOR = steady_allocator()

# SNI-like lengths (tokens): instruction Def ~69, Def+2Pos ~197; instance ~44
LENGTHS = {"def": 69, "def+2pos": 197, "instance": 44}


def t5_small() -> BaseBundle:
    cfg = T5Config(vocab_size=32128, d_model=512, d_kv=64, d_ff=1024, num_layers=8, num_decoder_layers=8,
                   num_heads=6, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                   decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)  # t5-small-lm-adapt shape (t5 v1.1)
    torch.manual_seed(0)
    return BaseBundle(T5ForConditionalGeneration(cfg).eval(), SimpleNamespace(pad_token_id=0, eos_token_id=1), "t5")


def smollm2_135m() -> BaseBundle:
    cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                      num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                      tie_word_embeddings=True, pad_token_id=2, eos_token_id=2, bos_token_id=1)
    torch.manual_seed(0)
    return BaseBundle(LlamaForCausalLM(cfg).eval(), SimpleNamespace(pad_token_id=2, eos_token_id=2), "llama")


MODELS: dict[str, Callable[[], BaseBundle]] = {"t5-small": t5_small, "smollm2-135m": smollm2_135m}


def tagi_model(bundle: BaseBundle, rank: int = 32, hidden: int | None = None) -> TagiModel:
    """TAGI on the bundle with the paper's LoRA (rank 32, q and v) and the default hypernetwork."""
    torch.manual_seed(0)
    bundle.model.to(DEVICE, DTYPE)
    return TagiModel(bundle, LoraConfig(rank=rank, alpha=rank, target_modules=["q", "v"]),
                     HypernetConfig(**({"hidden_dim": hidden} if hidden else {}))).to(DEVICE, DTYPE).eval()


def random_ids(batch: int, length: int, vocab: int = 1000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (batch, length), generator=g).to(DEVICE)
    return ids, torch.ones_like(ids)


def timed(fn: Callable[[], object], repeat: int = 5, warmup: int = 1) -> float:
    """Median seconds of `repeat` calls after `warmup` calls (GPU: synchronised)."""
    return timed_interleaved({"fn": fn}, repeat, warmup)["fn"]


def timed_interleaved(fns: dict[str, Callable[[], object]], repeat: int = 5, warmup: int = 1) -> dict[str, float]:
    """Median seconds of each call, the calls interleaved (a, b, a, b, ...), so that a drift in
    machine speed (2 shared cores) hits every side alike instead of whichever ran last."""
    sync = torch.cuda.synchronize if DEVICE.type == "cuda" else (lambda: None)
    times: dict[str, list[float]] = {k: [] for k in fns}
    with torch.no_grad():
        for _ in range(warmup):
            for fn in fns.values():
                fn()
        for _ in range(repeat):
            for k, fn in fns.items():
                sync()
                t0 = time.perf_counter()
                fn()
                sync()
                times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def summary(name: str, ratio: float, goal: str, passed: bool, **extra) -> None:
    """The one-line JSON every benchmark prints last."""
    print(json.dumps({"name": name, "ratio": round(ratio, 3), "goal": goal, "pass": bool(passed),
                      "device": torch.cuda.get_device_name() if DEVICE.type == "cuda" else "cpu",
                      "steady_allocator": STEADY_ALLOCATOR, **extra}))
