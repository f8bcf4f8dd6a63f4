"""SIGTERM: a worker finishes its job and exits; a second SIGTERM stops it at once."""

from __future__ import annotations

import signal
import time

from rq.job import Job

from coordinator import service
from shared.keys import Keys
from shared.settings import FederationSettings
from tests.fleet import Fleet, wait_until


def _start(r, keys: Keys, toy_data, fleet: Fleet, slowdown: str):
    settings = FederationSettings(
        task="toy",
        task_settings={"job_seconds": 0.3},
        eval_every=0,
        target_versions=100,
        inflight_per_region=1,
        max_retries=1,
    )
    service.initialise(r, keys, toy_data, settings)
    fleet.coordinator()
    worker = fleet.worker("cn", "--slowdown", slowdown)

    def started() -> str | None:
        for job_id in r.hkeys(keys.inflight("cn")):
            if r.hget(Job.key_for(job_id.decode()), "status") == b"started":
                return job_id.decode()
        return None

    assert wait_until(started, 90), "the worker never started a job"
    return worker, started()


def _published(r, keys: Keys, job_id: str) -> int:
    stream = keys.update_stream(job_id.split("-")[0])  # job ids begin with their region
    return sum(1 for _, f in r.xrange(stream) if f[b"id"].decode().startswith(job_id + "."))


def test_first_sigterm_finishes_the_current_job_then_exits(toy_data, redis_server, r):
    keys = Keys("warm")
    with Fleet(redis_server.url, "warm", toy_data) as fleet:
        worker, job_id = _start(r, keys, toy_data, fleet, slowdown="15")
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=120) == 0
        assert r.hget(Job.key_for(job_id), "status") == b"finished"
        assert _published(r, keys, job_id) == 1  # no aggregator here: the update waits
        assert int(r.get(keys.retried) or 0) == 0


def test_second_sigterm_stops_at_once_and_the_job_goes_back_on_its_queue(toy_data, redis_server, r):
    keys = Keys("cold")
    with Fleet(redis_server.url, "cold", toy_data) as fleet:
        worker, job_id = _start(r, keys, toy_data, fleet, slowdown="400")
        worker.send_signal(signal.SIGTERM)
        time.sleep(1.5)  # RQ ignores a second signal within a second (duplicate delivery)
        sent = time.monotonic()
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)
        assert time.monotonic() - sent < 10, "the second SIGTERM did not stop the worker"
        assert _published(r, keys, job_id) == 0
        # the job failed with a retry left: RQ put it back, fedq counted it, the slot holds it
        assert r.hget(Job.key_for(job_id), "status") == b"queued"
        assert int(r.get(keys.retried)) == 1
        assert r.hexists(keys.inflight("cn"), job_id)
        # and a worker that comes back runs it
        fleet.worker("cn")
        assert wait_until(lambda: _published(r, keys, job_id) == 1, 90)
