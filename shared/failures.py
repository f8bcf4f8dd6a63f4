"""Repeated failures of a region's jobs, by (region, kind, cause): no failure is silent.

A job fails when it raises in its worker (the task's ``train`` or ``evaluate``, or the worker's
check of what the task returned) or when the aggregator rejects what it published for a reason
that is the task's doing (an update's shapes or non-finite values, an evaluation result it
cannot accept). RQ retries a failed train job and the dispatcher issues new ones, so a broken
task used to fail thousands of jobs with its cause only in the workers' logs while ``fedq run``
printed ``0 applied`` forever. Here each region's hash (``Keys.failures``) holds, per kind of
job and per source, the last cause and how many jobs in a row failed that same way (two causes
are the same when they differ only in numbers and ids):

- the region's workers write the ``job`` streaks: ``record`` when a job raised, and
  ``clear_job`` inside the MULTI that publishes a job's output (a success ends the streak);
- the coordinator folds the aggregator's rejections into the ``rejected`` streaks (``Fold``:
  the aggregator stays the model's writer and nothing else), and ends one at the region's next
  applied update or accepted evaluation result. Only a rejection the aggregator recorded counts
  (``Keys.rejected`` holds its id with that reason): an entry on the rejections stream that
  names a region is otherwise only a claim, and a forged ``shape`` rejection naming another
  region would make that region look broken;
- ``fedq status`` and ``fedq run`` read them (``read``). A region whose streak reached the
  federation's ``max_failures`` is ``broken`` (the coordinator stops giving it train jobs,
  ``fedq run`` stops waiting for its evaluations and says so); every region failing the same
  way, ``max_failures`` times between them, is a broken task (``broken_task``: ``fedq run``
  stops with the cause).
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass

import redis

from shared import streams
from shared.jobs import job_of, job_region
from shared.keys import Keys

KINDS = ("train", "evaluate")
JOB, REJECTED = "job", "rejected"  # the sources: the job raised; its output was rejected
MAX_CAUSE = 300  # characters of a cause kept (one line)
FOLD_COUNT = 1000  # stream entries the coordinator folds per look and stream
# the aggregator's reasons that are a task's doing (shared.codec.RejectReason's values), and the
# start of the detail of an evaluation result it could not accept (coordinator/aggregator.py)
TRAIN_REJECTIONS = ("shape", "non_finite")
RESULT_REJECTION, RESULT_DETAIL = "malformed", "evaluation result:"
_HEX = re.compile(r"\b(?=[0-9a-f]*[a-f])[0-9a-f]{8,}\b")  # ids (job ids end in 16 hex)
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?|\b(?:nan|inf)\b", re.I)


@dataclass(frozen=True)
class Failure:
    """One streak: ``count`` jobs of ``kind`` of ``region`` in a row failed with ``cause``."""

    region: str
    kind: str  # train | evaluate
    source: str  # job | rejected
    cause: str  # one line: the exception, or the rejection's reason and detail
    count: int
    at: float  # when the last one failed
    job: str  # the last failed job's id

    @property
    def same_way(self) -> str:
        return same_way(self.cause)

    def line(self) -> str:
        times = "once" if self.count == 1 else f"{self.count} times in a row"
        verb = "had its output rejected" if self.source == REJECTED else "failed"
        return f"region {self.region}: {self.kind} job {verb} {times}: {self.cause}"

    def to_json(self) -> dict:
        return {
            "kind": self.kind,
            "source": self.source,
            "cause": self.cause,
            "count": self.count,
            "at": self.at,
            "job": self.job,
        }


def same_way(cause: str) -> str:
    """What makes two causes the same: the text without its numbers and ids (a value out of
    range, a version or a job id differ from job to job; the failure does not)."""
    return _NUMBER.sub("#", _HEX.sub("#", cause))


def cause_of(exc: BaseException) -> str:
    """One line naming an exception: its type and the first line of its message."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip()[:MAX_CAUSE]


def field(source: str, kind: str) -> str:
    return f"{source}:{kind}"


