"""InstanceInference deployment: the base model; concurrent requests for *different* adapters
are batched by a `BatchQueue` into one batched-LoRA generation (never one forward per adapter);
a batch is formed when the previous one has finished, so it takes every request that queued
meanwhile (Ray Serve's `@serve.batch` would cut them into 1-item batches: tagi_ray/batch_queue.py).
Streamed and plain requests share those batches: a streamed row hands each new piece of text to
its caller as it is decoded, and a caller that goes away ends its row at the next step.
Adapters come from the shared store (whichever replica created or uploaded them), a bounded set
resident per replica."""
from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from ray import serve

from tagi_ray.adapter_store import AdapterStore, ResidentAdapters, default_store
from tagi_ray.batch_queue import BatchQueue
from tagi_ray.chat import NoChatTemplate, chat_prompt
from tagi_ray.decoding import GREEDY, Decoding, RowStream
from tagi_ray.serve.loading import load_for_serving
from tagi_ray.serve.metrics import observe_batch, observe_lookup
from tagi_ray.serving import AdapterEntry, Completion, checkpoint_hash, complete_mixed


class UnknownAdapter(KeyError):
    """No replica ever created or uploaded this adapter id (it is not in the store)."""


@dataclass
class _Item:
    entry: AdapterEntry
    prompt: str
    max_new_tokens: int
    decoding: Decoding
    stream: RowStream | None = None


_END = object()


@serve.deployment(max_ongoing_requests=64)
class InstanceInference:
    def __init__(self, checkpoint: str, serve_overrides: dict | None = None):
        self.model, self.tokenizer, self.cfg = load_for_serving(checkpoint, serve_overrides)
        store = AdapterStore(self.cfg.serve.adapter_store or default_store(checkpoint_hash(checkpoint)))
        self.adapters = ResidentAdapters(store, self.cfg.serve.adapter_cache_size)
        self._batches = BatchQueue(self._run_batch, self.cfg.serve.max_batch_size, self.cfg.serve.batch_wait_timeout_s)
        self.forward_batches = 0
        self.instances = 0
        self.largest_batch = 0
        self.most_adapters_in_batch = 0
        self.busy_s = 0.0  # time inside forward batches: how loaded this replica was
        self.streamed = 0
        self.cancelled_rows = 0

    async def _entry(self, adapter_id: str) -> AdapterEntry:
        """Resident, else loaded from the shared store (created by any generator replica)."""
        entry, result = await asyncio.to_thread(self.adapters.lookup, adapter_id)
        observe_lookup(adapter_id, result)
        if entry is None:
            raise UnknownAdapter(adapter_id)
        return entry

    def chat_prompt(self, messages: list[dict]) -> str | None:
        """The messages in the base's chat format; None when the base has no chat template."""
        try:
            return chat_prompt(self.tokenizer, messages, self.cfg.serve.chat_template)
        except NoChatTemplate:
            return None

    async def complete(self, adapter_id: str, prompt: str, max_new_tokens: int,
                       decoding: Decoding = GREEDY) -> Completion:
        """One prompt (in the model's input format); joins whatever other requests arrive within
        the batch window (each row keeps its own decoding options)."""
        entry = await self._entry(adapter_id)
        return await self._batches.submit(_Item(entry, prompt, max_new_tokens, decoding))

    async def complete_stream(self, adapter_id: str, prompt: str, max_new_tokens: int,
                              decoding: Decoding = GREEDY) -> AsyncIterator[str | Completion]:
        """`complete`, streamed: yields each new piece of text, then the Completion. If the caller
        stops listening, the row is cancelled: it ends at the next decode step (or never starts)."""
        entry = await self._entry(adapter_id)
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue = asyncio.Queue()
        gone = threading.Event()
        stream = RowStream(emit=lambda piece: loop.call_soon_threadsafe(pieces.put_nowait, piece),
                           cancelled=gone.is_set)
        task = asyncio.ensure_future(self._batches.submit(_Item(entry, prompt, max_new_tokens, decoding, stream)))
        task.add_done_callback(lambda _: pieces.put_nowait(_END))
        self.streamed += 1
        try:
            while (piece := await pieces.get()) is not _END:
                yield piece
            yield task.result()
        finally:
            if not task.done():  # the caller went away mid-stream
                gone.set()
                task.cancel()
                self.cancelled_rows += 1

    async def _run_batch(self, items: list[_Item]) -> list[Completion]:
        self.forward_batches += 1
        self.instances += len(items)
        self.largest_batch = max(self.largest_batch, len(items))
        adapters = len({i.entry.adapter_id for i in items})
        self.most_adapters_in_batch = max(self.most_adapters_in_batch, adapters)
        observe_batch(len(items), adapters)
        start = time.perf_counter()
        try:
            return await asyncio.to_thread(complete_mixed, self.model, self.tokenizer, self.cfg,
                                           [i.entry for i in items], [i.prompt for i in items],
                                           [i.max_new_tokens for i in items], [i.decoding for i in items],
                                           [i.stream for i in items])
        finally:
            self.busy_s += time.perf_counter() - start

    def stats(self) -> dict:
        """This replica's counters (a call reaches one replica; `replica` says which)."""
        return {"replica": serve.get_replica_context().replica_id.unique_id, "forward_batches": self.forward_batches,
                "instances": self.instances, "busy_s": round(self.busy_s, 3), "largest_batch": self.largest_batch,
                "most_adapters_in_batch": self.most_adapters_in_batch, "streamed": self.streamed,
                "cancelled_rows": self.cancelled_rows, "cache": self.adapters.stats()}
