"""One active coordinator and aggregator per namespace; the others are hot standbys.

The active instance holds its role's lease (a fencing token and a TTL); a second instance,
started by mistake or on purpose, stands by, never dispatches beyond the bound and never
writes; it takes over within ``lease TTL + poll`` (well within 10 s) of the active one's kill
-9, claiming what that one had read. A paused ex-active whose lease was taken writes nothing:
its commit, rejections and job bookkeeping are refused by the fence.
"""

from __future__ import annotations

import signal
import time

import numpy as np
import pytest

from coordinator import service
from coordinator.aggregator import Aggregator
from coordinator.commit import StaleWriter
from coordinator.dispatcher import Dispatcher
from harness.audit import audit
from shared.jobs import region_queue
from shared.keys import Keys
from shared.lease import Lease, LostLease
from shared.settings import FederationSettings
from tests.fleet import Fleet, wait_until
from tests.test_coordinator_restart import _in_flight
from tests.updates import publish

TAKEOVER_LIMIT = 10.0  # seconds: the bound


def _delta(agg: Aggregator, value: float = 1e-4) -> dict[str, np.ndarray]:
    return {k: np.full(v.shape, value, np.float32) for k, v in agg.weights.items()}


def test_a_paused_ex_active_writes_nothing_once_its_lease_is_taken(r, toy_data):
    keys = Keys("fence")
    fed = service.initialise(
        r,
        keys,
        toy_data,
        FederationSettings(task="toy", eval_every=0, target_versions=0, max_staleness=0),
    )
    first = Lease(r, keys, "aggregator", ttl=30)
    assert first.acquire()
    old = Aggregator(r, keys, fed, "old", lease=first)
    publish(r, keys, "cn", 0, _delta(old))
    old.step(block_ms=50)
    assert old.version == 1
    r.delete(keys.lease("aggregator"))  # its lease expired while it was paused
    second = Lease(r, keys, "aggregator", ttl=30)
    assert second.acquire() and second.token == first.token + 1
    applied = publish(r, keys, "cn", 1, _delta(old))
    stale = publish(r, keys, "cn", 0, _delta(old))  # would be rejected: stale
    with pytest.raises(StaleWriter):
        old.step(block_ms=50)  # the commit is refused by the fence
    with pytest.raises(StaleWriter):
        old.handle(*next((f"{keys.update_stream('cn')} {e.decode()}", f)
                         for e, f in r.xrange(keys.update_stream("cn"))
                         if f[b"id"] == stale.encode()))  # fmt: skip
    assert int(r.get(keys.version)) == 1 and r.hlen(keys.rejected) == 0
    new = Aggregator(r, keys, fed, "new", lease=second)
    new.recover()  # claims what the old one had read
    while new.step(block_ms=50):
        pass
    assert r.sismember(keys.applied, applied) and r.hget(keys.rejected, stale) == b"stale"
    dispatcher = Dispatcher(r, keys, fed, lease=first)
    with pytest.raises(LostLease):
        dispatcher._enqueue_train("cn", None)
    assert region_queue(r, keys, "cn").count == 0 and r.hlen(keys.inflight("cn")) == 0


def _holder_pid(r, keys: Keys, role: str) -> int | None:
    raw = r.get(keys.lease(role))
    return int(raw.decode().split(":")[1]) if raw else None


def _takeover(r, keys, role: str, victim, fleet) -> float:
    before = _holder_pid(r, keys, role)
    assert before == victim.pid, fleet.log(victim)
    started = time.monotonic()
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert wait_until(lambda: _holder_pid(r, keys, role) not in (None, before), 30)
    return time.monotonic() - started


def test_kill_9_of_the_active_roles_under_load_hands_over_to_the_standbys(
    toy_data, redis_server, r
):
    keys = Keys("standby")
    settings = FederationSettings(task="toy", eval_every=0, target_versions=150,
                                  inflight_per_region=2, max_inflight=3,
                                  task_settings={"job_seconds": 0.15})  # fmt: skip
    fed = service.initialise(r, keys, toy_data, settings)
    queues = {region: region_queue(r, keys, region) for region in fed.regions}
    peak = dict.fromkeys(fed.regions, 0)

    def sample(seconds: float) -> None:
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            for region, n in _in_flight(r, queues).items():
                peak[region] = max(peak[region], n)
            time.sleep(0.01)

    with Fleet(redis_server.url, keys.namespace, toy_data) as fleet:
        aggregators = [fleet.aggregator()]
        assert wait_until(lambda: _holder_pid(r, keys, "aggregator"), 30)
        aggregators.append(fleet.aggregator())
        coordinators = [fleet.coordinator("--max-inflight", "3")]
        assert wait_until(lambda: _holder_pid(r, keys, "coordinator"), 30)
        coordinators.append(fleet.coordinator("--max-inflight", "3"))
        for region in ("cn", "cn", "us", "eu"):
            fleet.worker(region, "--slowdown", "2")
        assert wait_until(lambda: int(r.get(keys.version) or 0) >= 10, 180)
        sample(2.0)
        agg_takeover = _takeover(r, keys, "aggregator", aggregators[0], fleet)
        sample(2.0)
        assert wait_until(lambda: int(r.get(keys.version) or 0) >= 25, 180)
        coord_takeover = _takeover(r, keys, "coordinator", coordinators[0], fleet)
        sample(3.0)
        assert wait_until(lambda: r.get(keys.done) is not None, 300)
        assert wait_until(lambda: coordinators[1].poll() == 0, 120), fleet.log(coordinators[1])
        assert "standby" in fleet.log(aggregators[1]) and "took over" in fleet.log(aggregators[1])
        assert "standby" in fleet.log(coordinators[1])
    assert agg_takeover < TAKEOVER_LIMIT and coord_takeover < TAKEOVER_LIMIT
    assert max(peak.values()) <= settings.inflight_per_region, peak
    result = audit(r, keys)
    assert result.ok and result.applied >= 150, result.problems
