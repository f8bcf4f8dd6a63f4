"""The newest global model in a long-running process (the regional service), swapped live.

A ``ModelFollower`` wakes on each of the aggregator's commits (``CommitWatch``) or after
``interval`` seconds, reads the version counter and, when its ``SwapPolicy`` lets the newest
version in, reads that version's blob, checks it against the task's template (the same tensors
and shapes, finite values) and builds the model off to the side. Only a model that passed
replaces the one in use, by one reference assignment: a request that took the old one finishes
on it, and none sees a half-built model. A blob that fails is refused once and for all (a
version's blob never changes) and the old model keeps serving; while Redis is away the last
model keeps serving and ``redis_ok`` says so.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import redis

from shared.aggregation import tensor_problem
from shared.codec import DecodeError, Weights, decode_model
from shared.keys import Keys
from shared.resilience import REDIS_DOWN, Outage
from shared.store import ModelStore
from shared.streams import CommitWatch

T = TypeVar("T")


@dataclass(frozen=True)
class Served(Generic[T]):
    """The model in use and where it came from."""

    version: int
    model: T
    loaded_at: float  # wall clock


@dataclass(frozen=True)
class SwapPolicy:
    """Which new versions replace the served one: every one (``min_interval`` 0), or at most one
    swap per ``min_interval`` seconds (the newest version when the interval is up)."""

    min_interval: float = 0.0

    def __post_init__(self) -> None:
        if self.min_interval < 0:
            raise ValueError(f"min_interval must be >= 0, got {self.min_interval}")


class ModelFollower(Generic[T]):
    def __init__(
        self,
        connection: redis.Redis,
        keys: Keys,
        template: Weights,
        build: Callable[[Weights], T],
        policy: SwapPolicy = SwapPolicy(),
        say: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = ModelStore(connection, keys)
        self.r, self.keys = connection, keys
        self.template = template
        self.build = build
        self.policy = policy
        self.say = say or (lambda _m: None)
        self.clock = clock
        self.served: Served[T] | None = None
        self.refused: dict[int, str] = {}  # version -> why its blob was not served
        self.swaps = 0
        self.redis_ok = True
        self._swapped_at = -float("inf")

    def check(self) -> bool:
        """One look at the federation's version: serve the newest one the policy lets in (True
        if the served model changed). Redis errors propagate; ``run`` rides them out."""
        version = self.store.current_version()
        served = self.served
        if version is None or version in self.refused:
            return False
        if served is not None and version <= served.version:
            return False
        if served is not None and self.clock() - self._swapped_at < self.policy.min_interval:
            return False  # the next look after the interval takes the newest version then
        blob = self.store.read_raw(version)
        if blob is None:  # left the window between the two reads: the next look finds a newer
            return False
        built, problem = self._build(version, blob)
        if problem is not None:
            self.refused[version] = problem
            self.say(f"service: refused model version {version}: {problem}; still serving "
                     f"{'nothing' if served is None else f'version {served.version}'}")  # fmt: skip
            return False
        self.served = Served(version, built, time.time())
        self._swapped_at = self.clock()
        self.swaps += 1
        return True

    def _build(self, version: int, blob: bytes) -> tuple[T | None, str | None]:
        """(the built model, None), or (None, why this blob cannot be served)."""
        try:
            model = decode_model(blob)
        except DecodeError as exc:
            return None, f"its blob does not decode ({exc})"
        if model.version != version:
            return None, f"its blob says version {model.version}"
        problem = tensor_problem(model.weights, self.template)
        if problem is not None:
            return None, problem[1]
        try:
            return self.build(model.weights), None
        except Exception as exc:  # noqa: BLE001 - any failure to build keeps the old model
            return None, f"the task could not build it ({type(exc).__name__}: {exc})"

    def run(self, stop: threading.Event, interval: float = 1.0) -> None:
        """Follow until ``stop`` is set: on each commit, or every ``interval`` seconds."""
        outage = Outage(self.say, "service")
        watch: CommitWatch | None = None
        while not stop.is_set():
            try:
                watch = watch or CommitWatch(self.r, self.keys)
                self.check()
                self.redis_ok = True
                outage.recovered()
                watch.wait(interval)
            except REDIS_DOWN as exc:
                self.redis_ok = False
                stop.wait(outage.failed(exc))
