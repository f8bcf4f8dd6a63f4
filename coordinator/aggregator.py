"""The aggregator: the only writer of the global model.

It consumes the regions' update streams with a consumer group, validates each update (an
update must come on the stream of the region its header names), hands it to the
mode's strategy, and persists every outcome atomically: a new version is one Lua script with its
blob, the version counter, the ids of the updates it applied, their acknowledgement and deletion
from the stream, and an entry on the applies stream; a rejection is one MULTI/EXEC with its
reason, the rejections stream entry, the acknowledgement and the deletion. An update id already
applied or rejected is acknowledged as a duplicate and counted, never applied twice.

Entries stay pending (unacknowledged) while a strategy holds them (FedBuff's buffer, an open
FedAvg round), so a restarted aggregator re-reads them and nothing held in memory is lost.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import redis

from coordinator.commit import Committer, StaleWriter
from coordinator.guard import Guard
from coordinator.quota import Quota
from coordinator.strategies import Outcome, Pending, Round, Strategy, make_strategy
from coordinator.validation import MAX_UPDATE_BYTES, delta_problem, signature_problem
from shared import auth, streams
from shared.codec import DecodeError, RejectReason, Weights, decode_update
from shared.evaluations import BadResult, check_result, encode_result
from shared.faults import crash_point
from shared.federation import Federation
from shared.jobs import issued_jobs, job_of, job_region, parse_issued
from shared.keys import AGGREGATOR_GROUP, Keys
from shared.lease import FencedBatch, Lease
from shared.store import ModelStore
from shared.telemetry import AggregatorMetrics

MAX_HANDLINGS = 3  # times a process may die handling one entry before it is rejected unread


@dataclass(frozen=True)
class JobRecord:
    issued: dict | None  # what the coordinator issued for the job, None if nothing
    applied: bool  # an attempt of the job was applied
    rejected: bool = False  # this very attempt was rejected before (a copy is a replay)


@dataclass
class Counters:
    applied: int = 0
    rejected: int = 0
    duplicates: int = 0
    versions: int = 0
    results: int = 0  # evaluation results accepted
    by_reason: dict[str, int] = field(default_factory=dict)

    def add(self, other: Counters) -> None:
        self.applied += other.applied
        self.rejected += other.rejected
        self.duplicates += other.duplicates
        self.versions += other.versions
        self.results += other.results
        for reason, n in other.by_reason.items():
            self.by_reason[reason] = self.by_reason.get(reason, 0) + n


class Aggregator:
    def __init__(
        self,
        connection: redis.Redis,
        keys: Keys,
        fed: Federation,
        consumer: str = "aggregator",
        region_keys: dict[str, bytes] | None = None,
        lease: Lease | None = None,
        metrics: AggregatorMetrics | None = None,
    ) -> None:
        self.r = connection
        self.metrics = metrics or AggregatorMetrics()  # aggregate() passes one that outlives it
        self.lease = lease  # every write is fenced by it (None: a lone aggregator, tests)
        self.keys = keys
        self.fed = fed
        self.consumer = consumer
        self.settings = fed.settings
        self.store = ModelStore(connection, keys, window=fed.settings.max_staleness + 1)
        self.strategy: Strategy = make_strategy(fed.settings, fed.created_at)
        self.counters = Counters()
        if fed.settings.signed_updates and region_keys is None:
            region_keys = auth.load_keys(auth.key_dir(keys.namespace), fed.regions)
        self.region_keys = region_keys if fed.settings.signed_updates else None
        self._base_cache: dict[int, Weights] = {}
        self.committer = Committer(connection, keys, consumer, self.store.window)
        # ids this process settled lately: a second copy in the same read batch is caught too
        self._recent: set[str] = set()
        self._recent_order: deque[str] = deque()
        self.guard = Guard(fed.settings, fed.regions)
        self.quarantined: set[str] = set()
        self._dirty: set[str] = set()  # regions whose guard record is not yet written
        self.streams = {keys.update_stream(r): r for r in fed.regions}
        self.result_streams = {keys.evaluation_stream(r): r for r in fed.regions}
        model = self.store.read_current()
        if model is None:
            raise LookupError("no model in Redis: the coordinator initialises it")
        self.version = model.version
        self.metrics.version.set(self.version)
        self.weights: Weights = {k: np.array(v) for k, v in model.weights.items()}
        self._start_guard()
        self._ensure_group()
        # the regions' streams swept of oversized entries and floods before each read, and the
        # read held to a byte budget (coordinator/quota.py)
        self.quota = Quota(connection, keys, fed, on_deleted=self._count_deleted)

    # --- the loop ---

    def run(self, should_stop: Callable[[], bool], block_ms: int = 500) -> Counters:
        self.tick()  # sync mode: learn the open round before re-reading held updates
        self.recover()
        while not should_stop():
            self.step(block_ms)
        return self.counters

    def step(self, block_ms: int = 500) -> int:
        """Read and settle one batch of new entries; returns how many were read."""
        if self.strategy.uses_rounds:
            self.tick()
        self._refresh_regions()
        resp = self.quota.read(self.consumer, self.version, self._lease_value(), block_ms)
        batch = streams.in_arrival_order(
            (streams.entry_ref(stream, entry_id), fields)
            for stream, entries in resp or [] for entry_id, fields in entries
        )  # fmt: skip
        known = self._job_records([_entry_id_field(f, ref) for ref, f in batch])
        for (ref, fields), record in zip(batch, known, strict=True):
            self.handle(ref, fields, known=record)
        self.tick()
        return len(batch)

    def recover(self) -> None:
        """Settle entries delivered before a crash: ours (pending) and dead consumers' (claimed),
        over every region's stream in the order they arrived, as an uncrashed run saw them."""
        self.quota.sweep(self.version, self._lease_value())
        held = {ref: f for stream in [*self.streams, *self.result_streams]
                for ref, f in self._delivered(stream)}  # fmt: skip
        for ref, fields in streams.in_arrival_order(held.items()):
            # an entry re-read after a crash may be what crashed the process: count the
            # handlings that never returned, and after MAX_HANDLINGS reject it unread
            tries = int(self.r.hincrby(self.keys.handling, ref, 1))
            if tries > MAX_HANDLINGS:
                detail = f"the aggregator died {tries - 1} times re-reading this entry"
                self._reject_raw(ref, f"entry:{ref}", RejectReason.MALFORMED, detail,
                                 claimed=_entry_id_field(fields, ref))  # fmt: skip
            else:
                self.handle(ref, fields)
            self.r.hdel(self.keys.handling, ref)

    def _delivered(self, stream: str) -> list[tuple[str, dict[bytes, bytes]]]:
        """Entries of ``stream`` delivered to a consumer and not acknowledged, now ours (the
        claim returns this consumer's own pending entries again: the caller keeps one copy)."""
        found = []
        start = "0-0"
        while True:
            resp = self.r.xreadgroup(AGGREGATOR_GROUP, self.consumer, {stream: start}, count=100)
            entries = resp[0][1] if resp else []
            entries = [(e, f) for e, f in entries if f]  # deleted entries come back empty
            if not entries:
                break
            found += [(streams.entry_ref(stream, entry_id), fields) for entry_id, fields in entries]
            start = entries[-1][0].decode()
        cursor = "0-0"
        while True:
            cursor, claimed, *_ = self.r.xautoclaim(
                stream, AGGREGATOR_GROUP, self.consumer, min_idle_time=0, start_id=cursor,
                count=100,
            )  # fmt: skip
            found += [(streams.entry_ref(stream, e), f) for e, f in claimed if f]
            if cursor in (b"0-0", "0-0"):
                break
        for c in self.r.xinfo_consumers(stream, AGGREGATOR_GROUP):  # dead instances' names
            name = c["name"].decode() if isinstance(c["name"], bytes) else c["name"]
            if name != self.consumer and not c["pending"]:
                self.r.xgroup_delconsumer(stream, AGGREGATOR_GROUP, name)
        return found

    def tick(self) -> None:
        """The strategy's turn without an update: a round's deadline, the federation's end."""
        round_ = self._round() if self.strategy.uses_rounds else None
        self.settle(self.strategy.tick(self.version, self.weights, time.time(), round_))
        if self.strategy.held() and self._done():
            self.settle(self.strategy.finish(self.version, self.weights))

    def _done(self) -> bool:
        return bool(self.r.exists(self.keys.done))

    # --- one entry ---

    def handle(
        self, entry_id: str, fields: dict[bytes, bytes], known: JobRecord | None = None
    ) -> None:
        """Settle one entry, whatever its bytes: an exception while handling it is a rejection
        (``malformed``, with the detail), so no entry can stop the aggregator."""
        try:
            if streams.split_ref(entry_id)[0] in self.result_streams:
                self._handle_result(entry_id, fields, known)
            else:
                self._handle(entry_id, fields, known)
        except (redis.RedisError, StaleWriter):
            raise  # Redis's trouble or another writer's, not the entry's
        except Exception as exc:  # noqa: BLE001 - the point: any entry settles
            raw_id = _entry_id_field(fields, entry_id)
            self.strategy.discard(raw_id)
            detail = f"handling failed: {type(exc).__name__}: {exc}"
            self._reject_raw(entry_id, f"entry:{entry_id}", RejectReason.MALFORMED, detail,
                             claimed=raw_id)  # fmt: skip

    def _handle(self, entry_id: str, fields: dict[bytes, bytes], known: JobRecord | None) -> None:
        """Authenticate, then book-keep, then validate and offer.

        Until an entry is shown to be an authentic update of an issued job of its stream's region
        (signature, header, id, job), a rejection is recorded under the entry, never under the id
        it claims: a forgery cannot settle, or block, anybody's real update. Only an applied
        attempt settles a job; a rejected attempt never blocks a later valid one.
        """
        crash_point("aggregator.handle")
        refusal = streams.copied_refusal(fields, self.streams[streams.split_ref(entry_id)[0]])
        if refusal is not None:  # a worker refused a job: said on the rejections stream
            batch = FencedBatch().add(*streams.xadd_command(self.keys.rejections, refusal))
            return self._settle_entry(batch, entry_id)
        raw_id = _entry_id_field(fields, entry_id)
        claimed = {streams.CLAIMED: raw_id}

        def refuse(reason: RejectReason, detail: str) -> None:
            self._reject_raw(entry_id, f"entry:{entry_id}", reason, detail, **claimed)

        payload = streams.entry_field(fields, streams.UPDATE)
        if payload is None:
            return refuse(RejectReason.MALFORMED, f"entry has no field {streams.UPDATE!r}")
        if len(payload) > MAX_UPDATE_BYTES:
            return refuse(RejectReason.TOO_LARGE, f"{len(payload)} bytes > {MAX_UPDATE_BYTES}")
        stream_region = self.streams[streams.split_ref(entry_id)[0]]
        if self.region_keys is not None:  # verified before a byte of it is decoded
            problem = self._check_signature(fields, payload, stream_region)
            if problem:
                return refuse(*problem)
        try:
            update = decode_update(payload)
        except DecodeError as exc:
            return refuse(exc.reason, exc.detail)
        h = update.header
        if h.region != stream_region:
            signed = f", signed with {stream_region!r}'s secret" if self.region_keys else ""
            detail = f"header says {h.region[:40]!r}, came on {stream_region!r}'s stream"
            reason = (RejectReason.WRONG_REGION if h.region in self.fed.regions
                      else RejectReason.UNKNOWN_REGION)  # fmt: skip
            return refuse(reason, detail + signed)
        if h.update_id != raw_id or job_of(h.update_id) != h.job_id:
            detail = f"header ids {h.update_id[:80]!r}/{h.job_id[:80]!r} != entry id {raw_id!r}"
            return refuse(RejectReason.MALFORMED, detail)
        if job_region(h.job_id) != stream_region:
            detail = f"job {h.job_id[:80]!r} is not {stream_region!r}'s"
            return refuse(RejectReason.WRONG_REGION, detail)
        record = known if known is not None else self._job_records([raw_id])[0]
        issued = record.issued
        if issued is None or issued.get("kind") != "train" or issued.get("region") != h.region:
            return refuse(RejectReason.UNKNOWN_JOB, f"no train job {h.job_id[:80]!r} was issued")
        # authentic from here: a copy of an attempt of a job already applied, or held by the
        # strategy, or applied in this very batch, or a copy of this very attempt rejected
        # before (a replay: judged again, it might pass now), is a duplicate; anything else is
        # judged
        seen = record.applied or record.rejected or {h.job_id, raw_id} & self._recent
        if seen or self.strategy.holds(h.job_id):
            self._drop_duplicate(entry_id, raw_id)
            return
        pending = Pending(entry_id, update)
        if h.region in self.quarantined:
            detail = f"region {h.region!r} is quarantined (fedq quarantine --release to end it)"
            self.settle(Outcome().reject(pending, RejectReason.QUARANTINED, detail))
            return
        problem, norm = self._validate(pending)
        if problem:
            self.settle(Outcome().reject(pending, *problem))
            return
        judged = self._judge(pending, norm)
        if judged is None:
            return
        pending = judged
        if self.strategy.uses_rounds:
            self.tick()  # the update may belong to a round opened since the last look
        self.settle(self.strategy.offer(pending, self.version, self.weights, self._base))

    def _handle_result(
        self, entry_id: str, fields: dict[bytes, bytes], known: JobRecord | None
    ) -> None:
        """An evaluation result counts only if it is the first valid one of an evaluation job
        the coordinator issued to the stream's region, for the version the job names; it is
        then copied onto the metrics stream, the only one the curve and the stopping rule read.
        """
        raw_id = _entry_id_field(fields, entry_id)
        region = self.result_streams[streams.split_ref(entry_id)[0]]

        def refuse(reason: RejectReason, detail: str) -> None:
            self._reject_raw(entry_id, f"entry:{entry_id}", reason, detail,
                             {"kind": "evaluation"}, claimed=raw_id)  # fmt: skip

        payload = streams.entry_field(fields, streams.RESULT)
        if payload is None:
            return refuse(RejectReason.MALFORMED, f"entry has no field {streams.RESULT!r}")
        if self.region_keys is not None:
            problem = self._check_signature(fields, payload, region)
            if problem:
                return refuse(*problem)
        job_id = job_of(raw_id)
        if job_region(job_id) != region:
            return refuse(RejectReason.WRONG_REGION, f"job {job_id[:80]!r} is not {region!r}'s")
        record = known if known is not None else self._job_records([raw_id])[0]
        issued = record.issued
        if issued is None or issued.get("kind") != "evaluate" or issued.get("region") != region:
            return refuse(RejectReason.UNKNOWN_JOB, f"no evaluate job {job_id[:80]!r} was issued")
        if record.applied or record.rejected or job_id in self._recent:
            self._drop_duplicate(entry_id, raw_id)
            return
        try:
            result = check_result(
                payload, region, job_id, int(issued.get("version")), self.fed.metrics
            )
        except (BadResult, TypeError, ValueError) as exc:
            return refuse(RejectReason.MALFORMED, f"evaluation result: {exc}")
        accepted = streams.accepted_entry(result["version"], region, encode_result(result))
        batch = FencedBatch().add(
            *streams.xadd_command(self.keys.metrics, accepted, streams.RESULTS_MAXLEN)
        )
        self._settle_entry(batch.add("HSET", self.keys.applied_jobs, job_id, raw_id), entry_id)
        self._remember([job_id])
        self.counters.results += 1
        self.metrics.results.labels(region).inc()

    def _check_signature(
        self, fields: dict[bytes, bytes], payload: bytes, region: str
    ) -> tuple[RejectReason, str] | None:
        return signature_problem(fields, payload, region, self.region_keys or {})

    def _validate(self, pending: Pending) -> tuple[tuple[RejectReason, str] | None, float]:
        problem, clipped_norm, norm = delta_problem(
            pending.update.delta,
            self.weights,
            self.settings.max_update_norm,
            self.settings.norm_action,
        )
        if clipped_norm is not None:
            self.r.hset(self.keys.clipped, pending.update_id, f"{clipped_norm:.6g}")
        return problem, norm

    def _judge(self, pending: Pending, norm: float) -> Pending | None:
        """The guard's verdict applied: the pending update at its new length and weight, or
        None once it is refused (recorded with the check that refused it)."""
        if not self.guard.enabled:
            return pending
        region = pending.update.header.region
        verdict = self.guard.judge(region, pending.update.delta, norm)
        self._dirty.add(region)
        self.metrics.suspicion.labels(region).set(self.guard.records[region].suspicion)
        for check, _ in verdict.notes:
            self.metrics.guarded.labels(region, check).inc()
        if verdict.refused:
            self.settle(Outcome().reject(pending, verdict.reason, verdict.detail()))
            return None
        verdict.apply(pending.update.delta)
        return replace(pending, weight=verdict.weight, guard=verdict.detail())

    def _guard_records(self) -> dict[str, str]:
        """The guard records judged since the last write (written with the next outcome)."""
        records = {r: self.guard.record_json(r) for r in sorted(self._dirty)}
        self._dirty.clear()
        return records

    def _start_guard(self) -> None:
        """What an earlier aggregator learned, and the model's recent path as the trajectory."""
        stored = self.r.hgetall(self.keys.guard)
        self.guard.load({k.decode(): v for k, v in stored.items()})
        earlier = self.store.read(max(0, self.version - 8)) if self.version else None
        self.guard.start_trajectory(self.weights, None if earlier is None else earlier.weights)
        self._refresh_regions()

    def _refresh_regions(self) -> None:
        """The operator's quarantine and the regions' announced data sizes: one round trip."""
        with self.r.pipeline(transaction=False) as pipe:
            pipe.smembers(self.keys.quarantined)
            pipe.mget([self.keys.data_size(r) for r in self.fed.regions])
            quarantined, sizes = pipe.execute()
        self.quarantined = {q.decode() for q in quarantined}
        announced = {}
        for region, raw in zip(self.fed.regions, sizes, strict=True):
            try:
                announced[region] = float(raw) if raw is not None else 0.0
            except ValueError:
                announced[region] = 0.0  # not a number: the region claims no share
        self.guard.set_data_sizes(announced)

    # --- persisting outcomes ---

    def settle(self, outcome: Outcome) -> None:
        for pending, reason, detail in outcome.rejected:
            self._reject(pending, reason, detail)
        if outcome.new_weights is not None:
            outcome.guard = self._guard_records()
            self._commit(outcome)

    def _commit(self, outcome: Outcome) -> None:
        """The outcome's new version, written by the commit script (``coordinator/commit.py``)."""
        started = time.perf_counter()
        self.committer.commit(self.version, outcome, self.strategy.name, self._lease_value())
        self._observe_commit(outcome, time.perf_counter() - started)
        jobs = [p.update.header.job_id for p in outcome.applied]
        if self.version in self._base_cache or len(self._base_cache) > 4:
            self._base_cache.pop(min(self._base_cache), None)
        self._base_cache[self.version] = self.weights
        self.version += 1
        old, self.weights = (
            self.weights,
            {k: np.asarray(v, dtype=np.float32) for k, v in outcome.new_weights.items()},
        )
        if self.guard.enabled:
            self.guard.applied(outcome.shares, old, self.weights)
        self.counters.applied += len(jobs)
        self.counters.versions += 1
        self._remember(jobs)

    def _observe_commit(self, outcome: Outcome, seconds: float) -> None:
        m, now = self.metrics, time.time()
        m.commit_seconds.observe(seconds)
        m.versions.inc()
        m.version.set(self.version + 1)
        for p in outcome.applied:
            h = p.update.header
            m.applied.labels(h.region).inc()
            m.staleness.observe(max(0, self.version - h.base_version))
            if h.created_at > 0:
                m.update_age.observe(max(0.0, now - h.created_at))

    def _reject(self, pending: Pending, reason: RejectReason, detail: str) -> None:
        self._remember([pending.update_id])  # a copy later in the same batch is a replay
        h = pending.update.header
        extra = {"region": h.region, "base_version": str(h.base_version), "worker": h.worker_id}
        self._reject_raw(pending.entry_id, pending.update_id, reason, detail, extra)

    def _reject_raw(
        self,
        entry_id: str,
        update_id: str,
        reason: RejectReason,
        detail: str,
        extra: dict[str, str] | None = None,
        claimed: str | None = None,
    ) -> None:
        """Record a rejection under ``update_id`` (``entry:<ref>`` for an entry not shown to be
        an authentic update of its job, with the id it ``claimed`` beside it)."""
        if claimed is not None:
            extra = {**(extra or {}), streams.CLAIMED: claimed}
        fields = streams.rejection_entry(update_id, reason.value, detail, version=self.version,
                                         **(extra or {}))  # fmt: skip
        batch = FencedBatch().add("HSET", self.keys.rejected, update_id, reason.value)
        records = self._guard_records()
        if records:
            batch.add("HSET", self.keys.guard, *streams.flat(records))
        self._settle_entry(batch.add(*streams.xadd_command(self.keys.rejections, fields)), entry_id)
        self.counters.rejected += 1
        self.metrics.rejected.labels(reason.value).inc()
        self.counters.by_reason[reason.value] = self.counters.by_reason.get(reason.value, 0) + 1

    def _count_deleted(self, reason: str, n: int) -> None:
        """Entries the janitor deleted (recorded by its script): counted like rejections."""
        self.counters.rejected += n
        self.metrics.rejected.labels(reason).inc(n)
        self.counters.by_reason[reason] = self.counters.by_reason.get(reason, 0) + n

    def _drop_duplicate(self, entry_id: str, update_id: str) -> None:
        batch = FencedBatch().add("HINCRBY", self.keys.duplicates, update_id, 1)
        if self.region_keys is not None:  # signed federation: say so where operators look
            batch.add(*streams.xadd_command(self.keys.rejections, streams.rejection_entry(
                update_id, RejectReason.REPLAYED.value,
                "a copy of an update already settled: dropped", version=self.version)))  # fmt: skip
        self._settle_entry(batch, entry_id)
        self.counters.duplicates += 1
        self.metrics.duplicates.inc()

    def _lease_value(self) -> str:
        """What the commit script compares the lease with ('' for a lone aggregator)."""
        if self.lease is None:
            return ""
        if self.lease.value is None:
            raise StaleWriter("this aggregator lost its lease: another one is active")
        return self.lease.value

    def _settle_entry(self, batch: FencedBatch, entry_id: str) -> None:
        """The outcome's writes, the entry's acknowledgement and deletion: one atomic step, and
        only while this aggregator holds the lease (a paused ex-active writes nothing)."""
        stream, stream_id = streams.split_ref(entry_id)
        batch.add("XACK", stream, AGGREGATOR_GROUP, stream_id).add("XDEL", stream, stream_id)
        if not batch.execute(self.r, self.lease):
            raise StaleWriter("this aggregator lost its lease: another one is active")

    # --- helpers ---

    def _remember(self, ids: list[str], keep: int = 10_000) -> None:
        for i in ids:
            if i not in self._recent:
                self._recent.add(i)
                self._recent_order.append(i)
        while len(self._recent_order) > keep:
            self._recent.discard(self._recent_order.popleft())

    def _job_records(self, update_ids: list[str]) -> list[JobRecord]:
        """For each claimed update id, its job's issue record and whether an attempt of the job
        was applied: one round trip for a whole batch."""
        jobs = [job_of(i) for i in update_ids]
        with self.r.pipeline(transaction=False) as pipe:
            issued_jobs(pipe, self.keys, jobs)
            for job_id in jobs:
                pipe.hexists(self.keys.applied_jobs, job_id or "-")
            for update_id in update_ids:
                pipe.hexists(self.keys.rejected, update_id)
            flags = pipe.execute()
        n = len(jobs)
        return [
            JobRecord(parse_issued(raw), bool(applied), bool(rejected))
            for raw, applied, rejected in zip(
                flags[:n], flags[n : 2 * n], flags[2 * n :], strict=True
            )
        ]

    def _base(self, version: int) -> Weights | None:
        if version in self._base_cache:
            return self._base_cache[version]
        model = self.store.read(version)
        return None if model is None else model.weights

    def _round(self) -> Round | None:
        raw = self.r.hgetall(self.keys.round)
        if not raw:
            return None
        d = {k.decode(): v.decode() for k, v in raw.items()}
        return Round(
            number=int(d["number"]),
            base_version=int(d["base_version"]),
            deadline=float(d["deadline"]),
            regions=tuple(json.loads(d["regions"])),
        )

    def _ensure_group(self) -> None:
        for stream in [*self.streams, *self.result_streams]:
            try:
                self.r.xgroup_create(stream, AGGREGATOR_GROUP, id="0", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise


def _entry_id_field(fields: dict[bytes, bytes], ref: str) -> str:
    """The update id an entry claims (its ``id`` field), or one made from the entry's place."""
    claimed = streams.entry_text(fields, streams.ID)[:MAX_ID]
    return claimed or f"entry:{ref}"


MAX_ID = 200
