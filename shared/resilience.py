"""Riding out a Redis outage: retry with backoff, and say so once per interval, not per retry.

Every long-running fedq process (worker, aggregator, coordinator) goes through ``Outage`` when
Redis cannot be reached: it waits ``base`` seconds, doubling up to ``cap``, and prints one line
when the outage starts, one every ``interval`` seconds while it lasts, and one when Redis is
back. Nothing a process holds is dropped meanwhile: an aggregator's unsettled updates stay
pending in the stream, a worker holds its finished update until it is published.

A Redis at its memory cap (``maxmemory`` with ``noeviction``, as fedq runs it) answers every
write that would grow it with "OOM command not allowed": that is an outage of writes, not a
bad request, and waiting is the cure (the aggregator settles and deletes what is queued, an
operator raises the cap), so it is retried the same way; dropping the write would lose an
update, and raising would restart a role into the same refusal.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import redis

# Redis cannot take the call now: unreachable, or refusing writes at its memory cap
REDIS_DOWN = (
    redis.ConnectionError,
    redis.TimeoutError,
    ConnectionError,
    TimeoutError,
    redis.exceptions.OutOfMemoryError,
)
T = TypeVar("T")


class Outage:
    def __init__(
        self,
        say: Callable[[str], None] | None,
        who: str,
        interval: float = 10.0,
        base: float = 0.2,
        cap: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.say = say or (lambda _m: None)
        self.who = who
        self.interval = interval
        self.base = base
        self.cap = cap
        self.clock = clock
        self.since: float | None = None
        self.retries = 0
        self._told_at = 0.0
        self._full = False  # this outage is Redis refusing writes (at maxmemory), not away

    @property
    def down(self) -> bool:
        return self.since is not None

    def failed(self, exc: BaseException) -> float:
        """Record a failed attempt; returns how long to wait before the next one."""
        now = self.clock()
        if self.since is None:
            self.since, self.retries = now, 0
            self._full = isinstance(exc, redis.exceptions.OutOfMemoryError)
            what = "Redis refuses writes: out of memory" if self._full else "Redis unreachable"
            self.say(f"{self.who}: {what} ({_brief(exc)}); retrying with backoff")
            self._told_at = now
        elif now - self._told_at >= self.interval:
            what = "Redis still refuses writes" if self._full else "Redis still unreachable"
            self.say(f"{self.who}: {what} after {now - self.since:.0f}s "
                     f"({self.retries} retries)")  # fmt: skip
            self._told_at = now
        self.retries += 1
        return min(self.cap, self.base * 2 ** min(self.retries - 1, 16))

    def recovered(self) -> None:
        if self.since is not None:
            what = "Redis takes writes again" if self._full else "Redis reachable again"
            self.say(f"{self.who}: {what} after {self.clock() - self.since:.1f}s")
            self.since = None


def retry_redis(
    action: Callable[[], T],
    outage: Outage,
    should_stop: Callable[[], bool] = lambda: False,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run ``action`` until it gets through to Redis (or ``should_stop``: re-raises then)."""
    while True:
        try:
            result = action()
        except redis.AuthenticationError:
            raise  # wrong credentials do not get better by waiting
        except REDIS_DOWN as exc:
            if should_stop():
                raise
            sleep(outage.failed(exc))
            continue
        outage.recovered()
        return result


def _brief(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:160]