def record(
    connection: redis.Redis,
    keys: Keys,
    region: str,
    kind: str,
    cause: str,
    job_id: str,
    source: str = JOB,
) -> Failure:
    """Count one failed job of ``region``: the streak goes on if it failed the same way as the
    last one, else starts again at 1. Several workers of a region write at once (WATCH)."""
    key, name = keys.failures(region), field(source, kind)
    while True:
        with connection.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(key)
                last = _parse(region, name, pipe.hget(key, name))
                count = last.count + 1 if last and last.same_way == same_way(cause) else 1
                failure = Failure(
                    region, kind, source, cause[:MAX_CAUSE], count, time.time(), job_id[:200]
                )
                pipe.multi()
                pipe.hset(key, name, _dump(failure))
                pipe.execute()
                return failure
            except redis.WatchError:
                continue


def clear_job(pipe: redis.client.Pipeline, keys: Keys, region: str, kind: str) -> None:
    """End the region's ``job`` streak of ``kind``: queued on the pipeline (the MULTI) that
    publishes a job's output, so a success costs no round trip of its own."""
    pipe.hdel(keys.failures(region), field(JOB, kind))


def read(connection: redis.Redis, keys: Keys, regions: Iterable[str]) -> list[Failure]:
    """Every region's streaks. A region's workers write its hash: what does not parse is
    skipped, never trusted."""
    regions = list(regions)
    with connection.pipeline(transaction=False) as pipe:
        for region in regions:
            pipe.hgetall(keys.failures(region))
        rows = pipe.execute()
    out = []
    for region, row in zip(regions, rows, strict=True):
        for name, raw in row.items():
            failure = _parse(region, name.decode(errors="replace"), raw)
            if failure is not None:
                out.append(failure)
    return out


def worst(failures: Iterable[Failure]) -> dict[tuple[str, str], Failure]:
    """(region, kind) -> its longest streak over both sources."""
    out: dict[tuple[str, str], Failure] = {}
    for f in failures:
        key = (f.region, f.kind)
        if key not in out or f.count > out[key].count:
            out[key] = f
    return out


def broken(failures: Iterable[Failure], limit: int) -> dict[tuple[str, str], Failure]:
    """(region, kind) -> the streak that reached ``limit`` (0: nothing is ever broken)."""
    if limit <= 0:
        return {}
    return {k: f for k, f in worst(failures).items() if f.count >= limit}


def broken_task(failures: Iterable[Failure], regions: Iterable[str], limit: int) -> Failure | None:
    """The failure of a broken task: for one kind of job, every region's last jobs failed the
    same way, ``limit`` times in a row between them (evaluations come once per region each
    ``eval_every`` versions: a region alone would take ``limit`` of them). None otherwise."""
    if limit <= 0:
        return None
    regions = list(regions)
    by = worst(failures)
    for kind in KINDS:
        streaks = [by.get((region, kind)) for region in regions]
        if not regions or any(f is None for f in streaks):
            continue
        found = [f for f in streaks if f is not None]
        if len({f.same_way for f in found}) == 1 and sum(f.count for f in found) >= limit:
            return max(found, key=lambda f: (f.count, f.at))
    return None


