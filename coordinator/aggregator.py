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
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import redis

from coordinator.strategies import FedBuff, Outcome, Pending, Round, Strategy, make_strategy
from shared import auth
from shared.aggregation import clip_to_norm
from shared.codec import DecodeError, Model, RejectReason, decode_update, encode_model
from shared.evaluations import BadResult, check_result, encode_result
from shared.faults import crash_point
from shared.federation import Federation
from shared.jobs import issued_jobs, job_of, job_region, parse_issued
from shared.keys import AGGREGATOR_GROUP, Keys
from shared.lease import FencedBatch, Lease, LostLease
from shared.store import ModelStore

Weights = dict[str, np.ndarray]
READ_COUNT = 16

# Atomic: check the version is still ours, then move the staged blob into place, write the new
# version's info, bump the counter, record the applied ids, acknowledge and delete their stream
# entries, add the applies entry and drop the version that left the window. Returns 0 (and
# writes nothing but the staged blob's removal) if the version moved, which only a second
# aggregator could do. The blob is staged just before, in the same round trip, under a key of
# this aggregator's own with an expiry: a crash between the two leaves nothing a restarted
# aggregator could mistake for the new version.
COMMIT_SCRIPT = """
local version, info, applied, applies, old, staged, model, applied_jobs, lease, pinned =
  unpack(KEYS)
local holder = ARGV[#ARGV]  -- this aggregator's lease value ('' when it runs without one)
if holder ~= '' and redis.call('GET', lease) ~= holder then
  redis.call('DEL', staged)
  return -1
end
if tonumber(redis.call('GET', version)) ~= tonumber(ARGV[1]) then
  redis.call('DEL', staged)
  return 0
end
redis.call('RENAME', staged, model)
redis.call('PERSIST', model)
local i = 5
local function take(n)
  local out = {}
  for k = 1, n do out[k] = ARGV[i + k] end
  i = i + n
  return out
end
local n_ids = tonumber(ARGV[i]); local ids = take(n_ids); local jobs = take(n_ids)
i = i + 1; local n_entries = tonumber(ARGV[i]); local entries = take(n_entries)
i = i + 1; local n_info = tonumber(ARGV[i]); local info_pairs = take(2 * n_info)
i = i + 1; local n_applies = tonumber(ARGV[i]); local applies_pairs = take(2 * n_applies)
redis.call('HSET', info, unpack(info_pairs))
redis.call('SET', version, ARGV[2])
-- the version leaving the window goes, unless an evaluation scheduled for it is not done yet
if tonumber(ARGV[4]) >= 0 and redis.call('HEXISTS', pinned, ARGV[4]) == 0 then
  redis.call('DEL', old)
end
redis.call('SADD', applied, unpack(ids))
for k = 1, n_ids do redis.call('HSET', applied_jobs, jobs[k], ids[k]) end  -- one attempt a job
for k = 1, n_entries, 2 do  -- (stream, entry id) pairs: one batch may span regions
  redis.call('XACK', entries[k], ARGV[3], entries[k + 1])
  redis.call('XDEL', entries[k], entries[k + 1])
end
redis.call('XADD', applies, 'MAXLEN', '~', '1000000', '*', unpack(applies_pairs))
return 1
"""
MAX_UPDATE_BYTES = 64 * 1024 * 1024
MAX_HANDLINGS = 3  # times a process may die handling one entry before it is rejected unread


class StaleWriter(LostLease):
    """Another aggregator wrote the model: this one's view is out of date (never the entry's
    fault, so it is not turned into a rejection)."""


STAGED_TTL = 3600  # seconds a staged blob outlives a crash between staging and commit


