"""A worker killed mid-job: its job goes back on its queue within seconds and is redone."""

from __future__ import annotations

import signal

from rq.job import Job
from rq.worker import Worker

from coordinator import service
from shared.jobs import SERIALIZER, region_queue
from shared.keys import Keys
from shared.settings import FederationSettings
from tests.fleet import Fleet, wait_until


def _started(r, keys: Keys, region: str) -> str | None:
    for job_id in r.hkeys(keys.inflight(region)):
        if r.hget(Job.key_for(job_id.decode()), "status") == b"started":
            return job_id.decode()
    return None


def test_kill_9_of_a_worker_mid_job_requeues_its_job_and_a_returning_worker_redoes_it(
    toy_data, redis_server, r
):
    keys = Keys("abandon")
    settings = FederationSettings(
        task="toy",
        task_settings={"job_seconds": 0.3},
        eval_every=0,
        target_versions=3,
        inflight_per_region=1,
        worker_ttl=3,
        max_retries=2,
    )
    service.initialise(r, keys, toy_data, settings)
    with Fleet(redis_server.url, "abandon", toy_data) as fleet:
        fleet.aggregator()
        fleet.coordinator()
        # a very slow cn worker: its first job is still running when it is killed
        slow = fleet.worker("cn", "--slowdown", "200")
        assert wait_until(lambda: _started(r, keys, "cn"), 90), "the slow worker never started"
        victim = _started(r, keys, "cn")
        name = r.hget(Job.key_for(victim), "worker_name").decode()
        slow.send_signal(signal.SIGKILL)
        slow.wait()
        # within worker_ttl plus a tick: the same job id is queued again, still in flight,
        # out of RQ's started registry, and the dead worker is out of RQ's worker registry
        queue = region_queue(r, keys, "cn")
        assert wait_until(lambda: r.hget(Job.key_for(victim), "status") == b"queued", 15)
        assert r.hexists(keys.inflight("cn"), victim)
        assert victim in queue.job_ids
        assert victim not in queue.started_job_registry.get_job_ids()
        assert int(r.get(keys.abandoned)) == 1 and int(r.get(keys.retried)) == 1
        assert name not in {w.name for w in Worker.all(queue=queue, serializer=SERIALIZER)}
        assert r.hlen(keys.inflight("cn")) == 1  # the bound holds: no second job for the slot
        # a worker that comes back redoes that very job; its update is applied once
        fleet.worker("cn")
        assert wait_until(lambda: r.hexists(keys.applied_jobs, victim), 120)
        assert wait_until(lambda: int(r.get(keys.version) or 0) >= 3, 120)
        assert not any(k.startswith(victim.encode()) for k in r.hkeys(keys.duplicates))
        assert not any(k.startswith(victim.encode()) for k in r.hkeys(keys.rejected))


def test_a_job_abandoned_more_often_than_max_retries_ends_failed(toy_data, redis_server, r):
    keys = Keys("giveup")
    settings = FederationSettings(
        task="toy",
        task_settings={"job_seconds": 0.3},
        eval_every=0,
        target_versions=50,
        inflight_per_region=1,
        worker_ttl=2,
        max_retries=0,
    )
    service.initialise(r, keys, toy_data, settings)
    with Fleet(redis_server.url, "giveup", toy_data) as fleet:
        fleet.coordinator()
        slow = fleet.worker("cn", "--slowdown", "200")
        assert wait_until(lambda: _started(r, keys, "cn"), 90), "the slow worker never started"
        victim = _started(r, keys, "cn")
        slow.send_signal(signal.SIGKILL)
        slow.wait()
        queue = region_queue(r, keys, "cn")
        assert wait_until(lambda: victim in queue.failed_job_registry.get_job_ids(), 15)
        assert r.hget(Job.key_for(victim), "status") == b"failed"
        assert int(r.get(keys.retried) or 0) == 0
        # its slot went to a new job
        assert wait_until(lambda: r.hlen(keys.inflight("cn")) == 1
                          and not r.hexists(keys.inflight("cn"), victim), 10)  # fmt: skip


def test_a_worker_that_lost_redis_before_starting_its_job_puts_it_back(toy_data, r):
    """Redis went away between RQ's dequeue and the start's record: after the outage the worker
    finds the job it held parked in the intermediate list, and puts it back on its queue."""
    from coordinator.dispatcher import Dispatcher
    from worker.process import FedqWorker, _settle

    keys = Keys("parked")
    fed = service.initialise(r, keys, toy_data, FederationSettings(task="toy", eval_every=0))
    Dispatcher(r, keys, fed).tick()
    queue = region_queue(r, keys, "cn")
    job_id = queue.job_ids[0]
    assert r.lmove(queue.key, queue.intermediate_queue_key) == job_id.encode()  # RQ's dequeue
    worker = FedqWorker([queue], connection=r, serializer=SERIALIZER, name="cn.parked-test")
    worker.fedq_job_id = job_id  # what execute_job holds until RQ recorded the job's end
    _settle(r, keys, queue, worker)
    assert queue.job_ids[0] == job_id and r.llen(queue.intermediate_queue_key) == 0
    assert r.hget(Job.key_for(job_id), "status") == b"queued"
