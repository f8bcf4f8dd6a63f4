"""Workers join and leave at any time: a region without workers holds no pile of jobs and
picks up again when a worker comes back."""

from __future__ import annotations

import signal
import socket

from rq.worker import Worker

from coordinator import service
from shared.jobs import SERIALIZER, region_queue
from shared.keys import Keys
from shared.settings import FederationSettings
from tests.fleet import Fleet, wait_until


def _jp_updates(r, keys: Keys) -> int:
    return sum(1 for i in r.smembers(keys.applied) if i.startswith(b"jp-"))


def test_a_region_without_workers_expires_its_jobs_and_resumes_when_one_joins(
    toy_data, redis_server, r
):
    keys = Keys("members")
    settings = FederationSettings(
        task="toy",
        task_settings={"job_seconds": 0.3},
        eval_every=0,
        target_versions=0,
        time_budget=900,
        inflight_per_region=2,
        queue_ttl=3,
    )
    service.initialise(r, keys, toy_data, settings)
    jp = region_queue(r, keys, "jp")
    with Fleet(redis_server.url, "members", toy_data) as fleet:
        fleet.aggregator()
        fleet.coordinator()
        fleet.worker("cn")
        # jp has no worker: its first jobs expire unstarted and are replaced, the queue stays short
        assert wait_until(lambda: r.hlen(keys.inflight("jp")) == 2, 30)
        first = {i.decode() for i in r.hkeys(keys.inflight("jp"))}
        assert wait_until(lambda: not first & {i.decode() for i in r.hkeys(keys.inflight("jp"))},
                          30)  # fmt: skip
        for _ in range(3):
            assert jp.count <= settings.inflight_per_region
            assert r.llen(jp.key) <= settings.inflight_per_region  # no expired ids piling up
            wait_until(lambda: False, 1.5)
        assert _jp_updates(r, keys) == 0
        # a jp worker joins: the region's updates flow
        joined = fleet.worker("jp")
        assert wait_until(lambda: _jp_updates(r, keys) >= 2, 120)
        # a second cn worker joins mid-run and takes jobs too
        late = fleet.worker("cn")
        cn = region_queue(r, keys, "cn")

        def late_worked() -> bool:
            w = next((w for w in Worker.all(queue=cn, serializer=SERIALIZER)
                      if w.name.startswith(f"cn.{socket.gethostname()}-")
                      and w.name.endswith(f".{late.pid}")), None)  # fmt: skip
            return w is not None and w.successful_job_count > 0

        assert wait_until(late_worked, 120)
        # the jp worker leaves (SIGTERM: finishes its job): jp stalls again without piling up
        joined.send_signal(signal.SIGTERM)
        assert joined.wait(timeout=120) == 0, fleet.log(joined)
        assert wait_until(lambda: r.llen(jp.key) == settings.inflight_per_region, 30)
        wait_until(lambda: False, 7)  # two more queue_ttl periods
        assert r.llen(jp.key) <= settings.inflight_per_region
        assert cn.count <= settings.inflight_per_region


def test_an_idle_worker_waits_for_jobs_without_socket_timeouts(toy_data, redis_server, r):
    """redis-py 8 gives connections a 5 s socket timeout; RQ blocks up to 405 s on its queue and
    raises the timeout only for connections made after it starts, so a connection made before
    (the worker's first commands) used to time out in an idle wait and log RQ's error."""
    keys = Keys("idle")
    service.initialise(
        r,
        keys,
        toy_data,
        FederationSettings(
            task="toy", task_settings={"job_seconds": 0.3}, eval_every=0, target_versions=0
        ),
    )
    with Fleet(redis_server.url, "idle", toy_data) as fleet:
        worker = fleet.worker("me")  # no coordinator: no job will come
        assert wait_until(lambda: Worker.all(queue=region_queue(r, keys, "me"),
                                             serializer=SERIALIZER), 60)  # fmt: skip
        assert not wait_until(lambda: "Timeout" in fleet.log(worker), 15)
        assert worker.poll() is None
