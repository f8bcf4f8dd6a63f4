"""Requests that arrive while the model is busy are answered together by its next call.

Scoring one shopper is a few small products whose cost is mostly the model's per-call overhead,
so eight shoppers cost about what one does. A ``MicroBatcher`` never waits to fill a batch: a
request that finds the model idle is computed at once (alone: no added latency at low load);
the ones that arrive meanwhile form the next batch. Batches run in one worker thread, so the
event loop keeps reading requests while the model computes (torch releases the GIL). A batch
holds requests of one model only (``key``: the model each request took when it started), so a
swap never mixes versions in a batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, TypeVar

Q = TypeVar("Q")
R = TypeVar("R")


class MicroBatcher(Generic[Q, R]):
    def __init__(self, run: Callable[[Any, list[Q]], list[R]], max_batch: int = 64) -> None:
        """``run(key, queries)`` answers queries in order (in a worker thread)."""
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.run = run
        self.max_batch = max_batch
        self.batches = 0
        self.answered = 0
        self._pending: list[tuple[Hashable, Any, Q, asyncio.Future]] = []
        self._busy = False
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="batch")

    async def submit(self, key: Any, query: Q) -> R:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append((id(key), key, query, future))
        if not self._busy:
            self._busy = True
            loop.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                first = self._pending[0][0]
                batch = [p for p in self._pending if p[0] == first][: self.max_batch]
                taken = {id(p[3]) for p in batch}
                self._pending = [p for p in self._pending if id(p[3]) not in taken]
                live = [p for p in batch if not p[3].done()]  # a client that left is skipped
                if not live:
                    continue
                try:
                    answers = await loop.run_in_executor(
                        self._thread, self.run, live[0][1], [p[2] for p in live]
                    )
                except Exception as exc:  # noqa: BLE001 - each request gets the failure
                    for p in live:
                        if not p[3].done():
                            p[3].set_exception(exc)
                    continue
                self.batches += 1
                self.answered += len(live)
                for p, answer in zip(live, answers, strict=True):
                    if not p[3].done():
                        p[3].set_result(answer)
        finally:
            self._busy = False

    def close(self) -> None:
        self._thread.shutdown(wait=False, cancel_futures=True)
