"""The service's micro-batcher: requests that arrive while a batch computes share the next one,
one model per batch, and a failure reaches every request of its batch."""

from __future__ import annotations

import asyncio
import threading

import pytest

from serving.batching import MicroBatcher


def test_a_lone_request_is_answered_alone_and_the_rest_share_batches():
    calls: list[tuple[str, list[int]]] = []
    release = threading.Event()

    def run(key: str, queries: list[int]) -> list[int]:
        if not calls:
            release.wait(5)  # the first batch is slow: the others queue up behind it
        calls.append((key, list(queries)))
        return [q * 10 for q in queries]

    async def main() -> list[int]:
        batcher = MicroBatcher(run)
        first = asyncio.ensure_future(batcher.submit("m", 0))
        await asyncio.sleep(0.05)
        rest = [asyncio.ensure_future(batcher.submit("m", i)) for i in range(1, 6)]
        await asyncio.sleep(0.05)
        release.set()
        return [await first, *[await f for f in rest]]

    assert asyncio.run(main()) == [0, 10, 20, 30, 40, 50]
    assert calls == [("m", [0]), ("m", [1, 2, 3, 4, 5])]


def test_a_batch_holds_one_models_requests():
    calls: list[tuple[str, list[int]]] = []
    release = threading.Event()

    def run(key: str, queries: list[int]) -> list[str]:
        if not calls:
            release.wait(5)
        calls.append((key, list(queries)))
        return [f"{key}{q}" for q in queries]

    async def main() -> list[str]:
        batcher = MicroBatcher(run, max_batch=2)
        futures = [asyncio.ensure_future(batcher.submit("old", 0))]
        await asyncio.sleep(0.05)
        for key, q in [("old", 1), ("new", 2), ("old", 3), ("old", 4), ("new", 5)]:
            futures.append(asyncio.ensure_future(batcher.submit(key, q)))
        await asyncio.sleep(0.05)
        release.set()
        return [await f for f in futures]

    assert asyncio.run(main()) == ["old0", "old1", "new2", "old3", "old4", "new5"]
    # the oldest waiting request picks the next batch: no model waits behind another for long
    assert calls == [("old", [0]), ("old", [1, 3]), ("new", [2, 5]), ("old", [4])]


def test_a_failing_batch_fails_each_of_its_requests_and_the_next_batch_runs():
    def run(key: str, queries: list[int]) -> list[int]:
        if key == "bad":
            raise RuntimeError("model broke")
        return queries

    async def main():
        batcher = MicroBatcher(run)
        bad = asyncio.gather(batcher.submit("bad", 1), batcher.submit("bad", 2),
                             return_exceptions=True)  # fmt: skip
        good = batcher.submit("good", 3)
        return await bad, await good

    (first, second), good = asyncio.run(main())
    assert isinstance(first, RuntimeError) and isinstance(second, RuntimeError)
    assert good == 3


def test_max_batch_must_be_positive():
    with pytest.raises(ValueError, match="max_batch"):
        MicroBatcher(lambda _k, q: q, max_batch=0)
