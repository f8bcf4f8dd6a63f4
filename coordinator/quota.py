"""Each region's share of Redis: the janitor of the regions' streams and the aggregator's read.

A region's ACL user may append to its own update and evaluation streams, and Redis's ACL cannot
bound an entry's size; a script cannot either, since a worker that may call it may call XADD
itself. So the bound is enforced after the write, inside Redis, without pulling the bytes out:
``quota.lua`` walks each stream's entries not yet delivered to the aggregators' consumer group
and deletes every entry larger than the largest honest one (an update: the current model's blob
x ``UPDATE_FACTOR`` + ``UPDATE_MARGIN``, an fp32 delta of the model and its header; a result:
``MAX_RESULT_BYTES`` + ``RESULT_MARGIN``) and every entry past the region's backlog bound
(``max(MIN_BACKLOG, 4 x`` the most a region's honest workers can leave undelivered) entries, or
bytes), recording each deletion as a rejection under the entry (``too_large`` or ``quota``,
the region named). A measured flood (60 entries of 50 MB in 22 s from one region) grew Redis to
2 GB and the aggregator to 1.6 GB, and at Redis's memory cap it would have stalled every
region's writes.

The janitor runs in one MULTI with the aggregator's XREADGROUP, so no entry reaches the
aggregator before it was measured, and the read's COUNT (per stream) keeps the bytes of one read
under ``READ_BUDGET``. A blocking XREADGROUP would hand over whatever arrives while it waits,
unmeasured (up to Redis's 512 MB bulk limit), so an idle aggregator polls every ``POLL`` seconds
instead. Each entry is measured once: ``Quota`` remembers the last entry the janitor examined on
each stream and the ones it kept that the aggregator has not read yet.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis

from coordinator.commit import StaleWriter
from coordinator.validation import MAX_UPDATE_BYTES
from shared.codec import RejectReason
from shared.evaluations import MAX_RESULT_BYTES
from shared.federation import Federation
from shared.keys import AGGREGATOR_GROUP, Keys

JANITOR_SCRIPT = (Path(__file__).with_name("quota.lua")).read_text()
UPDATE_FACTOR = 1.1  # x the model's blob: an fp32 delta of the same tensors
UPDATE_MARGIN = 64 * 1024  # bytes of header, ids and signature on top
RESULT_MARGIN = 4 * 1024  # bytes of ids and signature beside a result's JSON
MIN_BACKLOG = 64  # undelivered entries a region may always hold per stream
BYTES_FLOOR = 64 * 1024 * 1024  # undelivered bytes a region may always hold per stream
READ_BUDGET = 64 * 1024 * 1024  # bytes one read may bring into the aggregator at most
MAX_READ_COUNT = 16  # entries per stream and read (the aggregator's batch before this bound)
RECORDS_PER_SWEEP = 256  # deletions recorded one by one per stream and sweep (then a summary)
SCAN_PER_SWEEP = 2000  # entries examined per stream and sweep (the rest at the next one)
POLL = 0.005  # seconds between an idle aggregator's reads


def honest_backlog(fed: Federation) -> int:
    """The most entries a region's honest workers can leave undelivered on one stream: the
    dispatcher holds new jobs once ``max_staleness // 2`` updates wait (over all regions), and
    each of the region's jobs in flight may still publish every attempt of it."""
    s = fed.settings
    return s.max_staleness // 2 + s.inflight_per_region * (s.max_retries + 1) + 1


@dataclass
class _Stream:
    """What the janitor knows of one stream: the last entry it examined ('' none yet: it starts
    at the group's last delivered entry) and the entries it kept that were not read yet."""

    name: str
    kind: str  # update | evaluation
    region: str
    examined: str = ""
    kept: deque[tuple[str, int]] = field(default_factory=deque)

    def read_through(self, entry_id: str) -> None:
        """The aggregator was given entries up to ``entry_id``: they are no longer a backlog."""
        last = _id(entry_id)
        while self.kept and _id(self.kept[0][0]) <= last:
            self.kept.popleft()


