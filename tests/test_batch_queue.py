"""BatchQueue: the next batch is formed when the model is free, so what queued during a batch
goes in one batch (Ray Serve 2.60's @serve.batch would cut it into batch_wait_timeout_s
windows); callers that left are not computed; an error reaches every caller of its batch."""
import asyncio

import pytest

from tagi_ray.batch_queue import BatchQueue


def test_items_queued_while_a_batch_runs_form_one_batch():
    async def main():
        calls: list[list[int]] = []
        release = asyncio.Event()

        async def fn(items):
            calls.append(list(items))
            if len(calls) == 1:
                await release.wait()  # the model is busy with the first batch
            return [x * 10 for x in items]

        q = BatchQueue(fn, max_batch_size=32, wait_s=0.001)
        first = asyncio.ensure_future(q.submit(0))
        await asyncio.sleep(0.01)
        later = []
        for i in range(1, 6):  # arrive one by one, each 20 ms apart: far beyond the 1 ms window
            later.append(asyncio.ensure_future(q.submit(i)))
            await asyncio.sleep(0.02)
        release.set()
        assert await first == 0 and await asyncio.gather(*later) == [10, 20, 30, 40, 50]
        return calls

    assert asyncio.run(main()) == [[0], [1, 2, 3, 4, 5]]


def test_max_batch_size_and_the_wait_window():
    async def main():
        calls: list[list[int]] = []

        async def fn(items):
            calls.append(list(items))
            return items

        q = BatchQueue(fn, max_batch_size=3, wait_s=0.05)
        got = await asyncio.gather(*[q.submit(i) for i in range(7)])
        return got, calls

    got, calls = asyncio.run(main())
    assert got == list(range(7)) and [len(c) for c in calls] == [3, 3, 1]


def test_a_cancelled_caller_is_left_out_and_errors_reach_the_whole_batch():
    async def main():
        calls: list[list[str]] = []
        release = asyncio.Event()

        async def fn(items):
            calls.append(list(items))
            if items == ["block"]:
                await release.wait()
                return ["ok"]
            if "boom" in items:
                raise ValueError("bad row")
            return items

        q = BatchQueue(fn, max_batch_size=8, wait_s=0.001)
        blocker = asyncio.ensure_future(q.submit("block"))
        await asyncio.sleep(0.01)
        gone = asyncio.ensure_future(q.submit("gone"))
        a, b = asyncio.ensure_future(q.submit("a")), asyncio.ensure_future(q.submit("boom"))
        await asyncio.sleep(0.01)
        gone.cancel()
        release.set()
        assert await blocker == "ok"
        for fut in (a, b):
            with pytest.raises(ValueError, match="bad row"):
                await fut
        assert await q.submit("after") == "after"  # the queue keeps serving
        return calls

    assert asyncio.run(main()) == [["block"], ["a", "boom"], ["after"]]
