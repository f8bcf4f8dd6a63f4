"""The fedq worker: an RQ worker bound to one region's queue, with its data loaded once.

Jobs run in the worker process itself (RQ's ``SimpleWorker``), not in a forked work horse: the
region's data (as the task loaded it) and the model cache stay loaded between jobs, and torch never
runs across a fork (a child of a process that already ran a multi-threaded torch op can hang on
its first parallel op). torch is held to one thread, since a host runs several workers.

Jobs are JSON (never pickle), and the worker runs only fedq's allowlisted tasks: anything else
fails without being imported or run, with the reason said on the region's update stream (a
small entry the aggregator copies onto the rejections stream, which workers may not write).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import socket
import threading
import time
from pathlib import Path

import redis
from redis.exceptions import NoPermissionError
from rq.defaults import DEFAULT_WORKER_TTL
from rq.exceptions import StopRequested
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.results import Result
from rq.utils import now
from rq.worker import SimpleWorker

from shared import failures, federation, streams
from shared.abandoned import forget_worker, settle_abandoned, unpark
from shared.errors import FedqError
from shared.failures import Failure
from shared.jobs import SERIALIZER, TASKS, TRAIN_TASK, JobSpec, region_queue
from shared.keys import Keys
from shared.resilience import REDIS_DOWN, Outage, retry_redis
from shared.store import ModelCache, ModelStore
from shared.telemetry import WorkerMetrics
from tasks.api import BUILT_IN, load_task, require_private
from worker.context import WorkerContext, install

# the rejections stream's reasons for a job refused: not a fedq job, or past the budget
JOB_REFUSED, BUDGET_SPENT = streams.JOB_REFUSED, streams.BUDGET_SPENT
SIZES_WAIT = 30.0  # seconds a DP worker waits for every region's data size to plan its share
REFUSED_TTL = 86_400  # seconds a refused job stays in the failed registry, for operators
# RQ job features fedq never uses: each names code to import, a URL to call or more jobs to run
_JOB_EXTRAS = {
    "callbacks": lambda j: (
        j._success_callback_name or j._failure_callback_name or j._stopped_callback_name
    ),
    "webhooks": lambda j: j.webhooks,
    "dependencies": lambda j: j._dependency_ids,
    "repeats": lambda j: j.repeats_left,
    "a rate limit": lambda j: j.rate_limit_key,
    "a group": lambda j: j.group_id,
}


def job_problem(
    job: Job, context: WorkerContext | None = None, queue_name: str | None = None
) -> str | None:
    """Why a job must not run, or None: only fedq's tasks, with one job spec for argument and
    none of RQ's extras, whatever else the job's hash says, and from the queue it names; with a
    worker's context, a spec for this region, and in a signed federation one signed for this
    very job id, and recent."""
    if queue_name is not None and job.origin != queue_name:
        return f"the job names queue {str(job.origin)[:80]!r}, came from {queue_name!r}"
    try:
        name, args, kwargs = job.func_name, job.args, job.kwargs
    except Exception as exc:  # data the JSON serializer cannot read (pickle, garbage)
        return f"undecodable job data ({type(exc).__name__})"
    if name not in TASKS:
        return f"task {str(name)[:80]!r} is not one of fedq's tasks"
    extras = [what for what, present in _JOB_EXTRAS.items() if present(job)]
    if extras:
        return f"the job asks for {', '.join(extras)}, which fedq jobs never have"
    if kwargs or len(args) != 1:
        return "a fedq job takes one job spec (a JSON mapping) and nothing else"
    try:
        spec = JobSpec.from_json(args[0])
    except ValueError as exc:
        return f"bad job spec: {exc}"[:300]
    if TASKS[name] != spec.kind:
        return f"a {spec.kind} spec sent to {name}"
    if context is None:
        return None
    if spec.region != context.region:
        return f"a job for region {spec.region[:40]!r} reached a worker of {context.region!r}"
    if context.signing_key is not None:
        s = context.federation.settings
        if not spec.verify(context.signing_key, job.id):
            return "job spec unsigned, altered, or signed for another id or region"
        age = time.time() - spec.issued_at
        if age > s.queue_ttl + s.job_timeout * (s.max_retries + 1):
            return f"job spec issued {age:.0f}s ago: too old, a replay?"
    return None


class OncePerInterval(logging.Filter):
    """RQ logs each of its dequeue retries while Redis is down: let one through per interval.
    Its tracebacks for a Redis gone away mid-step become one line."""

    def __init__(self, interval: float = 10.0) -> None:
        super().__init__()
        self.interval = interval
        self._last = -interval

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], REDIS_DOWN):
            # RQ quits its loop when Redis goes away mid-step, logging the whole traceback;
            # ``run`` rides the outage out and says so: one line is enough
            record.msg = f"{record.getMessage()} (Redis went away: {record.exc_info[1]})"
            record.args, record.exc_info, record.exc_text = None, None, None
            return True
        if "could not connect to Redis" not in record.getMessage():
            return True
        now = time.monotonic()
        if now - self._last < self.interval:
            return False
        self._last = now
        return True


RQ_RETRY_LINES = OncePerInterval()
# RQ blocks on the queue for up to worker_ttl - 15 s and wants its socket timeout 10 s above
# that; it raises the pool's setting only for connections made after the worker starts, and
# redis-py 8 defaults to 5 s, so the worker's connection is made with RQ's value from the start
RQ_SOCKET_TIMEOUT = max(1, DEFAULT_WORKER_TTL - 15) + 10


class FedqWorker(SimpleWorker):
    """A SimpleWorker that refuses every job that is not one of fedq's tasks."""

    fedq_keys: Keys | None = None
    fedq_context: WorkerContext | None = None  # what jobs are checked against (region, secret)
    fedq_job_id: str | None = None  # the job being run, until RQ has recorded how it ended
    max_connection_wait_time = 5.0  # RQ's dequeue backoff: at most 5 s (RQ's default is 60)

    @property
    def shutdown_requested(self) -> bool:
        return self._shutdown_requested_date is not None

    fedq_refused: NoPermissionError | None = None  # Redis's ACL said no: not an outage

    def run_maintenance_tasks(self) -> None:
        with self._stop_if_refused():
            super().run_maintenance_tasks()

    def dequeue_job_and_maintain_ttl(self, *args, **kwargs):
        with self._stop_if_refused():
            return super().dequeue_job_and_maintain_ttl(*args, **kwargs)

    @contextlib.contextmanager
    def _stop_if_refused(self):
        """A command this worker's ACL user may not run will not succeed on a retry: stop the
        loop (quietly; ``run`` reports it in one line) instead of restarting RQ forever."""
        try:
            yield
        except NoPermissionError as exc:
            self.fedq_refused = exc
            raise StopRequested() from None

    def clean_group_registries(self) -> None:
        """fedq uses no RQ job groups, and their registries are shared by every queue: a
        region's worker (whose ACL user owns only its region's keys) leaves them alone."""

    def execute_job(self, job: Job, queue: Queue) -> None:
        """Admit the job before RQ does any bookkeeping for it: RQ would write the registries
        of the queue the job's hash names (``origin``), which whoever wrote the job chose."""
        problem = job_problem(job, self.fedq_context, queue.name)
        refusal = (problem, JOB_REFUSED) if problem is not None else self._spend_privacy(job)
        if refusal is not None:
            self._refuse(job, queue, *refusal)
            self._count(job, "refused")
            return
        self.fedq_job_id = job.id
        super().execute_job(job, queue)
        self.fedq_job_id = None  # not reached if recording the job's end failed

    def _spend_privacy(self, job: Job) -> tuple[str, str] | None:
        """A train job of a DP federation first spends its steps from the region's budget (every
        attempt does: it trains again); refused, with the reason recorded, when it would not fit.
        """
        ctx = self.fedq_context
        if ctx is None or ctx.privacy is None or job.func_name != TRAIN_TASK:
            return None
        from shared.privacy import BudgetSpent, BudgetUnreadable, reserve

        p = ctx.privacy

        def spend() -> None:
            reserve(self.connection, ctx.keys, ctx.region, p.job, p.delta, p.limit)

        try:
            retry_redis(spend, Outage(ctx.say, f"worker {ctx.worker_id}"))
        except (BudgetSpent, BudgetUnreadable) as exc:  # unreadable: spend nothing, train nothing
            return str(exc), BUDGET_SPENT
        ctx.privacy_job = p.job
        return None

    def _refuse(self, job: Job, queue: Queue, detail: str, reason: str) -> None:
        """Fail a refused job without RQ's failure handling: that would import and call the
        job's callbacks, send its webhooks and enqueue its dependents, all named by whoever
        wrote the job. Settled on the queue the job was taken from, not the one it claims."""
        self._record_refusal(job, detail, reason)
        job.ended_at = now()
        job.origin = queue.name
        with self.connection.pipeline() as pipe:
            job.set_status(JobStatus.FAILED, pipeline=pipe)
            pipe.lrem(queue.intermediate_queue_key, 1, job.id)  # RQ's dequeue parked it there
            reason = f"JobRefused: {detail}"
            queue.failed_job_registry.add(job, ttl=REFUSED_TTL, exc_string=reason, pipeline=pipe)
            Result.create_failure(job, REFUSED_TTL, exc_string=reason, worker_name=self.name,
                                  pipeline=pipe)  # fmt: skip
            self.increment_failed_job_count(pipe)
            pipe.execute()

    def _count(self, job: Job, outcome: str) -> None:
        ctx = self.fedq_context
        if ctx is None or ctx.metrics is None:
            return
        try:
            kind = TASKS.get(job.func_name, "other")
        except Exception:  # noqa: BLE001 - a refused job's data may not even decode
            kind = "other"
        ctx.metrics.job_ended(kind, outcome)

    def handle_job_success(self, job: Job, queue: Queue, *args, **kwargs) -> None:
        super().handle_job_success(job, queue, *args, **kwargs)
        self._count(job, "done")

    def handle_exception(self, job: Job, *exc_info) -> None:
        """A job that raised: count it in its region's failure streak (``shared.failures``:
        ``fedq status`` and ``fedq run`` show it, with its cause, at once). The first failure
        of a streak is logged with its traceback, the same failure again in one line: a broken
        task filled a log with thousands of identical tracebacks."""
        failure = self._record_failure(job, exc_info[1])
        if failure is None or failure.count == 1:
            super().handle_exception(job, *exc_info)
        else:
            self.log.error(
                "Worker %s: job %s failed the same way again (%d in a row): %s",
                self.name,
                job.id,
                failure.count,
                failure.cause,
            )

    def _record_failure(self, job: Job, exc: BaseException | None) -> Failure | None:
        """None for what is not the job's failure: a stop (SIGTERM), Redis going away."""
        ctx = self.fedq_context
        if ctx is None or exc is None or self._stopped_job_id == job.id:
            return None
        if isinstance(exc, (SystemExit, KeyboardInterrupt, StopRequested, *REDIS_DOWN)):
            return None
        try:
            kind = TASKS.get(job.func_name, "other")
        except Exception:  # noqa: BLE001 - a job whose data does not decode was refused
            return None
        if kind not in failures.KINDS:
            return None
        try:
            return failures.record(
                self.connection, ctx.keys, ctx.region, kind, failures.cause_of(exc), job.id
            )
        except redis.RedisError:
            return None

    def handle_job_failure(self, job: Job, queue: Queue, *args, **kwargs) -> None:
        self._count(job, "failed")
        # RQ puts a failed job with retries left back on its queue (same id); fedq counts it
        if self.fedq_keys is not None and job.should_retry and self._stopped_job_id != job.id:
            with contextlib.suppress(redis.RedisError):
                self.connection.incr(self.fedq_keys.retried)
        super().handle_job_failure(job, queue, *args, **kwargs)

    def _record_refusal(self, job: Job, detail: str, reason: str) -> None:
        """Say why a job was refused on the region's own update stream: the aggregator copies
        it onto the rejections stream (naming the stream's region), which no worker may append
        to (a region could flood it, or forge another region's failures there)."""
        ctx = self.fedq_context
        if ctx is None:
            self.log.warning("Worker %s: refused job %s: %s", self.name, job.id, detail)
            return
        fields = streams.refusal_entry(job.id, reason, detail, worker=self.name)
        self.connection.xadd(ctx.keys.update_stream(ctx.region), fields)


