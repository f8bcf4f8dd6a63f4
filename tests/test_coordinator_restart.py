"""kill -9 of the coordinator, again and again: no job beyond the in-flight bound, none twice."""

from __future__ import annotations

import random
import signal
import time

from coordinator import service
from harness.audit import audit
from shared.jobs import region_queue
from shared.keys import Keys
from shared.settings import FederationSettings
from tests.fleet import Fleet, wait_until

BOUND = 2  # inflight_per_region


def _in_flight(r, queues) -> dict[str, int]:
    """Queued plus started train jobs per region, read in one MULTI so no job counts twice."""
    with r.pipeline(transaction=True) as pipe:
        for q in queues.values():
            pipe.llen(q.key)
            pipe.zcard(q.started_job_registry.key)
        counts = pipe.execute()
    return {region: counts[2 * i] + counts[2 * i + 1] for i, region in enumerate(queues)}


def test_a_restarted_coordinator_never_dispatches_beyond_the_bound(toy_data, redis_server, r):
    keys = Keys("restart")
    settings = FederationSettings(
        task="toy",
        task_settings={"job_seconds": 0.3},
        eval_every=0,
        target_versions=0,
        time_budget=900,
        inflight_per_region=BOUND,
    )
    fed = service.initialise(r, keys, toy_data, settings)
    queues = {region: region_queue(r, keys, region) for region in fed.regions}
    rng = random.Random(11)
    peak = dict.fromkeys(fed.regions, 0)
    with Fleet(redis_server.url, "restart", toy_data) as fleet:
        fleet.aggregator()
        for region in ("cn", "cn", "us"):
            fleet.worker(region, "--slowdown", "3")
        coordinator = fleet.coordinator()
        for _kill in range(4):
            until = time.monotonic() + rng.uniform(1.0, 4.0)
            while time.monotonic() < until:
                for region, n in _in_flight(r, queues).items():
                    peak[region] = max(peak[region], n)
                time.sleep(0.01)
            coordinator.send_signal(signal.SIGKILL)
            coordinator.wait()
            coordinator = fleet.coordinator()
        versions_before = int(r.get(keys.version) or 0)
        assert wait_until(lambda: int(r.get(keys.version) or 0) >= versions_before + 5, 120)
        for region, n in _in_flight(r, queues).items():
            peak[region] = max(peak[region], n)
    assert max(peak.values()) <= BOUND, peak
    assert peak["cn"] == BOUND  # the sampling could see a full region
    dispatched = int(r.get(keys.dispatched))
    assert sum(int(v) for v in r.hgetall(keys.dispatched_by_region).values()) <= dispatched
    result = audit(r, keys)  # what a killed coordinator left in flight was settled once
    assert result.ok and result.applied > 0, result.problems
