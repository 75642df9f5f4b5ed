"""Dynamic batching for one model: concurrent callers' items are joined into one call of `fn`,
and the next batch is formed only when the model is free.

Ray Serve 2.60's `@serve.batch` closes a batch `batch_wait_timeout_s` after its first item and
forms the next one at once, while the previous batch still runs (`_BatchQueue._process_batches`
does not wait for its semaphore). Under load a replica then runs a line of 1-item batches,
busy all the time (measured: 1.07 instances per forward batch with both replicas 98 % busy).
Here a batch takes everything that queued up while the previous one ran (up to
`max_batch_size`), then waits at most `wait_s` after its first item for more.
"""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class BatchQueue(Generic[T, R]):
    """`await queue.submit(item)` -> `fn(items)[i]` for this item's place in its batch. `fn` runs
    one batch at a time; callers cancelled before their batch starts are left out of it."""

    def __init__(self, fn: Callable[[list[T]], Awaitable[Sequence[R]]], max_batch_size: int, wait_s: float):
        self.fn, self.max_batch_size, self.wait_s = fn, max_batch_size, wait_s
        self._queue: asyncio.Queue | None = None
        self._runner: asyncio.Task | None = None

    async def submit(self, item: T) -> R:
        if self._queue is None:  # created in the running loop (a replica's user-code loop)
            self._queue = asyncio.Queue()
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self._run())
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((item, future))
        return await future

    async def _next_batch(self) -> list[tuple[T, asyncio.Future]]:
        queue, loop = self._queue, asyncio.get_running_loop()
        batch = [await queue.get()]
        deadline = loop.time() + self.wait_s
        while len(batch) < self.max_batch_size:
            if not queue.empty():  # queued while the model was busy: no waiting for these
                batch.append(queue.get_nowait())
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(queue.get(), remaining))
            except asyncio.TimeoutError:
                break
        return [(item, future) for item, future in batch if not future.done()]  # done: its caller left

    async def _run(self) -> None:
        while True:
            batch = await self._next_batch()
            if not batch:
                continue
            try:
                results = list(await self.fn([item for item, _ in batch]))
                if len(results) != len(batch):
                    raise RuntimeError(f"the batch function returned {len(results)} results for {len(batch)} items")
            except Exception as err:  # every caller of the batch gets the error
                for _, future in batch:
                    if not future.done():
                        future.set_exception(err)
                continue
            for (_, future), result in zip(batch, results):
                if not future.done():
                    future.set_result(result)