_INSTANCE = secrets.token_hex(3)  # this process's start


def worker_name(region: str) -> str:
    """``<region>.<host>-<instance>.<pid>``: the region first (ACL patterns), the pid last. The
    instance tells apart two starts with the same host name and pid: a container restarted
    after a crash is the same host running pid 1 again, and RQ refuses a worker whose name
    is still registered (the dead one's key lives until its TTL), so it crash-looped."""
    return f"{region}.{socket.gethostname()}-{_INSTANCE}.{os.getpid()}"


def prepare(
    connection: redis.Redis,
    keys: Keys,
    region: str,
    data_dir: Path,
    slowdown: float = 1.0,
    wait: float = 60.0,
    say=None,
    task: str | None = None,
    max_epsilon: float | None = None,
) -> WorkerContext:
    """Check the region and the data's public part against the federation, load the region's
    data through the federation's task, set the context.

    The record names the task, but a worker imports only a built-in task or the one its own
    operator named (``task``): whoever could write the record could otherwise make every
    worker import any module installed on its host."""
    fed = federation.wait_for(connection, keys, wait, say)
    if fed.settings.task not in BUILT_IN and fed.settings.task != task:
        raise FedqError(f"the federation's task {fed.settings.task[:200]!r} is not built in: "
                        "start the worker with --task naming it to run it")  # fmt: skip
    if region not in fed.regions:
        raise FedqError(f"unknown region {region!r}; the federation has: {', '.join(fed.regions)}")
    if max_epsilon is not None and not fed.settings.dp_clip:
        raise FedqError(f"this worker spends at most epsilon {max_epsilon:g} of its region's "
                        "privacy (--max-epsilon) and the federation trains without DP-SGD "
                        "(start it with --dp-epsilon)")  # fmt: skip
    task = load_task(fed.settings.task)
    federation.check_data(fed, task, data_dir)
    data = task.load_region(data_dir, region)
    store = ModelStore(connection, keys, window=fed.settings.max_staleness + 1)
    context = WorkerContext(
        connection=connection,
        keys=keys,
        region=region,
        worker_id=worker_name(region),
        task=task,
        data=data,
        federation=fed,
        store=store,
        cache=ModelCache(store),
        slowdown=slowdown,
    )
    if fed.settings.signed_updates:
        from shared.auth import key_dir, load_key

        context.signing_key = load_key(key_dir(keys.namespace), region)
    install(context)
    # a count, not data: lets the dispatcher give each region its share of the work
    connection.set(keys.data_size(region), task.data_size(data))
    if fed.settings.dp_clip:
        context.privacy = plan_privacy(connection, keys, fed, task, data, region, max_epsilon)
        p = context.privacy
        steps = f"{p.job.steps} step{'s' if p.job.steps != 1 else ''}"
        (say or print)(f"DP-SGD: noise {p.job.noise:.3f}, clip {p.job.clip:g}, {steps} a job "
                       f"at rate {p.job.rate:.4f}, delta {p.delta:.2g}, epsilon "
                       f"limit {p.limit:g}")  # fmt: skip
    return context


