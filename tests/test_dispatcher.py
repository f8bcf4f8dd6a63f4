"""The dispatcher against a real Redis, without workers: what it queues and when it holds off."""

from __future__ import annotations

import threading
import time

from coordinator import service
from coordinator.dispatcher import Dispatcher
from shared.keys import Keys
from shared.settings import FederationSettings

K = Keys("disp")


def _queued(r, fed) -> int:
    return sum(r.hlen(K.inflight(region)) for region in fed.regions)


def test_a_backlog_of_unsettled_updates_holds_new_jobs_until_the_aggregator_catches_up(r, toy_data):
    settings = FederationSettings(task="toy", max_staleness=8, inflight_per_region=1, eval_every=0)
    fed = service.initialise(r, K, toy_data, settings)
    for i in range(4):  # half of max_staleness waits in the stream
        r.xadd(K.update_stream(fed.regions[i % 2]), {"u": b"x", "id": f"u{i}"})
    dispatcher = Dispatcher(r, K, fed)
    dispatcher.tick()
    assert _queued(r, fed) == 0
    r.xdel(K.update_stream(fed.regions[0]), r.xrange(K.update_stream(fed.regions[0]))[0][0])
    dispatcher.tick()
    assert _queued(r, fed) == len(fed.regions)


def test_a_job_put_back_on_its_queue_waits_from_then_not_from_its_first_dispatch(r, toy_data):
    settings = FederationSettings(task="toy", inflight_per_region=1, eval_every=0, stall_after=10)
    fed = service.initialise(r, K, toy_data, settings)
    now = [1000.0]
    dispatcher = Dispatcher(r, K, fed, clock=lambda: now[0])
    dispatcher.tick()
    job_id = next(k.decode() for k in r.hkeys(K.inflight("cn")))
    r.hset(f"rq:job:{job_id}", "status", "started")  # a worker took it
    now[0] += 30
    assert dispatcher.reconcile("cn")[job_id] == (b"started", 1000.0)
    r.hset(f"rq:job:{job_id}", "status", "queued")  # stopped cold: RQ queued it again
    now[0] += 5
    assert dispatcher.reconcile("cn")[job_id] == (b"queued", 1035.0)
    assert float(r.hget(K.inflight("cn"), job_id)) == 1035.0
    now[0] += 5
    assert dispatcher.reconcile("cn")[job_id] == (b"queued", 1035.0)  # reset once, not again


def test_the_coordinator_ticks_on_a_commit_not_only_on_its_timer(r, toy_data):
    """With a 30 s timer, a slot freed by a job whose update was committed is filled at once."""
    settings = FederationSettings(task="toy", inflight_per_region=1, eval_every=0)
    keys = Keys("wake")
    fed = service.initialise(r, keys, toy_data, settings)
    stop = threading.Event()
    coordinator = threading.Thread(
        target=service.coordinate,
        args=(r, keys, fed, stop.is_set),
        kwargs={"interval": 30.0, "final_evaluation": False},
    )
    coordinator.start()
    try:
        first = _wait_for(lambda: r.hkeys(keys.inflight("cn")))
        r.hset(f"rq:job:{first[0].decode()}", "status", "finished")
        started = time.monotonic()
        r.xadd(keys.applies, {"version": 1, "at": time.time(), "updates": "[]"})
        second = _wait_for(lambda: [k for k in r.hkeys(keys.inflight("cn")) if k != first[0]])
        assert second and time.monotonic() - started < 10
    finally:
        stop.set()
        r.xadd(keys.applies, {"version": 2, "at": time.time(), "updates": "[]"})  # wakes it
        coordinator.join(timeout=60)
    assert not coordinator.is_alive()


