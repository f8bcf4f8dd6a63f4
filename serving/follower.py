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

from shared import consensus
from shared.aggregation import tensor_problem
from shared.codec import DecodeError, Weights, decode_model
from shared.evaluations import parse_accepted, voters
from shared.keys import Keys
from shared.resilience import REDIS_DOWN, Outage
from shared.store import ModelStore
from shared.streams import CommitWatch
from tasks.api import MetricSchema

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
    swap per ``min_interval`` seconds (the newest version when the interval is up); with
    ``evaluated``, only versions the regions evaluated (a quorum of them) whose federated
    validation headline did not fall from the evaluated version before them
    (``EvaluationGate``)."""

    min_interval: float = 0.0
    evaluated: bool = False

    def __post_init__(self) -> None:
        if self.min_interval < 0:
            raise ValueError(f"min_interval must be >= 0, got {self.min_interval}")


HELD_BLOBS = 8  # candidate blobs an evaluation gate keeps while their evaluations run


class EvaluationGate:
    """The federation's evaluations as a swap policy sees them.

    A version's blob is kept past the store's window only until its evaluations end (the pin),
    and the last result often arrives after that: the gate copies each pinned version's blob as
    soon as it sees the pin, and reads the accepted results (the metrics stream, written only by
    the aggregator and re-checked here) incrementally. A version is a candidate once it counts
    (``shared.consensus.settled``: every region not quarantined reported it, or two thirds did
    and ``grace`` seconds passed); it may be served unless it fell from the candidate before it
    (``consensus.fall``: the clamped combination fell and most regions saw their own figure
    fall), so no single region's figures can hold the service back or push a bad version in.
    """

    def __init__(
        self,
        connection: redis.Redis,
        keys: Keys,
        regions: tuple[str, ...],
        schema: MetricSchema,
        grace: float = 60.0,
        max_failures: int = 5,
    ) -> None:
        self.r, self.keys, self.regions, self.schema = connection, keys, regions, schema
        self.grace, self.max_failures = grace, max_failures
        self.blobs: dict[int, bytes] = {}
        self.validation: dict[int, dict[str, dict[str, float]]] = {}  # version -> region -> figures
        self.first_result: dict[int, float] = {}  # version -> when its first result was accepted
        self.voters: tuple[str, ...] = regions
        self.now = 0.0  # Redis's clock at the last look
        self._last = b"0-0"

    def look(self, newer_than: int) -> None:
        """Copy new pinned blobs past ``newer_than`` and read the new accepted results."""
        for raw in self.r.hkeys(self.keys.pinned):
            version = _as_version(raw)
            if version is not None and version > newer_than and version not in self.blobs:
                blob = self.r.get(self.keys.model(version))
                if blob is not None:
                    self.blobs[version] = blob
        for version in sorted(self.blobs)[:-HELD_BLOBS]:
            del self.blobs[version]
        for entry_id, fields in self.r.xrange(self.keys.metrics, f"({self._last.decode()}", "+"):
            self._last = entry_id
            record = parse_accepted(fields, self.schema)
            if record is not None:
                version = record["version"]
                self.validation.setdefault(version, {})[record["region"]] = record["validation"]
                accepted = int(entry_id.split(b"-")[0]) / 1000.0
                self.first_result[version] = min(self.first_result.get(version, accepted), accepted)
        self.voters = tuple(voters(self.r, self.keys, self.regions, self.max_failures))
        seconds, micros = self.r.time()
        self.now = seconds + micros / 1e6

    def counted(self, version: int) -> dict[str, dict[str, float]] | None:
        """The voters' validation figures of ``version`` once it counts, else None."""
        by_region = {r: v for r, v in self.validation.get(version, {}).items() if r in self.voters}
        waited = self.now - self.first_result.get(version, self.now)
        if not by_region or not consensus.settled(by_region, self.voters, waited, self.grace):
            return None
        return by_region

    def headline(self, version: int) -> float | None:
        """The version's validation headline, regions combined robustly (None until it counts)."""
        figures = self.counted(version)
        if figures is None:
            return None
        return consensus.robust_combine(self.schema, figures)[self.schema.headline]

    def newest(self, newer_than: int) -> tuple[int | None, dict[int, str]]:
        """The newest counted version past ``newer_than`` that did not fall from the counted
        version before it (None if none), and why each newer one that fell may not be served."""
        complete = sorted(v for v in self.validation if self.counted(v) is not None)
        fell: dict[int, str] = {}
        for i in range(len(complete) - 1, -1, -1):
            version = complete[i]
            if version <= newer_than:
                break
            if i == 0:
                return version, fell
            previous = complete[i - 1]
            why = consensus.fall(self.schema, self.counted(previous), self.counted(version))
            if why is None:
                return version, fell
            fell[version] = f"{why} at version {previous}"
        return None, fell

    def take(self, version: int) -> bytes | None:
        """The version's blob: the copy held since its pin, or the store's if still there."""
        for v in [v for v in self.blobs if v <= version]:
            blob = self.blobs.pop(v)
            if v == version:
                return blob
        return self.r.get(self.keys.model(version))


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
        gate: EvaluationGate | None = None,
    ) -> None:
        if policy.evaluated and gate is None:
            raise ValueError("a policy of evaluated versions needs the federation's evaluations")
        self.gate = gate if policy.evaluated else None
        self.store = ModelStore(connection, keys)
        self.r, self.keys = connection, keys
        self.template = template
        self.build = build
        self.policy = policy
        self.say = say or (lambda _m: None)
        self.clock = clock
        self.served: Served[T] | None = None
        self.refused: dict[int, str] = {}  # version -> why its blob was not served
        self.held_back: dict[int, str] = {}  # version -> why the policy passed it over
        self.swaps = 0
        self.redis_ok = True
        self.problem: str | None = None  # why the last look failed, if it did (not an outage)
        self._swapped_at = -float("inf")

    def check(self) -> bool:
        """One look at the federation's version: serve the newest one the policy lets in (True
        if the served model changed). Redis errors propagate; ``run`` rides them out."""
        served = self.served
        if self.gate is not None and served is not None:
            return self._check_evaluated(served)
        version = self.store.current_version()
        if version is None or version in self.refused:
            return False
        if served is not None and version <= served.version:
            return False
        if served is not None and self.clock() - self._swapped_at < self.policy.min_interval:
            return False  # the next look after the interval takes the newest version then
        blob = self.store.read_raw(version)
        if blob is None:  # left the window between the two reads: the next look finds a newer
            return False
        return self._swap(version, blob)

    def _check_evaluated(self, served: Served[T]) -> bool:
        """The evaluated policy once a model serves (the first one is the newest there is: a
        service is ready before the first evaluation ends)."""
        gate = self.gate
        assert gate is not None
        gate.look(served.version)
        version, fell = gate.newest(served.version)
        for passed, why in fell.items():
            if passed not in self.held_back:
                self.held_back[passed] = why
                self.say(f"service: passed over version {passed}: {why}; serving version "
                         f"{served.version if version is None else version}")  # fmt: skip
        if version is None or version in self.refused:
            for passed in fell:
                gate.take(passed)  # their blobs are not needed any more
            return False
        if self.clock() - self._swapped_at < self.policy.min_interval:
            return False
        blob = gate.take(version)
        if blob is None:
            self.held_back[version] = "its blob left Redis before the service could copy it"
            return False
        return self._swap(version, blob)

    def _swap(self, version: int, blob: bytes) -> bool:
        served = self.served
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
            except Exception as exc:  # noqa: BLE001 - e.g. a version counter that is no number
                # the follower never dies: the served model stays, the problem is said, and the
                # next look (after the interval) tries again
                problem = f"{type(exc).__name__}: {str(exc)[:200]}"
                if problem != self.problem:  # said once, not at every look
                    served = "nothing" if self.served is None else f"version {self.served.version}"
                    self.say(f"service: cannot follow the federation ({problem}); still "
                             f"serving {served}")  # fmt: skip
                self.problem = problem
                stop.wait(interval)
            else:
                self.problem = None


def _as_version(raw: bytes) -> int | None:
    try:
        return int(raw)
    except ValueError:
        return None