def plan_privacy(connection: redis.Redis, keys: Keys, fed, task, data, region: str,
                 cap: float | None = None):  # fmt: skip
    """This region's DP-SGD plan: its own data's shoppers and sampling rate, and the noise its
    budget already runs with if an earlier worker of the region chose it, else the federation's
    ``dp_noise``, else the multiplier that spends ``dp_epsilon`` (or the region's own ``cap``,
    if lower) over the region's share of the jobs (the announced data sizes, shared out the
    way the dispatcher does)."""
    from shared.privacy import BudgetUnreadable, read_budget, region_privacy

    require_private(task, fed.settings.task)
    job = task.private_job(data, fed.settings.task_settings)
    try:
        budget = read_budget(connection, keys, region)
    except BudgetUnreadable:  # every job will be refused, and say why, until it is repaired
        budget = None
    noise = budget.noise if budget is not None else None
    share = 1.0
    if noise is None and not fed.settings.dp_noise:
        sizes = _announced_sizes(connection, keys, fed.regions)
        share = sizes[region] / sum(sizes.values())
    return region_privacy(fed.settings, job.units, job.rate, job.steps, share, noise, cap)


def _announced_sizes(connection: redis.Redis, keys: Keys, regions) -> dict[str, float]:
    """Every region's announced data size, waiting a little for those not yet heard of (the
    regions' workers start side by side); one still missing counts as the mean, as in dispatch."""
    deadline = time.monotonic() + SIZES_WAIT
    while True:
        announced = connection.mget([keys.data_size(r) for r in regions])
        known = {r: float(v) for r, v in zip(regions, announced, strict=True) if v}
        if len(known) == len(regions) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    default = sum(known.values()) / len(known)
    return {r: known.get(r, default) for r in regions}