def _wait_for(probe, seconds: float = 10.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(0.02)
    return probe()


def test_draining_cancels_queued_jobs_but_not_one_a_worker_has_just_taken(r, toy_data):
    """A worker moves a job off its queue before RQ marks it started: that job still runs, so
    the drain must wait for its update instead of deleting it (it would land after the final
    evaluation chose its version)."""
    settings = FederationSettings(task="toy", inflight_per_region=1, eval_every=0)
    keys = Keys("drain")
    fed = service.initialise(r, keys, toy_data, settings)
    dispatcher = Dispatcher(r, keys, fed)
    dispatcher.tick()
    taken, waiting = (r.hkeys(keys.inflight(region))[0].decode() for region in ("cn", "us"))
    queue = dispatcher.queues["cn"]
    r.lmove(queue.key, queue.intermediate_queue_key, "RIGHT", "LEFT")  # RQ's dequeue
    assert r.hget(f"rq:job:{taken}", "status") == b"queued"
    dispatcher.drain(should_stop=lambda: True)
    assert r.exists(f"rq:job:{taken}") and r.hexists(keys.inflight("cn"), taken)
    assert not r.exists(f"rq:job:{waiting}")
    assert waiting not in [i.decode() for i in r.lrange(dispatcher.queues["us"].key, 0, -1)]


def _one_job_for_cn(r, toy_data, now: list[float]):
    """A dispatcher on ``now``'s clock that has queued one job for cn: (it, cn's queue, the id)."""
    settings = FederationSettings(task="toy", inflight_per_region=1, eval_every=0)
    fed = service.initialise(r, K, toy_data, settings)
    dispatcher = Dispatcher(r, K, fed, clock=lambda: now[0])
    dispatcher.tick()
    job_id = next(k.decode() for k in r.hkeys(K.inflight("cn")))
    return dispatcher, dispatcher.queues["cn"], job_id


def test_a_job_taken_by_a_worker_that_died_before_starting_it_goes_back_on_its_queue(r, toy_data):
    """RQ's dequeue parks the id in the queue's intermediate list until the start is recorded:
    a worker killed in between leaves the job in no queue. Seen parked for PARKED_AFTER seconds
    (twice, that long apart) it is put back at the front, and waits from then."""
    from shared.abandoned import PARKED_AFTER

    now = [1000.0]
    dispatcher, queue, job_id = _one_job_for_cn(r, toy_data, now)
    assert r.lmove(queue.key, queue.intermediate_queue_key) == job_id.encode()  # RQ's dequeue
    now[0] += PARKED_AFTER / 2
    dispatcher.reconcile("cn")
    now[0] += PARKED_AFTER  # first looked for (queued this long): seen parked from now
    dispatcher.reconcile("cn")
    assert r.lrange(queue.intermediate_queue_key, 0, -1) == [job_id.encode()]
    now[0] += PARKED_AFTER / 2
    dispatcher.reconcile("cn")  # not parked long enough yet
    assert r.llen(queue.key) == 0
    now[0] += PARKED_AFTER / 2
    assert dispatcher.reconcile("cn")[job_id] == (b"queued", now[0])
    assert r.lrange(queue.key, 0, -1) == [job_id.encode()]
    assert r.llen(queue.intermediate_queue_key) == 0
    assert float(r.hget(K.inflight("cn"), job_id)) == now[0]
    dispatcher.tick()  # still the region's one job in flight: no second one
    assert r.hlen(K.inflight("cn")) == 1


def test_a_queued_job_a_live_worker_just_took_is_left_alone(r, toy_data):
    from shared.abandoned import PARKED_AFTER

    now = [1000.0]
    dispatcher, queue, job_id = _one_job_for_cn(r, toy_data, now)
    now[0] += 2 * PARKED_AFTER  # waited long for a worker, in its queue
    dispatcher.reconcile("cn")
    r.lmove(queue.key, queue.intermediate_queue_key)  # a worker takes it now
    now[0] += PARKED_AFTER / 2
    dispatcher.reconcile("cn")
    assert r.lrange(queue.intermediate_queue_key, 0, -1) == [job_id.encode()]
