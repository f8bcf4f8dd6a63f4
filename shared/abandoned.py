"""Jobs whose worker died: put back on their queue (bounded) or failed, within seconds.

RQ finds such a job only when its execution's heartbeat expires (the job timeout plus a minute)
and a worker's maintenance pass cleans the registry (every ten minutes by default). fedq workers
refresh a short-lived alive key instead (``Keys.alive``), so the dispatcher can tell a dead
worker within ``worker_ttl`` seconds and do RQ's cleanup for that one job itself: the same job id
goes back on the queue while it has retries left (a re-run's update carries the same id, so if
the dead worker had published it already, the aggregator drops the copy as a duplicate), and is
marked failed in RQ's failed registry once it has none.
"""

from __future__ import annotations

import contextlib

import redis
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.job_lifecycle import record_job_failure
from rq.queue import Queue
from rq.worker import Worker

from shared.jobs import SERIALIZER
from shared.keys import Keys


def settle_abandoned(
    connection: redis.Redis, keys: Keys, queue: Queue, job_id: str, worker: str
) -> bool:
    """Retry or fail a started job whose worker is gone; True if it went back on the queue."""
    try:
        job = Job.fetch(job_id, connection=connection, serializer=SERIALIZER)
    except NoSuchJobError:
        return False
    retry = bool(job.retries_left and job.retries_left > 0)
    with connection.pipeline() as pipe:
        queue.started_job_registry.remove_executions(job, pipeline=pipe)
        if retry:
            job.retry(queue, pipe)
            pipe.incr(keys.retried)
        else:
            record_job_failure(job, f"abandoned: worker {worker} stopped beating", pipe)
        pipe.incr(keys.abandoned)
        pipe.execute()
    forget_worker(connection, worker)
    return retry


def forget_worker(connection: redis.Redis, name: str) -> None:
    """Take a dead worker out of RQ's registry now (``rq info`` would list it for minutes)."""
    with contextlib.suppress(redis.RedisError, ValueError):  # gone already, or not RQ's
        dead = Worker.find_by_key(
            Worker.redis_worker_namespace_prefix + name, connection=connection,
            serializer=SERIALIZER,
        )  # fmt: skip
        if dead is not None:
            dead.register_death()


def sweep_dead_workers(connection: redis.Redis, keys: Keys, queues: list[Queue]) -> list[str]:
    """Forget the registered workers of these queues whose alive key lapsed; returns their names.

    A fedq worker sets its alive key before it registers with RQ, so a registered one without
    the key has been silent for ``worker_ttl`` seconds.
    """
    gone = []
    for queue in queues:
        for worker in Worker.all(queue=queue, serializer=SERIALIZER):
            if not connection.exists(keys.alive(worker.name)):
                forget_worker(connection, worker.name)
                gone.append(worker.name)
    return gone