def keep_alive(connection: redis.Redis, keys: Keys, name: str, ttl: float) -> threading.Event:
    """Refresh this worker's alive key from a thread, also while a job runs in-process.

    RQ's own worker key outlives a killed worker by minutes; this one lapses ``ttl`` seconds
    (the federation's ``worker_ttl``) after the process dies, which is how the dispatcher spots
    an abandoned job quickly. Five beats per TTL: a slow beat or two never looks like a death.
    """
    stop = threading.Event()
    connection.set(keys.alive(name), "1", px=int(ttl * 1000))

    def beat() -> None:
        while not stop.is_set():
            with contextlib.suppress(redis.RedisError):
                connection.set(keys.alive(name), "1", px=int(ttl * 1000))
            stop.wait(ttl / 5)
        with contextlib.suppress(redis.RedisError):
            connection.delete(keys.alive(name))

    threading.Thread(target=beat, name="fedq-alive", daemon=True).start()
    return stop


def run(
    connection: redis.Redis,
    keys: Keys,
    region: str,
    data_dir: Path,
    burst: bool = False,
    slowdown: float = 1.0,
    task: str | None = None,
    wait: float = 60.0,
    say=None,
    max_epsilon: float | None = None,
    metrics: WorkerMetrics | None = None,
) -> bool:
    """Work the region's queue until SIGTERM (or, with ``burst``, until it is empty).

    RQ's loop quits on an error it does not expect, such as Redis going away between jobs or
    while it records a job's end. This loop then waits for Redis (backoff, one line per
    interval), puts back the job it was running if RQ could not record its end (same id: an
    update it already published is a duplicate, never applied twice), and works on.
    """
    import torch

    torch.set_num_threads(1)
    outage = Outage(say, f"worker {worker_name(region)}")
    # Redis away while the worker starts (it loads torch and its data for seconds): wait too
    context = retry_redis(
        lambda: prepare(connection, keys, region, data_dir, slowdown, wait, say, task, max_epsilon),
        outage,
    )
    if say is not None:
        context.say = say
    context.metrics = metrics
    queue = region_queue(connection, keys, region)
    ttl = context.federation.settings.worker_ttl
    alive = retry_redis(lambda: keep_alive(connection, keys, context.worker_id, ttl), outage)
    worked = False
    try:
        while True:
            # RQ's worker names its connection on Redis as it is made (CLIENT SETNAME): Redis
            # going away at that moment is an outage like any other, not the worker's end
            worker = retry_redis(lambda: FedqWorker([queue], connection=connection,
                                                    serializer=SERIALIZER,
                                                    name=context.worker_id), outage)  # fmt: skip
            worker.fedq_keys = keys
            worker.fedq_context = context
            worker.log.addFilter(RQ_RETRY_LINES)
            with contextlib.suppress(*REDIS_DOWN):  # RQ's teardown may fail with Redis gone
                worked = worker.work(burst=burst, logging_level="WARNING") or worked
            if worker.fedq_refused is not None:
                raise FedqError(
                    f"Redis refused worker {worker.name}: {worker.fedq_refused} "
                    "(its ACL user lacks a permission: see `fedq redis acl`)"
                )
            if worker.shutdown_requested or (burst and _reachable(connection)):
                return worked
            if not _ride_out(connection, outage):
                return worked
            retry_redis(lambda w=worker: _settle(connection, keys, queue, w), outage)
    except StopRequested:  # SIGTERM between two of RQ's loops: RQ's handler is still installed
        return worked
    finally:
        alive.set()


def _settle(connection: redis.Redis, keys: Keys, queue: Queue, worker: FedqWorker) -> None:
    """After an outage: put back the job RQ could not record the start or the end of (same id),
    or forget the worker RQ left registered; Redis may go again meanwhile (the caller retries)."""
    held = worker.fedq_job_id
    status = connection.hget(Job.key_for(held), "status") if held else None
    if status == b"started":
        settle_abandoned(connection, keys, queue, held, worker.name)
    else:
        if status == b"queued":  # taken, never started: parked in the intermediate list
            unpark(connection, queue, held)
        forget_worker(connection, worker.name)


def _reachable(connection: redis.Redis) -> bool:
    try:
        return bool(connection.ping())
    except REDIS_DOWN:
        return False


def _ride_out(connection: redis.Redis, outage: Outage) -> bool:
    """Wait for Redis; False if SIGTERM or SIGINT came first."""
    stop = threading.Event()
    handlers = {sig: signal.signal(sig, lambda *_: stop.set())
                for sig in (signal.SIGTERM, signal.SIGINT)}  # fmt: skip
    try:
        retry_redis(connection.ping, outage, should_stop=stop.is_set, sleep=stop.wait)
        return True
    except REDIS_DOWN:
        return False
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