@dataclass(frozen=True)
class JobRecord:
    issued: dict | None  # what the coordinator issued for the job, None if nothing
    applied: bool  # an attempt of the job was applied


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
    ) -> None:
        self.r = connection
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
        # ids this process settled lately: a second copy in the same read batch is caught too
        self._script = None
        self._recent: set[str] = set()
        self._recent_order: deque[str] = deque()
        self.streams = {keys.update_stream(r): r for r in fed.regions}
        self.result_streams = {keys.evaluation_stream(r): r for r in fed.regions}
        model = self.store.read_current()
        if model is None:
            raise LookupError("no model in Redis: the coordinator initialises it")
        self.version = model.version
        self.weights: Weights = {k: np.array(v) for k, v in model.weights.items()}
        self.norm_bound = _norm_bound(fed.settings, sum(v.size for v in self.weights.values()))
        self._ensure_group()

    # --- the loop ---

    def run(self, should_stop: Callable[[], bool], block_ms: int = 500) -> Counters:
        self.tick()  # sync mode: learn the open round before re-reading held updates
        self.recover()
        while not should_stop():
            self.step(block_ms)
        return self.counters

    def step(self, block_ms: int = 500) -> int:
        """Read and settle one batch of new entries; returns how many were read."""
        if self.settings.mode == "sync":
            self.tick()
        streams = dict.fromkeys([*self.streams, *self.result_streams], ">")
        resp = self.r.xreadgroup(AGGREGATOR_GROUP, self.consumer, streams, count=READ_COUNT,
                                 block=block_ms)  # fmt: skip
        batch = in_arrival_order(
            (entry_ref(stream, entry_id), fields)
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
        held = {ref: f for stream in [*self.streams, *self.result_streams]
                for ref, f in self._delivered(stream)}  # fmt: skip
        for ref, fields in in_arrival_order(held.items()):
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
            found += [(entry_ref(stream, entry_id), fields) for entry_id, fields in entries]
            start = entries[-1][0].decode()
        cursor = "0-0"
        while True:
            cursor, claimed, *_ = self.r.xautoclaim(
                stream, AGGREGATOR_GROUP, self.consumer, min_idle_time=0, start_id=cursor,
                count=100,
            )  # fmt: skip
            found += [(entry_ref(stream, e), f) for e, f in claimed if f]
            if cursor in (b"0-0", "0-0"):
                break
        for c in self.r.xinfo_consumers(stream, AGGREGATOR_GROUP):  # dead instances' names
            name = c["name"].decode() if isinstance(c["name"], bytes) else c["name"]
            if name != self.consumer and not c["pending"]:
                self.r.xgroup_delconsumer(stream, AGGREGATOR_GROUP, name)
        return found

    def tick(self) -> None:
        round_ = self._round() if self.settings.mode == "sync" else None
        self.settle(self.strategy.tick(self.version, self.weights, time.time(), round_))
        if isinstance(self.strategy, FedBuff) and self.strategy.buffer and self._done():
            self.settle(self.strategy.flush(self.version, self.weights))

    def _done(self) -> bool:
        return bool(self.r.exists(self.keys.done))

    # --- one entry ---

    def handle(
        self, entry_id: str, fields: dict[bytes, bytes], known: JobRecord | None = None
    ) -> None:
        """Settle one entry, whatever its bytes: an exception while handling it is a rejection
        (``malformed``, with the detail), so no entry can stop the aggregator."""
        try:
            if split_ref(entry_id)[0] in self.result_streams:
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
        raw_id = _entry_id_field(fields, entry_id)
        claimed = {"claimed": raw_id}

        def refuse(reason: RejectReason, detail: str) -> None:
            self._reject_raw(entry_id, f"entry:{entry_id}", reason, detail, **claimed)

        payload = fields.get(b"u")
        if payload is None:
            return refuse(RejectReason.MALFORMED, "entry has no field 'u'")
        if len(payload) > MAX_UPDATE_BYTES:
            return refuse(RejectReason.TOO_LARGE, f"{len(payload)} bytes > {MAX_UPDATE_BYTES}")
        stream_region = self.streams[split_ref(entry_id)[0]]
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
        # strategy, or applied in this very batch, is a duplicate; anything else is judged
        if record.applied or self.strategy.holds(h.job_id) or h.job_id in self._recent:
            self._drop_duplicate(entry_id, raw_id)
            return
        pending = Pending(entry_id, update)
        problem = self._validate(pending)
        if problem:
            self.settle(Outcome().reject(pending, *problem))
            return
        if self.settings.mode == "sync":
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
        region = self.result_streams[split_ref(entry_id)[0]]

        def refuse(reason: RejectReason, detail: str) -> None:
            self._reject_raw(entry_id, f"entry:{entry_id}", reason, detail,
                             {"kind": "evaluation"}, claimed=raw_id)  # fmt: skip

        payload = fields.get(b"m")
        if payload is None:
            return refuse(RejectReason.MALFORMED, "entry has no field 'm'")
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
        if record.applied or job_id in self._recent:
            self._drop_duplicate(entry_id, raw_id)
            return
        try:
            result = check_result(
                payload, region, job_id, int(issued.get("version")), self.fed.metrics
            )
        except (BadResult, TypeError, ValueError) as exc:
            return refuse(RejectReason.MALFORMED, f"evaluation result: {exc}")
        accepted = {"version": result["version"], "region": region, "m": encode_result(result)}
        batch = FencedBatch().add(*_xadd(self.keys.metrics, accepted, maxlen=100_000))
        self._settle_entry(batch.add("HSET", self.keys.applied_jobs, job_id, raw_id), entry_id)
        self._remember([job_id])
        self.counters.results += 1

    def _check_signature(
        self, fields: dict[bytes, bytes], payload: bytes, region: str
    ) -> tuple[RejectReason, str] | None:
        """The stream's region names the secret: only that region's workers hold it."""
        signature = fields.get(b"sig", b"").decode(errors="replace")
        if not signature:
            return RejectReason.UNSIGNED, "the federation signs updates; no 'sig' field"
        key = (self.region_keys or {}).get(region)
        if key is None:
            return RejectReason.UNKNOWN_REGION, f"no secret for region {region!r}"
        if not auth.verify(key, payload, signature):
            return RejectReason.BAD_SIGNATURE, f"HMAC does not match {region!r}'s secret"
        return None

    def _validate(self, pending: Pending) -> tuple[RejectReason, str] | None:
        delta = pending.update.delta
        if delta.keys() != self.weights.keys():
            missing = sorted(set(self.weights) - set(delta))
            extra = sorted(set(delta) - set(self.weights))
            return RejectReason.SHAPE, f"tensors missing {missing[:3]}, unexpected {extra[:3]}"
        for name, t in delta.items():
            if t.shape != self.weights[name].shape:
                return RejectReason.SHAPE, f"{name}: {t.shape}, expected {self.weights[name].shape}"
            # one pass without a temporary: a NaN or inf makes the sum non-finite (a finite sum
            # that overflowed is re-checked element by element before rejecting)
            if not np.isfinite(np.sum(t, dtype=np.float64)) and not np.isfinite(t).all():
                return RejectReason.NON_FINITE, f"{name} has NaN or infinite values"
        bound = self.norm_bound
        if bound:
            clipped, norm = clip_to_norm(delta, bound)
            if clipped is not delta:
                if self.settings.norm_action == "reject":
                    return RejectReason.NORM, f"L2 norm {norm:.4g} > bound {bound:g}"
                delta.update(clipped)  # the update goes on at the bound's length
                self.r.hset(self.keys.clipped, pending.update_id, f"{norm:.6g}")
        return None

    # --- persisting outcomes ---

    def settle(self, outcome: Outcome) -> None:
        for pending, reason, detail in outcome.rejected:
            self._reject(pending, reason, detail)
        if outcome.new_weights is not None:
            self._commit(outcome)

    def _commit(self, outcome: Outcome) -> None:
        new_version = self.version + 1
        ids = [p.update_id for p in outcome.applied]
        jobs = [p.update.header.job_id for p in outcome.applied]
        entries = [part for p in outcome.applied for part in split_ref(p.entry_id)]
        regions = sorted({p.update.header.region for p in outcome.applied})
        info = {
            "mode": self.strategy.name,
            "updates": ",".join(ids),
            "regions": ",".join(regions),
            **{k: v for k, v in outcome.info.items()},
        }
        applies = {
            "version": new_version,
            "at": f"{time.time():.3f}",
            "updates": json.dumps(
                [
                    {
                        "id": p.update_id,
                        "region": p.update.header.region,
                        "base": p.update.header.base_version,
                        "n": p.update.header.n_samples,
                        "loss": round(p.update.header.train_loss, 5),
                    }
                    for p in outcome.applied
                ]
            ),
            **{k: str(v) for k, v in outcome.info.items()},
        }
        old = new_version - self.store.window
        blob = encode_model(Model(new_version, outcome.new_weights, {}))
        info = {"created_at": f"{time.time():.3f}", **{k: str(v) for k, v in info.items()}}
        staged = self.keys.staged_model(new_version, self.consumer)
        crash_point("aggregator.before_commit")
        with self.r.pipeline(transaction=False) as pipe:
            # the blob goes in first and outside the script (no copy through Lua)
            pipe.set(staged, blob, ex=STAGED_TTL)
            self._commit_script(
                keys=[self.keys.version, self.keys.model_info(new_version), self.keys.applied,
                      self.keys.applies,
                      self.keys.model(old) if old >= 0 else self.keys.model(-1),
                      staged, self.keys.model(new_version), self.keys.applied_jobs,
                      self.keys.lease("aggregator"), self.keys.pinned],
                args=[self.version, new_version, AGGREGATOR_GROUP, old if old >= 0 else -1,
                      len(ids), *ids, *jobs, len(entries), *entries,
                      len(info), *_flat(info), len(applies), *_flat(applies),
                      self._lease_value()],
                client=pipe,
            )  # fmt: skip
            _, done = pipe.execute()
        crash_point("aggregator.after_commit")
        if done == -1:
            raise StaleWriter("this aggregator lost its lease: another one is active")
        if not done:
            current = self.r.get(self.keys.version)
            raise StaleWriter(
                f"the model version moved to {current!r} under this aggregator "
                f"(expected {self.version}): is a second aggregator writing?"
            )
        if self.version in self._base_cache or len(self._base_cache) > 4:
            self._base_cache.pop(min(self._base_cache), None)
        self._base_cache[self.version] = self.weights
        self.version = new_version
        self.weights = {k: np.asarray(v, dtype=np.float32) for k, v in outcome.new_weights.items()}
        self.counters.applied += len(ids)
        self.counters.versions += 1
        self._remember(jobs)

    def _reject(self, pending: Pending, reason: RejectReason, detail: str) -> None:
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
            extra = {**(extra or {}), "claimed": claimed}
        fields = {
            "id": update_id,
            "reason": reason.value,
            "detail": detail[:500],
            "version": str(self.version),
            "at": f"{time.time():.3f}",
            **(extra or {}),
        }
        batch = FencedBatch().add("HSET", self.keys.rejected, update_id, reason.value)
        self._settle_entry(batch.add(*_xadd(self.keys.rejections, fields)), entry_id)
        self.counters.rejected += 1
        self.counters.by_reason[reason.value] = self.counters.by_reason.get(reason.value, 0) + 1

    def _drop_duplicate(self, entry_id: str, update_id: str) -> None:
        batch = FencedBatch().add("HINCRBY", self.keys.duplicates, update_id, 1)
        if self.region_keys is not None:  # signed federation: say so where operators look
            batch.add(*_xadd(self.keys.rejections, {
                "id": update_id, "reason": RejectReason.REPLAYED.value,
                "detail": "a copy of an update already settled: dropped",
                "version": str(self.version), "at": f"{time.time():.3f}"}))  # fmt: skip
        self._settle_entry(batch, entry_id)
        self.counters.duplicates += 1

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
        stream, stream_id = split_ref(entry_id)
        batch.add("XACK", stream, AGGREGATOR_GROUP, stream_id).add("XDEL", stream, stream_id)
        if not batch.execute(self.r, self.lease):
            raise StaleWriter("this aggregator lost its lease: another one is active")

    # --- helpers ---

    @property
    def _commit_script(self):
        if self._script is None:
            self._script = self.r.register_script(COMMIT_SCRIPT)
        return self._script

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
            flags = pipe.execute()
        n = len(jobs)
        return [JobRecord(parse_issued(raw), bool(applied))
                for raw, applied in zip(flags[:n], flags[n:], strict=True)]  # fmt: skip

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
    raw = fields.get(b"id", b"")
    claimed = raw.decode(errors="replace")[:MAX_ID] if isinstance(raw, bytes) else ""
    return claimed or f"entry:{ref}"


MAX_ID = 200


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


def _norm_bound(s, n_params: int) -> float:
    """The L2 bound updates are held to. With DP noise on, an honest update is its clipped delta
    plus Gaussian noise of norm about sd * sqrt(n_params); the bound makes room for that (and
    four standard deviations more) instead of rejecting every noisy update."""
    if not s.max_update_norm:
        return 0.0
    if not s.dp_noise:
        return s.max_update_norm
    sd = s.dp_noise * s.dp_clip
    return max(s.max_update_norm, s.dp_clip + sd * (math.sqrt(n_params) + 4))


def _xadd(stream: str, fields: dict, maxlen: int = 1_000_000) -> tuple:
    """An XADD command's words (capped, approximately, like redis-py's ``maxlen``)."""
    return ("XADD", stream, "MAXLEN", "~", maxlen, "*", *_flat(fields))


def _flat(mapping: dict) -> list:
    out: list = []
    for k, v in mapping.items():
        out += [k, v]
    return out