class Fold:
    """The coordinator's: the aggregator's rejections of a region's output (an update's shapes
    or non-finite values, an evaluation result it could not accept) become the region's
    ``rejected`` streaks; the region's next applied update (or accepted result) ends its
    train (evaluate) streak. The three streams are read from where the last fold stopped (kept
    in Redis, so a restarted or standby coordinator goes on from there) and taken in the order
    Redis added their entries: a streak is of failures in a row."""

    STREAMS = ("rejections", "applies", "metrics")

    def __init__(self, connection: redis.Redis, keys: Keys, regions: Iterable[str]) -> None:
        self.r, self.keys, self.regions = connection, keys, tuple(regions)
        self.names = {
            "rejections": keys.rejections,
            "applies": keys.applies,
            "metrics": keys.metrics,
        }

    def run(self) -> int:
        """Fold what was added since the last fold; returns how many entries were read."""
        cursors = {
            k.decode(): v.decode() for k, v in self.r.hgetall(self.keys.failures_folded).items()
        }
        read = {
            name: self.r.xrange(key, min=f"({cursors.get(name, '0-0')}", count=FOLD_COUNT)
            for name, key in self.names.items()
        }
        # a stream read to its cap may have more: take the others only as far as it reached
        full = [_id(entries[-1][0]) for entries in read.values() if len(entries) >= FOLD_COUNT]
        horizon = min(full) if full else None
        events = sorted(
            (_id(entry_id), name, fields)
            for name, entries in read.items()
            for entry_id, fields in entries
            if horizon is None or _id(entry_id) <= horizon
        )
        if not events:
            return 0
        streaks = {(f.region, f.kind): f for f in read_source(self.r, self.keys, self.regions)}
        recorded = self._recorded([fields for _, name, fields in events if name == "rejections"])
        changed: set[tuple[str, str]] = set()
        for at, name, fields in events:
            for region, kind, cause, job in self._meaning(name, fields, recorded):
                key = (region, kind)
                last = streaks.get(key)
                if cause is None:  # a success of the region's kind of job
                    if last is not None:
                        streaks.pop(key)
                        changed.add(key)
                    continue
                count = last.count + 1 if last and last.same_way == same_way(cause) else 1
                streaks[key] = Failure(
                    region, kind, REJECTED, cause[:MAX_CAUSE], count, at[0] / 1000, job
                )
                changed.add(key)
        last_ids = {
            name: max(e[0] for e in events if e[1] == name)
            for name in read
            if any(e[1] == name for e in events)
        }
        with self.r.pipeline(transaction=True) as pipe:
            for region, kind in changed:
                f = streaks.get((region, kind))
                if f is None:
                    pipe.hdel(self.keys.failures(region), field(REJECTED, kind))
                else:
                    pipe.hset(self.keys.failures(region), field(REJECTED, kind), _dump(f))
            pipe.hset(
                self.keys.failures_folded,
                mapping={n: f"{i[0]}-{i[1]}" for n, i in last_ids.items()},
            )
            pipe.execute()
        return len(events)

    def _recorded(self, rejections: list[dict[bytes, bytes]]) -> set[tuple[str, str]]:
        """(id, reason) of the rejections entries the aggregator itself recorded: it writes
        each rejection's id and reason into ``Keys.rejected`` in the same step (one round trip).
        """
        ids = sorted({streams.entry_text(f, streams.ID) for f in rejections})
        if not ids:
            return set()
        reasons = self.r.hmget(self.keys.rejected, ids)
        return {(i, r.decode(errors="replace")) for i, r in zip(ids, reasons, strict=True) if r}

    def _meaning(self, name: str, fields: dict[bytes, bytes], recorded: set[tuple[str, str]]):
        """(region, kind, cause or None for a success, job id) of one entry; a rejection only
        if the aggregator ``recorded`` it."""
        if name == "applies":
            try:
                updates = json.loads(fields.get(b"updates") or b"[]")
            except ValueError:
                return
            for region in {u.get("region") for u in updates if isinstance(u, dict)}:
                if region in self.regions:
                    yield region, "train", None, ""
        elif name == "metrics":
            region = streams.entry_text(fields, streams.REGION)
            if region in self.regions:
                yield region, "evaluate", None, ""
        else:
            reason = streams.entry_text(fields, streams.REASON)
            detail = streams.entry_text(fields, streams.DETAIL)
            if reason in TRAIN_REJECTIONS:
                region, kind = streams.entry_text(fields, streams.REGION), "train"
                job = job_of(streams.entry_text(fields, streams.ID))
            elif reason == RESULT_REJECTION and detail.startswith(RESULT_DETAIL):
                job = job_of(streams.entry_text(fields, streams.CLAIMED))
                region, kind = job_region(job), "evaluate"
            else:
                return
            if (streams.entry_text(fields, streams.ID), reason) not in recorded:
                return  # not the aggregator's: a claim on the stream, not a rejection
            if region in self.regions:
                yield region, kind, f"rejected ({reason}): {detail}".splitlines()[0], job


def read_source(
    connection: redis.Redis, keys: Keys, regions: Iterable[str], source: str = REJECTED
) -> list[Failure]:
    return [f for f in read(connection, keys, regions) if f.source == source]


def _id(entry_id: bytes | str) -> tuple[int, int]:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def _dump(f: Failure) -> str:
    return json.dumps({"cause": f.cause, "count": f.count, "at": f.at, "job": f.job})


def _parse(region: str, name: str, raw: bytes | None) -> Failure | None:
    source, _, kind = name.partition(":")
    if raw is None or source not in (JOB, REJECTED) or kind not in KINDS:
        return None
    try:
        d = json.loads(raw)
        failure = Failure(
            region,
            kind,
            source,
            str(d["cause"])[:MAX_CAUSE],
            int(d["count"]),
            float(d["at"]),
            str(d.get("job", ""))[:200],
        )
    except (ValueError, TypeError, KeyError):
        return None
    if failure.count < 1 or not math.isfinite(failure.at):
        return None
    return failure
