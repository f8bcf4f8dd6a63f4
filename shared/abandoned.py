"""Jobs whose worker died: put back on their queue (bounded) or failed, within seconds.

RQ finds such a job only when its execution's heartbeat expires (the job timeout plus a minute)
and a worker's maintenance pass cleans the registry (every ten minutes by default). fedq workers
refresh a short-lived alive key instead (``Keys.alive``), so the dispatcher can tell a dead
worker within ``worker_ttl`` seconds and do RQ's cleanup for that one job itself: the same job id
goes back on the queue while it has retries left (a re-run's update carries the same id, so if
the dead worker had published it already, the aggregator drops the copy as a duplicate), and is
marked failed in RQ's failed registry once it has none.

A job can also be lost before it starts: RQ's dequeue moves its id from the queue to the queue's
intermediate list, and only when the worker records the start does it leave that list for the
started registry. A worker killed (or cut off from Redis) in between leaves the job ``queued``
in no queue; RQ fails it after a maintenance pass and a minute. ``unpark`` puts it back at the
front of its queue instead: the worker that knows it held the job does so after an outage, and
the dispatcher for a job it sees parked across ``PARKED_AFTER`` seconds.
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

# a job parked in the intermediate list this long is lost: a live worker records its start
# within milliseconds of taking it (a second taker's run would only publish a duplicate)
PARKED_AFTER = 10.0
_UNPARK = """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 1 then
  redis.call('LPUSH', KEYS[2], ARGV[1])
  return 1
end
return 0
"""


def unpark(connection: redis.Redis, queue: Queue, job_id: str) -> bool:
    """Move ``job_id`` from ``queue``'s intermediate list back to the front of the queue, in one
    step (True if it was parked there)."""
    return bool(connection.eval(_UNPARK, 2, queue.intermediate_queue_key, queue.key, job_id))


def parked(connection: redis.Redis, queue: Queue) -> set[str]:
    """The ids in ``queue``'s intermediate list (taken by a worker, not yet started)."""
    return {i.decode() for i in connection.lrange(queue.intermediate_queue_key, 0, -1)}


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
