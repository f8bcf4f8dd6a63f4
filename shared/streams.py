"""The streams' entries: every field name, each writer beside its reader.

- ``<ns>:updates:<region>``: a region's workers append ``update_entry`` (``worker/tasks.py``) and
  count the copy in ``<ns>:published:<region>`` in the same MULTI; the aggregator reads them
  with ``entry_field`` and ``entry_id``. ``waiting_updates`` counts what is not yet settled,
  ``published_copies`` what each region says it sent.
- ``<ns>:evaluations:<region>``: ``result_entry`` from a region's evaluate jobs; the aggregator
  copies accepted results onto ``<ns>:metrics`` (``accepted_entry``; ``shared/evaluations.py``
  reads it back).
- ``<ns>:rejections``: ``rejection_entry`` for a rejected update or result, written by the
  aggregator alone (and its janitor, ``coordinator/quota.lua``), one shape and one cap;
  ``cli/views.py``, the audit and the failure fold read it. A worker's refusal of a job goes on
  its own region's update stream (``refusal_entry``: workers may not append to the shared
  stream, where a region could flood it or forge another region's failures) and the aggregator
  copies it here (``copied_refusal``), the region being the stream's.
- ``<ns>:applies``: written by the commit script (``coordinator/commit.py``, with these names);
  ``applied_updates`` reads it, ``CommitWatch`` waits for its next entry.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

import redis

from shared.keys import Keys

UPDATE = "u"  # the msgpack update (shared/codec.py)
RESULT = "m"  # an evaluation result's JSON (shared/evaluations.py)
ID = "id"  # the update id (``<job>.<attempt>``), the result id, or a refused job's id
REGION = "region"
SIG = "sig"  # HMAC-SHA256 of the payload by the region's secret (signed federations)
REASON, DETAIL, VERSION, AT, WORKER, CLAIMED = (
    "reason",
    "detail",
    "version",
    "at",
    "worker",
    "claimed",
)
REFUSED = "refused"  # a worker's refusal of a job: its reason (one of REFUSALS)
JOB_REFUSED, BUDGET_SPENT = "job_refused", "budget_spent"  # not a fedq job; past the budget
REFUSALS = (JOB_REFUSED, BUDGET_SPENT)
REJECTIONS_MAXLEN = 1_000_000  # approximate cap of the rejections stream
RESULTS_MAXLEN = 100_000  # of the evaluation and metrics streams
MAX_DETAIL = 500


def update_entry(payload: bytes, update_id: str, region: str, sig: str | None = None) -> dict:
    return _entry(UPDATE, payload, update_id, region, sig)


def result_entry(payload: bytes, result_id: str, region: str, sig: str | None = None) -> dict:
    return _entry(RESULT, payload, result_id, region, sig)


def accepted_entry(version: int, region: str, payload: bytes) -> dict:
    """What the aggregator appends to ``<ns>:metrics`` for an accepted result."""
    return {VERSION: version, REGION: region, RESULT: payload}


def _entry(kind: str, payload: bytes, entry_id: str, region: str, sig: str | None) -> dict:
    fields = {kind: payload, ID: entry_id, REGION: region}
    if sig is not None:
        fields[SIG] = sig
    return fields


def entry_field(fields: dict[bytes, bytes], name: str) -> bytes | None:
    """A field of an entry as read back (redis-py returns bytes keys)."""
    return fields.get(name.encode())


def entry_text(fields: dict[bytes, bytes], name: str) -> str:
    """A field as text ('' when absent; undecodable bytes replaced): for ids and reasons."""
    return (fields.get(name.encode()) or b"").decode(errors="replace")


def rejection_entry(entry_id: str, reason: str, detail: str, **extra: Any) -> dict:
    """One rejections-stream entry: what was refused (``id``), why, when, and ``extra``
    (``version``, ``region``, ``worker``, ``claimed``, ...)."""
    return {ID: entry_id[:300], REASON: reason, DETAIL: detail[:MAX_DETAIL],
            AT: f"{time.time():.3f}", **{k: str(v) for k, v in extra.items()}}  # fmt: skip


def refusal_entry(job_id: str, reason: str, detail: str, worker: str) -> dict:
    """A worker's refusal of a job, for its region's update stream (a few hundred bytes)."""
    return {REFUSED: reason, ID: job_id[:300], DETAIL: detail[:MAX_DETAIL], WORKER: worker[:200]}


def copied_refusal(fields: dict[bytes, bytes], region: str) -> dict | None:
    """The rejections entry for a refusal read on ``region``'s update stream, or None if the
    entry is no refusal (an update, or anything else: the aggregator judges it as an update).
    The region is the stream's whatever the entry says, and the reason one a worker gives."""
    reason = entry_text(fields, REFUSED)
    if reason not in REFUSALS or entry_field(fields, UPDATE) is not None:
        return None
    return rejection_entry(entry_text(fields, ID), reason, entry_text(fields, DETAIL),
                           worker=entry_text(fields, WORKER)[:200], region=region)  # fmt: skip


