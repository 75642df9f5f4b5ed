"""Generated adapters persisted where every serving replica sees them, and a bounded resident set.

    <root>/<adapter_id>/adapter.safetensors   LoRA A/B of every target + the encoded instruction
                                              (fusion states, mask, pooled; causal LMs: key/values)
    <root>/<adapter_id>/meta.json             id, instruction, examples, instruction tokens, created

An adapter is written to a temp name and renamed into place, so presence means complete. Any
replica (of any deployment, on any node that mounts `root`) can load any adapter; a restarted
replica finds them all again. `ResidentAdapters` keeps at most `capacity` of them in a replica's
memory (least recently used evicted) and loads the others on demand.
"""
from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from tagi_ray.cache import cache_root
from tagi_ray.lora import LoraWeights
from tagi_ray.lru_cache import LruCache
from tagi_ray.serving import AdapterEntry
from tagi_ray.tagi import Instruction

WEIGHTS = "adapter.safetensors"
META = "meta.json"


def default_store(ckpt_hash: str) -> Path:
    """`$TAGI_CACHE_DIR/adapters/<checkpoint hash>` (serve.adapter_store "" on one machine)."""
    return cache_root() / "adapters" / ckpt_hash[:16]


def _tensors(entry: AdapterEntry) -> dict[str, torch.Tensor]:
    ins = entry.instruction
    out = {f"A.{k}": v for k, v in entry.weights.A.items()} | {f"B.{k}": v for k, v in entry.weights.B.items()}
    out |= {"instruction.states": ins.states, "instruction.mask": ins.mask, "instruction.pooled": ins.pooled}
    for i, (k, v) in enumerate(ins.past or ()):
        out[f"past.{i}.k"], out[f"past.{i}.v"] = k, v
    return {name: t.detach().to("cpu").contiguous() for name, t in out.items()}


def _entry(adapter_id: str, tensors: dict[str, torch.Tensor], tokens: int) -> AdapterEntry:
    weights = LoraWeights({k[2:]: v for k, v in tensors.items() if k.startswith("A.")},
                          {k[2:]: v for k, v in tensors.items() if k.startswith("B.")})
    layers = sorted({int(k.split(".")[1]) for k in tensors if k.startswith("past.")})
    past = tuple((tensors[f"past.{i}.k"], tensors[f"past.{i}.v"]) for i in layers) or None
    ins = Instruction(tensors["instruction.states"], tensors["instruction.mask"], tensors["instruction.pooled"], past)
    return AdapterEntry(adapter_id, weights, ins, tokens)


class AdapterStore:
    """Adapters on disk under `root` (see the module docstring)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def __contains__(self, adapter_id: str) -> bool:
        return (self.root / adapter_id / META).is_file()

    def put(self, entry: AdapterEntry, meta: dict) -> None:
        """Persist an adapter (a no-op when it is already there: ids are content hashes)."""
        if entry.adapter_id in self:
            return
        tmp = self.root / f".{entry.adapter_id}.tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file(_tensors(entry), str(tmp / WEIGHTS), metadata={"adapter_id": entry.adapter_id})
        (tmp / META).write_text(json.dumps({**meta, "adapter_id": entry.adapter_id,
                                            "instruction_tokens": entry.instruction_tokens, "created": time.time()}))
        try:
            tmp.rename(self.root / entry.adapter_id)
        except OSError:  # another replica persisted the same adapter first
            shutil.rmtree(tmp, ignore_errors=True)

    def meta(self, adapter_id: str) -> dict | None:
        path = self.root / adapter_id / META
        return json.loads(path.read_text()) if path.is_file() else None

    def load(self, adapter_id: str) -> AdapterEntry | None:
        meta = self.meta(adapter_id)
        if meta is None:
            return None
        return _entry(adapter_id, load_file(str(self.root / adapter_id / WEIGHTS)), meta["instruction_tokens"])

    def metas(self) -> list[dict]:
        """The metadata of every stored adapter, oldest first."""
        metas = [self.meta(p.name) for p in self.root.iterdir() if not p.name.startswith(".")]
        return sorted((m for m in metas if m), key=lambda m: m["created"])

    def ids(self) -> list[str]:
        """Every stored adapter, oldest first."""
        return [m["adapter_id"] for m in self.metas()]


class ResidentAdapters:
    """A replica's bounded set of adapters in memory over a shared AdapterStore (thread-safe:
    replicas call it from worker threads)."""

    def __init__(self, store: AdapterStore, capacity: int):
        self.store, self.cache = store, LruCache(capacity)
        self.loads = 0
        self._lock = threading.Lock()

    def get(self, adapter_id: str) -> AdapterEntry | None:
        """The adapter, from memory or loaded from the store; None if the store has no such id."""
        return self.lookup(adapter_id)[0]

    def lookup(self, adapter_id: str) -> tuple[AdapterEntry | None, str]:
        """(the adapter or None, "hit" | "load" | "miss"): resident, read from the store, unknown."""
        with self._lock:
            entry = self.cache.get(adapter_id)
            if entry is not None:
                return entry, "hit"
            entry = self.store.load(adapter_id)
            if entry is None:
                return None, "miss"
            self.loads += 1
            self.cache.put(adapter_id, entry)
            return entry, "load"

    def put(self, entry: AdapterEntry, meta: dict) -> None:
        """Persist (for every replica) and keep resident here."""
        self.store.put(entry, meta)
        with self._lock:
            self.cache.put(entry.adapter_id, entry)

    def stats(self) -> dict:
        return {**self.cache.stats(), "loads": self.loads}