class Quota:
    """The janitor and the bounded read of one aggregator (its lease fences the deletions)."""

    def __init__(
        self,
        connection: redis.Redis,
        keys: Keys,
        fed: Federation,
        on_deleted: Callable[[str, int], None] | None = None,
    ) -> None:
        self.r, self.keys = connection, keys
        self.on_deleted = on_deleted
        self.streams = [
            *(_Stream(keys.update_stream(r), "update", r) for r in fed.regions),
            *(_Stream(keys.evaluation_stream(r), "evaluation", r) for r in fed.regions),
        ]
        self.max_count = max(MIN_BACKLOG, 4 * honest_backlog(fed))
        self.honest = honest_backlog(fed)
        self.deleted: Counter[str] = Counter()  # reason -> entries deleted by this process
        self.budget = READ_BUDGET  # bytes one read may bring in at most
        self.update_bound = self._first_update_bound()  # then each sweep says it
        self.result_bound = MAX_RESULT_BYTES + RESULT_MARGIN
        self._sha = connection.script_load(JANITOR_SCRIPT)
        self._loaded = True

    def _first_update_bound(self) -> int:
        """The bound quota.lua computes, from the current model's blob: the first read's
        count (the sweeps keep it up to date; without a blob, ``MAX_UPDATE_BYTES``)."""
        version = self.r.get(self.keys.version)
        blob = self.r.strlen(self.keys.model(int(version))) if version is not None else 0
        return int(blob * UPDATE_FACTOR) + UPDATE_MARGIN if blob else MAX_UPDATE_BYTES

    @property
    def read_count(self) -> int:
        """Entries per stream one read may return (XREADGROUP's COUNT is per stream): the
        largest honest entries of every stream together stay under ``budget`` (at least one, at
        most ``MAX_READ_COUNT``)."""
        regions = len(self.streams) // 2
        per_read = max(1, regions * (self.update_bound + self.result_bound))
        return max(1, min(MAX_READ_COUNT, self.budget // per_read))

    def sweep(self, version: int, lease_value: str) -> None:
        """Run the janitor alone (before re-reading what a crashed aggregator held)."""
        self._run(version, lease_value, None, 0)

    def read(
        self, consumer: str, version: int, lease_value: str, block_ms: int
    ) -> list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]]:
        """Sweep, then read new entries of every stream in the same MULTI (``XREADGROUP``'s
        reply); while there is nothing, sweep and read again every ``POLL`` s for ``block_ms``."""
        deadline = time.monotonic() + block_ms / 1000
        while True:
            got = self._run(version, lease_value, consumer, self.read_count)
            if got or time.monotonic() >= deadline:
                return got
            time.sleep(POLL)

    def _run(self, version: int, lease_value: str, consumer: str | None, count: int) -> list:
        """One sweep (and a read when ``consumer``): the script by its SHA, loaded again when
        Redis lost it (a restart: the connection failed since, so it is loaded before the MULTI;
        otherwise the read already ran unswept and its entries go on to the aggregator's own
        size check)."""
        if not self._loaded:
            self._sha = self.r.script_load(JANITOR_SCRIPT)
            self._loaded = True
        keys = [self.keys.lease("aggregator"), self.keys.model(version), self.keys.rejected,
                self.keys.rejections, *(s.name for s in self.streams)]  # fmt: skip
        args: list[str | int | float] = [
            lease_value, AGGREGATOR_GROUP, f"{time.time():.3f}", version, UPDATE_FACTOR,
            UPDATE_MARGIN, MAX_UPDATE_BYTES, MAX_RESULT_BYTES + RESULT_MARGIN, self.max_count,
            BYTES_FLOOR, self.honest, RECORDS_PER_SWEEP, SCAN_PER_SWEEP,
        ]  # fmt: skip
        for s in self.streams:
            args += [s.kind, s.region, s.examined, len(s.kept), sum(n for _, n in s.kept)]
        try:
            with self.r.pipeline(transaction=True) as pipe:
                pipe.evalsha(self._sha, len(keys), *keys, *args)
                if consumer is not None:
                    wanted = {s.name: ">" for s in self.streams}
                    pipe.xreadgroup(AGGREGATOR_GROUP, consumer, wanted, count=count)
                replies = pipe.execute(raise_on_error=False)
        except (redis.ConnectionError, redis.TimeoutError):
            self._loaded = False  # Redis may come back without its script cache
            raise
        swept, got = replies[0], (replies[1] if consumer is not None else None)
        if isinstance(got, Exception):
            raise got
        if isinstance(swept, redis.exceptions.NoScriptError):
            self._loaded = False
        elif isinstance(swept, Exception):
            raise swept
        elif swept == -1:
            raise StaleWriter("this aggregator lost its lease: another one is active")
        else:
            self._learn(swept)
        for stream, entries in got or []:
            if entries:
                self._stream(stream).read_through(_text(entries[-1][0]))
        return got or []

    def _learn(self, swept: list) -> None:
        self.update_bound, self.result_bound = int(swept[0]), int(swept[1])
        for s, (examined, too_large, over, kept, reset) in zip(
            self.streams, swept[3:], strict=True
        ):
            s.examined = _text(examined)
            if reset:
                s.kept.clear()
            for i in range(0, len(kept), 2):
                s.kept.append((_text(kept[i]), int(kept[i + 1])))
            for reason, n in ((RejectReason.TOO_LARGE, too_large), (RejectReason.QUOTA, over)):
                n = int(n)
                if n:
                    self.deleted[reason.value] += n
                    if self.on_deleted is not None:
                        self.on_deleted(reason.value, n)

    def _stream(self, name: bytes | str) -> _Stream:
        text = _text(name)
        return next(s for s in self.streams if s.name == text)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)
