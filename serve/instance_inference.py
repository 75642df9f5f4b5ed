"""InstanceInference deployment: the base model; concurrent requests for *different* adapters
are batched by `@serve.batch` into one batched-LoRA generation (never one forward per adapter).
Adapters come from the shared store (whichever generator replica created them), a bounded set
resident per replica."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass

from ray import serve

from tagi_ray.serve.loading import load_for_serving
from tagi_ray.adapter_store import AdapterStore, ResidentAdapters, default_store
from tagi_ray.decoding import GREEDY, Decoding
from tagi_ray.serving import AdapterEntry, checkpoint_hash, generate_mixed


class UnknownAdapter(KeyError):
    """No generator replica ever created this adapter id (it is not in the store)."""


@dataclass
class _Item:
    entry: AdapterEntry
    text: str
    max_new_tokens: int
    decoding: Decoding


@serve.deployment(max_ongoing_requests=256)
class InstanceInference:
    def __init__(self, checkpoint: str, serve_overrides: dict | None = None):
        self.model, self.tokenizer, self.cfg = load_for_serving(checkpoint, serve_overrides)
        store = AdapterStore(self.cfg.serve.adapter_store or default_store(checkpoint_hash(checkpoint)))
        self.adapters = ResidentAdapters(store, self.cfg.serve.adapter_cache_size)
        self._batched.set_max_batch_size(self.cfg.serve.max_batch_size)
        self._batched.set_batch_wait_timeout_s(self.cfg.serve.batch_wait_timeout_s)
        self.forward_batches = 0
        self.instances = 0
        self.largest_batch = 0
        self.most_adapters_in_batch = 0

    async def _entry(self, adapter_id: str) -> AdapterEntry:
        """Resident, else loaded from the shared store (created by any generator replica)."""
        entry = await asyncio.to_thread(self.adapters.get, adapter_id)
        if entry is None:
            raise UnknownAdapter(adapter_id)
        return entry

    async def generate(self, adapter_id: str, text: str, max_new_tokens: int, decoding: Decoding = GREEDY) -> str:
        """One instance; joins whatever other requests arrive within the batch window (each row
        keeps its own decoding options)."""
        entry = await self._entry(adapter_id)
        return await self._batched(_Item(entry, text, max_new_tokens, decoding))

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)
    async def _batched(self, items: list[_Item]) -> list[str]:
        self.forward_batches += 1
        self.instances += len(items)
        self.largest_batch = max(self.largest_batch, len(items))
        self.most_adapters_in_batch = max(self.most_adapters_in_batch, len({i.entry.adapter_id for i in items}))
        return await asyncio.to_thread(generate_mixed, self.model, self.tokenizer, self.cfg,
                                       [i.entry for i in items], [i.text for i in items],
                                       [i.max_new_tokens for i in items], [i.decoding for i in items])

    def stats(self) -> dict:
        return {"forward_batches": self.forward_batches, "instances": self.instances,
                "largest_batch": self.largest_batch, "most_adapters_in_batch": self.most_adapters_in_batch,
                "cache": self.adapters.stats()}