def add_rejection(connection: redis.Redis, keys: Keys, fields: dict) -> None:
    connection.xadd(keys.rejections, fields, maxlen=REJECTIONS_MAXLEN, approximate=True)


def waiting_updates(r: redis.Redis, keys: Keys, regions: list[str] | tuple[str, ...]) -> int:
    """Updates published and not yet settled, over every region's stream."""
    with r.pipeline(transaction=False) as pipe:
        for stream in keys.update_streams(regions):
            pipe.xlen(stream)
        return sum(pipe.execute())


def published_copies(
    r: redis.Redis, keys: Keys, regions: list[str] | tuple[str, ...]
) -> dict[str, dict[str, int]]:
    """region -> update id -> copies its workers published (each region counts its own)."""
    with r.pipeline(transaction=False) as pipe:
        for region in regions:
            pipe.hgetall(keys.published(region))
        rows = pipe.execute()
    return {region: {k.decode(errors="replace"): int(v) for k, v in row.items()}
            for region, row in zip(regions, rows, strict=True)}  # fmt: skip


def applied_updates(r: redis.Redis, keys: Keys, tail: int | None = None) -> list[dict[str, Any]]:
    """Applied updates, oldest first: header fields, the version they made, their staleness."""
    entries = r.xrevrange(keys.applies, count=tail) if tail else r.xrange(keys.applies)
    if tail:
        entries = list(reversed(entries))
    out = []
    for _id, f in entries:
        version = int(f[b"version"])
        for u in json.loads(f[b"updates"]):
            base = u.get("base")
            out.append({
                "id": u["id"], "region": u.get("region"), "base_version": base,
                "version": version, "at": float(f[b"at"]) if b"at" in f else None,
                "staleness": None if base is None else version - 1 - int(base),
                "n_samples": u.get("n"), "loss": u.get("loss"),
                "weight": float(f[b"weight"]) if b"weight" in f else None,
                "guard": u.get("guard"),
            })  # fmt: skip
    return out[-tail:] if tail else out


class CommitWatch:
    """Waits for the aggregator's next commit (an entry on the applies stream).

    The dispatcher frees a slot when a job's update is in, and the model a new job starts from
    is the one that commit made: ticking on the commit, not on a timer, saves each job the
    half-interval it would wait on average (on a two-core host that was the cores' idle
    fifth). Only the aggregator writes the stream, so no region can make the dispatcher spin.
    """

    def __init__(self, r: redis.Redis, keys: Keys) -> None:
        self.r, self.key = r, keys.applies
        latest = r.xrevrange(self.key, count=1)
        self.last = latest[0][0] if latest else b"0-0"

    def wait(self, timeout: float) -> bool:
        """True once a commit after the last one seen is in, False after ``timeout`` seconds."""
        got = self.r.xread({self.key: self.last}, count=100, block=max(1, round(timeout * 1000)))
        if not got:
            return False
        self.last = got[0][1][-1][0]
        return True


def update_counts(r: redis.Redis, keys: Keys, regions: tuple[str, ...]) -> dict[str, Any]:
    """Totals of what happened to updates and train jobs (``fedq run``'s report has these)."""
    reasons = Counter(v.decode() for v in r.hvals(keys.rejected))
    published = published_copies(r, keys, regions)
    return {
        "applied": r.scard(keys.applied),
        "rejected": sum(reasons.values()),
        "rejected_by_reason": dict(reasons),
        "duplicates": sum(int(v) for v in r.hvals(keys.duplicates)),
        "published": sum(sum(by_id.values()) for by_id in published.values()),
        "jobs_retried": int(r.get(keys.retried) or 0),
        "jobs_abandoned": int(r.get(keys.abandoned) or 0),
    }


def entry_ref(stream: bytes | str, entry_id: bytes | str) -> str:
    """One string for a stream entry: the stream's key and the entry's id (keys have no space)."""
    as_text = lambda x: x.decode() if isinstance(x, bytes) else x  # noqa: E731
    return f"{as_text(stream)} {as_text(entry_id)}"


def split_ref(ref: str) -> tuple[str, str]:
    stream, _, entry_id = ref.partition(" ")
    return stream, entry_id


def in_arrival_order(entries) -> list[tuple[str, dict[bytes, bytes]]]:
    """Entries of several streams ordered by their ids (Redis's arrival time, then sequence):
    one read returns each region's stream as a block, FedAsync applies in arrival order."""

    def arrival(entry: tuple[str, dict]) -> tuple[int, int, str]:
        stream, entry_id = split_ref(entry[0])
        ms, _, seq = entry_id.partition("-")
        return int(ms), int(seq or 0), stream  # a tie within a millisecond: a fixed order

    return sorted(entries, key=arrival)


def xadd_command(stream: str, fields: dict, maxlen: int = REJECTIONS_MAXLEN) -> tuple:
    """An XADD command's words (capped, approximately, like redis-py's ``maxlen``)."""
    return ("XADD", stream, "MAXLEN", "~", maxlen, "*", *flat(fields))


def flat(mapping: dict) -> list:
    out: list = []
    for k, v in mapping.items():
        out += [k, v]
    return out
