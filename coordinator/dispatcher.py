"""The dispatcher: keeps regions busy, schedules federated evaluation, decides when to stop.

It never touches weights. Async modes keep ``inflight_per_region`` train jobs per region: a slot
frees when its job finished, failed, was stopped or canceled, or expired unstarted (a region
with no live worker holds at most that many queued jobs; they expire after ``queue_ttl``). Sync
mode runs rounds: one job per region on the same base version, a deadline, then the next round
once the aggregator has made the new version (or the deadline passed with nothing to apply).

All its state is in Redis (in-flight sets, the dispatch counter, the round, the evaluated
versions), so a restarted dispatcher continues where the last one stopped.

A region an operator quarantined (``fedq quarantine``, ``Keys.quarantined``) gets no train job
while it is: the aggregator would refuse its updates, so a job would only hold a slot and make
a sync round wait for an update that cannot count. Its evaluation jobs still go out.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import redis
from rq import Retry
from rq.job import Job

from shared import auth, failures
from shared.abandoned import PARKED_AFTER, parked, settle_abandoned, sweep_dead_workers, unpark
from shared.evaluations import latest_validation
from shared.federation import Federation
from shared.jobs import (
    EVALUATE_TASK,
    TRAIN_TASK,
    JobSpec,
    issued_command,
    new_job_id,
    region_queue,
)
from shared.keys import Keys
from shared.lease import FencedBatch, Lease, LostLease
from shared.privacy import exhausted_regions
from shared.store import ModelStore
from shared.streams import waiting_updates

FINAL_STATES = {b"finished", b"failed", b"stopped", b"canceled"}
ROUND_GRACE = 2.0  # seconds after a round's deadline the aggregator gets to close it
RESULT_TTL = 3600
PIN_CHECK = 1.0  # seconds between looks at pinned versions' evaluation jobs
FAILURE_CHECK = 1.0  # seconds between looks at the regions' failure streaks
PROBE_EVERY = 30.0  # seconds between the train jobs a broken region is still given (one each)
FAILURE_TTL = 86_400


class Dispatcher:
    def __init__(
        self,
        connection: redis.Redis,
        keys: Keys,
        fed: Federation,
        clock: Callable[[], float] = time.time,
        lease: Lease | None = None,
    ) -> None:
        self.r = connection
        self.lease = lease  # what every job's bookkeeping is fenced by (None: a lone dispatcher)
        self.keys = keys
        self.fed = fed
        self.s = fed.settings
        self.clock = clock
        self.store = ModelStore(connection, keys, window=fed.settings.max_staleness + 1)
        self.queues = {r: region_queue(connection, keys, r) for r in fed.regions}
        self._swept_at = 0.0
        self._unpinned_at = 0.0
        self._seen_started: set[str] = set()  # in-flight jobs seen running at least once
        self._parked_since: dict[str, float] = {}  # taken from the queue, not started: since
        self._open_regions: list[str] | None = None  # this tick's regions within their budget
        self.quarantined: frozenset[str] = frozenset()  # read once a tick (``Keys.quarantined``)
        self.fold = failures.Fold(connection, keys, fed.regions)
        self._failures_at = 0.0
        self.broken: dict[str, failures.Failure] = {}  # region -> why its train jobs fail
        self._probed_at: dict[str, float] = {}  # broken region -> when it was last given a job
        self.region_keys = (
            auth.load_keys(auth.key_dir(keys.namespace), fed.regions)
            if fed.settings.signed_updates else None
        )  # fmt: skip

    # --- one pass ---

    def tick(self) -> str | None:
        """Dispatch what is due; returns the reason to stop once a target is reached."""
        self._open_regions = None  # the regions' budgets are read once a tick
        with self.r.pipeline(transaction=False) as pipe:
            pipe.get(self.keys.done)
            pipe.smembers(self.keys.quarantined)
            done, quarantined = pipe.execute()
        self.quarantined = frozenset(m.decode(errors="replace") for m in quarantined)
        if done:
            return done.decode()
        version = self.store.current_version() or 0
        reason = self.target_reached(version)
        if reason:
            self.r.set(self.keys.done, reason, nx=True)
            return reason
        if self.s.mode == "sync":
            self._sync(version)
        else:
            self._async()
        self._evaluations(version)
        if self.clock() - self._failures_at >= FAILURE_CHECK:
            self.check_failures()
        if self.clock() - self._unpinned_at >= PIN_CHECK:
            self._release_pins()
            self._unpinned_at = self.clock()
        if self.clock() - self._swept_at >= self.s.worker_ttl:
            sweep_dead_workers(self.r, self.keys, list(self.queues.values()))
            self._swept_at = self.clock()
        return None

    def target_reached(self, version: int) -> str | None:
        if self.s.target_versions and version >= self.s.target_versions:
            return f"reached {version} versions"
        if self.s.dp_clip and not self._within_budget():
            return "every region's privacy budget is spent"
        if self.s.time_budget and self.clock() - self.fed.created_at >= self.s.time_budget:
            return f"time budget of {self.s.time_budget:.0f}s spent"
        if self.s.target_metric:
            best = self._latest_validation()
            if best is not None and best >= self.s.target_metric:
                label = self.fed.metrics.label(self.fed.metrics.headline)
                return f"validation {label} {best:.4f} >= {self.s.target_metric}"
        return None

    # --- async modes ---

    def _async(self) -> None:
        """Fill free slots, each with the region furthest behind its share of the data.

        A region's share is its data size (announced by its workers) over the total, so every
        region's data is visited at the same pace and no update needs down-weighting. A region
        with no live worker holds at most ``inflight_per_region`` queued jobs, and those stop
        counting toward ``max_inflight`` after ``stall_after`` seconds: it slows nobody down.
        """
        now = self.clock()
        active = {r: self.reconcile(r) for r in self.fed.regions}
        busy = sum(
            1
            for jobs in active.values()
            for status, at in jobs.values()
            if status == b"started" or now - at < self.s.stall_after
        )
        free = self.s.max_inflight - busy if self.s.max_inflight else 10**9
        open_regions = [r for r in self._dispatchable(active)
                        if len(active[r]) < self.s.inflight_per_region]  # fmt: skip
        if free <= 0 or not open_regions or self._aggregator_behind():
            return
        counts, sizes = self._shares()
        while free > 0 and open_regions:
            region = min(open_regions, key=lambda r: ((counts.get(r, 0) + 1) / sizes[r], r))
            job_id = self._enqueue_train(region, None)
            counts[region] = counts.get(region, 0) + 1
            active[region][job_id] = (b"queued", now)
            if len(active[region]) >= self.s.inflight_per_region or region in self.broken:
                open_regions.remove(region)
            free -= 1

    def check_failures(self) -> None:
        """Fold the aggregator's latest rejections into the regions' failure streaks and note
        the regions whose train jobs failed the same way ``max_failures`` times in a row."""
        self.fold.run()
        found = failures.read(self.r, self.keys, self.fed.regions)
        broken = failures.broken(found, self.s.max_failures)
        now = self.clock()
        for region in list(self.broken):
            if (region, "train") not in broken:  # a job of it succeeded: it is back
                del self.broken[region]
                self._probed_at.pop(region, None)
        for (region, kind), failure in broken.items():
            if kind == "train":
                self._probed_at.setdefault(region, now)
                self.broken[region] = failure
        self._failures_at = now

    def _dispatchable(self, active: dict[str, dict] | None = None) -> list[str]:
        """The regions that get train jobs: those within their privacy budget and not
        quarantined (its updates would be refused: a job would only hold a slot, and a sync
        round would wait for it), but a region whose train jobs keep failing the same way gets
        one job every ``PROBE_EVERY`` seconds (and none while one is in flight), not its share:
        its failures took the others' slots and filled its workers' logs, and only a job that
        runs can tell it was fixed."""
        now = self.clock()
        out = []
        for region in self._within_budget():
            if region in self.quarantined:
                continue
            if region in self.broken:
                if (active or {}).get(region) or now - self._probed_at[region] < PROBE_EVERY:
                    continue
                self._probed_at[region] = now
            out.append(region)
        return out

    def _within_budget(self) -> list[str]:
        """The regions that can take another job: in a DP federation, those whose privacy
        budget (kept by their own workers, read-only here) is not spent."""
        if not self.s.dp_clip:
            return list(self.fed.regions)
        if self._open_regions is None:
            spent = exhausted_regions(self.r, self.keys, self.fed.regions)
            self._open_regions = [r for r in self.fed.regions if r not in spent]
        return self._open_regions

    def _aggregator_behind(self) -> bool:
        """Too many updates wait in the stream: hold new jobs until the aggregator catches up.

        While the aggregator is down (a restart takes seconds) workers keep finishing jobs on
        the same base version; past ``max_staleness`` such a backlog would only be rejected as
        stale, so the dispatcher stops at half of it.
        """
        waiting = waiting_updates(self.r, self.keys, self.fed.regions)
        return waiting >= max(1, self.s.max_staleness // 2)

    def _shares(self) -> tuple[dict[str, int], dict[str, float]]:
        counts = {
            k.decode(): int(v) for k, v in self.r.hgetall(self.keys.dispatched_by_region).items()
        }
        announced = self.r.mget([self.keys.data_size(r) for r in self.fed.regions])
        known = {r: float(v) for r, v in zip(self.fed.regions, announced, strict=True) if v}
        default = sum(known.values()) / len(known) if known else 1.0
        sizes = {r: max(known.get(r, default), 1.0) for r in self.fed.regions}
        return counts, sizes

    def reconcile(self, region: str) -> dict[str, tuple[bytes, float]]:
        """Drop in-flight jobs that ended or expired; return the others: id -> (status, since)."""
        key = self.keys.inflight(region)
        held = {k.decode(): float(v) for k, v in self.r.hgetall(key).items()}
        if not held:
            return {}
        ids = list(held)
        with self.r.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hmget(Job.key_for(job_id), "status", "worker_name")
            rows = pipe.execute()
        states = {i: status for i, (status, _) in zip(ids, rows, strict=True)}
        # a started job whose worker stopped beating is abandoned: retry it now (same id, so
        # a copy of its update is a duplicate), not when RQ's heartbeat expires minutes later
        started = {i: w.decode() for i, (st, w) in zip(ids, rows, strict=True)
                   if st == b"started" and w}  # fmt: skip
        with self.r.pipeline(transaction=False) as pipe:
            for name in started.values():
                pipe.exists(self.keys.alive(name))
            alive = pipe.execute()
        for (job_id, name), beating in zip(started.items(), alive, strict=True):
            if not beating:
                retried = settle_abandoned(self.r, self.keys, self.queues[region], job_id, name)
                states[job_id] = b"queued" if retried else b"failed"
                held[job_id] = self.clock()
                if retried:
                    self.r.hset(key, job_id, f"{held[job_id]:.3f}")
        # a job seen running and now queued again went back to its queue (its worker stopped
        # it, or failed it with retries left): it waits from now, not from its first dispatch,
        # or it would count as stalled at once and let an extra job past max_inflight
        for job_id, status in states.items():
            if status == b"started":
                self._seen_started.add(job_id)
            elif status == b"queued" and job_id in self._seen_started:
                self._seen_started.discard(job_id)
                held[job_id] = self.clock()
                self.r.hset(key, job_id, f"{held[job_id]:.3f}")
        self._unpark_lost(region, states, held)
        ended = [i for i, st in states.items() if st is None or st in FINAL_STATES]
        self._seen_started.difference_update(ended)
        for job_id in ended:
            self._parked_since.pop(job_id, None)
        if ended:
            with self.r.pipeline(transaction=False) as pipe:
                pipe.hdel(key, *ended)
                for job_id in ended:
                    if states[job_id] is None:  # expired unstarted: its id would stay queued
                        self.queues[region].remove(job_id, pipeline=pipe)
                pipe.execute()
        return {i: (st, held[i]) for i, st in states.items() if i not in ended}

    def _unpark_lost(self, region: str, states: dict, held: dict[str, float]) -> None:
        """Put back a job a worker took and never started (it died, or lost Redis, in between:
        ``shared.abandoned.unpark``) once it has sat in the queue's intermediate list for
        ``PARKED_AFTER`` seconds; only jobs queued that long are looked for there."""
        now = self.clock()
        waiting = [
            i for i, st in states.items() if st == b"queued" and now - held[i] >= PARKED_AFTER
        ]
        if not waiting:
            return
        queue = self.queues[region]
        in_list = parked(self.r, queue)
        for job_id in waiting:
            if job_id not in in_list:
                self._parked_since.pop(job_id, None)
                continue
            since = self._parked_since.setdefault(job_id, now)
            if now - since >= PARKED_AFTER:
                del self._parked_since[job_id]
                if unpark(self.r, queue, job_id):
                    held[job_id] = now  # waits for a worker from now, like a new job
                    self.r.hset(self.keys.inflight(region), job_id, f"{now:.3f}")

    def _enqueue_train(self, region: str, round_number: int | None) -> str:
        n = int(self.r.incr(self.keys.dispatched))
        job_id = new_job_id(region, f"r{round_number}" if round_number is not None else f"t{n}")
        version = self.store.current_version() or 0
        spec = JobSpec(
            kind="train",
            region=region,
            seed=self.s.seed * 1_000_003 + n,
            lr_scale=self.s.decay(version, self.clock() - self.fed.created_at),
            round=round_number,
            issued_at=self.clock(),
        )
        spec = self._sign(spec, job_id)
        # counted in flight (and issued) before it is queued: a dispatcher killed in between
        # leaves an id with no job, which the next reconcile drops, never a job beyond the bound
        # (fenced: a paused ex-active coordinator enqueues nothing once a standby took over)
        batch = FencedBatch().add(*issued_command(self.keys, job_id, spec))
        batch.add("HSET", self.keys.inflight(region), job_id, f"{self.clock():.3f}")
        self._fenced(batch.add("HINCRBY", self.keys.dispatched_by_region, region, 1))
        self.queues[region].enqueue(
            TRAIN_TASK,
            spec.to_json(),
            job_id=job_id,
            job_timeout=int(self.s.job_timeout),
            ttl=int(self.s.queue_ttl),
            result_ttl=RESULT_TTL,
            failure_ttl=FAILURE_TTL,
            retry=Retry(max=self.s.max_retries) if self.s.max_retries else None,
        )
        return job_id

    def drain(self, should_stop: Callable[[], bool], poll: float = 0.2) -> None:
        """After the target: cancel queued train jobs, let started ones finish and be settled.

        Returns once no train job is in flight and the aggregator has settled every update
        (every region's update stream is empty), or after ``job_timeout`` seconds.
        """
        deadline = self.clock() + self.s.job_timeout
        for region in self.fed.regions:
            for raw in self.r.hkeys(self.keys.inflight(region)):
                job_id = raw.decode()
                # a job still on its queue is canceled; one a worker has just taken (still
                # "queued" until RQ marks it started) runs, and its update is waited for below,
                # or it would be applied after the final evaluation chose its version
                queued = self.r.hget(Job.key_for(job_id), "status") == b"queued"
                if queued and self.queues[region].remove(job_id):
                    self.r.delete(Job.key_for(job_id))
        while not should_stop() and self.clock() < deadline:
            busy = sum(len(self.reconcile(region)) for region in self.fed.regions)
            if busy == 0 and waiting_updates(self.r, self.keys, self.fed.regions) == 0:
                return
            time.sleep(poll)

    # --- sync mode ---

    def _sync(self, version: int) -> None:
        raw = self.r.hgetall(self.keys.round)
        now = self.clock()
        if raw:
            number = int(raw[b"number"])
            base = int(raw[b"base_version"])
            deadline = float(raw[b"deadline"])
            if base == version and now < deadline + ROUND_GRACE:
                return  # the round is open
            if base == version:
                self._cancel_round(number)  # nothing applied by the deadline: start over
        else:
            number = 0
        self._start_round(number + 1, version, now)

    def _start_round(self, number: int, version: int, now: float) -> None:
        regions = self._dispatchable()
        batch = FencedBatch()
        for region in self.fed.regions:
            batch.add("DEL", self.keys.inflight(region))
        batch.add("HSET", self.keys.round, "number", number, "base_version", version,
                  "started", f"{now:.3f}", "deadline", f"{now + self.s.round_deadline:.3f}",
                  "regions", json.dumps(regions))  # fmt: skip
        self._fenced(batch)
        jobs = {region: self._enqueue_train(region, number) for region in regions}
        self.r.hset(self.keys.round, "jobs", json.dumps(jobs))

    def _cancel_round(self, number: int) -> None:
        raw = self.r.hget(self.keys.round, "jobs")
        for region, job_id in (json.loads(raw) if raw else {}).items():
            self.queues[region].remove(job_id)

    # --- evaluation ---

    def _evaluations(self, version: int) -> None:
        every = self.s.eval_every
        if every <= 0:
            return
        due = version - version % every
        if due > 0 and self.r.sadd(self.keys.evaluated, due):
            self.schedule_evaluation(due)

    def schedule_evaluation(self, version: int) -> None:
        """One evaluate job per region for ``version``, ahead of queued train jobs; the version
        is pinned (its blob outlives the window) until every one of them is done."""
        self.r.sadd(self.keys.evaluated, version)
        specs = {}
        for region in self.fed.regions:
            job_id = new_job_id(region, f"e{version}")
            spec = JobSpec(kind="evaluate", region=region, seed=self.s.seed, version=version,
                           issued_at=self.clock())  # fmt: skip
            specs[job_id] = self._sign(spec, job_id)
        batch = FencedBatch().add("HSET", self.keys.pinned, version, json.dumps(list(specs)))
        for job_id, spec in specs.items():
            batch.add(*issued_command(self.keys, job_id, spec))
        self._fenced(batch)
        for job_id, spec in specs.items():
            self.queues[spec.region].enqueue(
                EVALUATE_TASK,
                spec.to_json(),
                job_id=job_id,
                job_timeout=int(self.s.job_timeout),
                ttl=int(max(self.s.queue_ttl, 600)),
                result_ttl=RESULT_TTL,
                failure_ttl=FAILURE_TTL,
                at_front=True,
            )

    def _release_pins(self) -> None:
        """Unpin every version whose evaluation jobs all ended (finished, failed, expired)."""
        pins = {int(v): json.loads(ids) for v, ids in self.r.hgetall(self.keys.pinned).items()}
        for version, job_ids in pins.items():
            with self.r.pipeline(transaction=False) as pipe:
                for job_id in job_ids:
                    pipe.hget(Job.key_for(job_id), "status")
                states = pipe.execute()
            if all(state is None or state in FINAL_STATES for state in states):
                self.store.unpin(version)

    def _fenced(self, batch: FencedBatch) -> None:
        if not batch.execute(self.r, self.lease):
            raise LostLease("this coordinator lost its lease: another one is active")

    def _sign(self, spec: JobSpec, job_id: str) -> JobSpec:
        if self.region_keys is None:
            return spec
        return spec.signed(self.region_keys[spec.region], job_id)

    def _latest_validation(self) -> float | None:
        """The task's headline on validation, regions combined, at the last complete point."""
        return latest_validation(self.r, self.keys, self.fed)
