"""InstanceInference deployment: the base model; concurrent requests for *different* adapters
are batched by `@serve.batch` into one batched-LoRA generation (never one forward per adapter)."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass

from ray import serve
from ray.serve.handle import DeploymentHandle

from tagi_ray.serve.loading import load_for_serving
from tagi_ray.serving import AdapterEntry, LruCache, generate_mixed


class UnknownAdapter(KeyError):
    """The adapter id was never created by the generator."""


@dataclass
class _Item:
    entry: AdapterEntry
    text: str
    max_new_tokens: int


@serve.deployment(max_ongoing_requests=256)
class InstanceInference:
    def __init__(self, checkpoint: str, generator: DeploymentHandle, serve_overrides: dict | None = None):
        self.model, self.tokenizer, self.cfg = load_for_serving(checkpoint, serve_overrides)
        self.generator = generator
        self.cache = LruCache(self.cfg.serve.adapter_cache_size)
        self._batched.set_max_batch_size(self.cfg.serve.max_batch_size)
        self._batched.set_batch_wait_timeout_s(self.cfg.serve.batch_wait_timeout_s)
        self.forward_batches = 0
        self.instances = 0
        self.largest_batch = 0
        self.most_adapters_in_batch = 0

    async def _entry(self, adapter_id: str) -> AdapterEntry:
        entry = self.cache.get(adapter_id)
        if entry is None:
            entry = await self.generator.get.remote(adapter_id)
            if entry is None:
                raise UnknownAdapter(adapter_id)
            self.cache.put(adapter_id, entry)
        return entry

    async def generate(self, adapter_id: str, text: str, max_new_tokens: int) -> str:
        """One instance; joins whatever other requests arrive within the batch window."""
        entry = await self._entry(adapter_id)
        return await self._batched(_Item(entry, text, max_new_tokens))

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)
    async def _batched(self, items: list[_Item]) -> list[str]:
        self.forward_batches += 1
        self.instances += len(items)
        self.largest_batch = max(self.largest_batch, len(items))
        self.most_adapters_in_batch = max(self.most_adapters_in_batch, len({i.entry.adapter_id for i in items}))
        return await asyncio.to_thread(generate_mixed, self.model, self.tokenizer, self.cfg,
                                       [i.entry for i in items], [i.text for i in items],
                                       [i.max_new_tokens for i in items])

    def stats(self) -> dict:
        return {"forward_batches": self.forward_batches, "instances": self.instances,
                "largest_batch": self.largest_batch, "most_adapters_in_batch": self.most_adapters_in_batch,
                "cache": self.cache.stats()}
