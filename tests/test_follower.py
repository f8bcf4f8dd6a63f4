"""The regional service's model follower against a real Redis and a real aggregator: it serves
the newest version, swaps only a model that passed, keeps serving through a bad blob and an
outage."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import redis

from coordinator import service
from coordinator.aggregator import Aggregator
from serving.follower import EvaluationGate, ModelFollower, SwapPolicy
from shared import streams
from shared.codec import Model, encode_model
from shared.evaluations import encode_result
from shared.keys import Keys
from shared.redis_server import RedisServer
from shared.settings import FederationSettings
from shared.store import ModelStore
from tests.fleet import wait_until
from tests.updates import publish

K = Keys("follow")


def _federation(r, toy_data) -> Aggregator:
    """A toy federation and its aggregator (version 0 in Redis)."""
    fed = service.initialise(r, K, toy_data, FederationSettings(task="toy", eval_every=0))
    return Aggregator(r, K, fed)


def _follower(r, aggregator, **kwargs) -> ModelFollower:
    """A follower whose "model" is a copy of the weights, checked against version 0's."""
    template = {k: np.array(v) for k, v in aggregator.weights.items()}
    return ModelFollower(r, K, template, lambda w: {k: np.array(v) for k, v in w.items()},
                         **kwargs)  # fmt: skip


def _commit(r, aggregator: Aggregator, step: float) -> int:
    delta = {k: np.full(v.shape, step, np.float32) for k, v in aggregator.weights.items()}
    publish(r, K, "cn", aggregator.version, delta)
    aggregator.step(block_ms=100)
    return aggregator.version


def test_it_serves_the_newest_version_and_the_weights_are_that_versions(r, toy_data):
    aggregator = _federation(r, toy_data)
    follower = _follower(r, aggregator)
    assert follower.check() and follower.served.version == 0
    assert not follower.check()  # nothing new
    for i in range(3):
        version = _commit(r, aggregator, 0.01 * (i + 1))
    assert follower.check() and follower.served.version == version == 3
    stored = ModelStore(r, K).read(3).weights
    for name, value in stored.items():
        np.testing.assert_array_equal(follower.served.model[name], value)
    assert follower.swaps == 2


@pytest.mark.parametrize("bad", ["shape", "nan", "garbage", "other version"])
def test_a_bad_blob_is_refused_and_the_old_model_keeps_serving(r, toy_data, bad):
    aggregator = _federation(r, toy_data)
    follower = _follower(r, aggregator)
    follower.check()
    before = follower.served
    name, value = next(iter(aggregator.weights.items()))
    weights = {k: np.array(v) for k, v in aggregator.weights.items()}
    if bad == "shape":
        weights[name] = np.zeros((*value.shape, 2), np.float32)
    elif bad == "nan":
        weights[name] = np.full(value.shape, np.nan, np.float32)
    blob = (b"\x93not a model" if bad == "garbage"
            else encode_model(Model(7 if bad == "other version" else 1, weights)))  # fmt: skip
    r.set(K.model(1), blob)  # what a compromised writer could leave behind
    r.set(K.version, 1)
    assert not follower.check()
    assert follower.served is before and 1 in follower.refused
    expected = {"shape": name, "nan": "non-finite", "garbage": "does not decode",
                "other version": "says version 7"}[bad]  # fmt: skip
    assert expected in follower.refused[1]
    assert not follower.check()  # refused once and for all: not read again
    # the next good version is served
    good = encode_model(Model(2, {k: np.array(v) + 1 for k, v in aggregator.weights.items()}))
    r.set(K.model(2), good)
    r.set(K.version, 2)
    assert follower.check() and follower.served.version == 2


def test_at_most_one_swap_per_interval_then_the_newest(r, toy_data):
    aggregator = _federation(r, toy_data)
    now = [100.0]
    follower = _follower(r, aggregator, policy=SwapPolicy(min_interval=10), clock=lambda: now[0])
    assert follower.check() and follower.served.version == 0
    _commit(r, aggregator, 0.01)
    now[0] += 5
    assert not follower.check() and follower.served.version == 0
    _commit(r, aggregator, 0.02)
    now[0] += 5
    assert follower.check() and follower.served.version == 2  # the newest, not the next


def test_running_it_follows_each_commit_and_rides_out_an_outage(toy_data, tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    stop = threading.Event()
    try:
        r = redis.Redis.from_url(server.url)
        aggregator = _federation(r, toy_data)
        follower = _follower(r, aggregator)
        thread = threading.Thread(target=follower.run, args=(stop, 30.0))  # the commits wake it
        thread.start()
        assert wait_until(lambda: follower.served is not None, 10)
        version = _commit(r, aggregator, 0.01)
        # woken by the commit: its own timer is 30 s
        assert wait_until(lambda: follower.served.version == version, 10)
        port = server.port
        server.stop()
        assert wait_until(lambda: not follower.redis_ok, 40)
        assert follower.served.version == version  # still serving the last model
        server = RedisServer(tmp_path / "redis", port=port).start()
        r = redis.Redis.from_url(server.url)
        assert wait_until(lambda: follower.redis_ok, 40)
        aggregator = Aggregator(r, K, aggregator.fed)
        newer = _commit(r, aggregator, 0.02)
        assert wait_until(lambda: follower.served.version == newer, 40)
    finally:
        stop.set()
        server.stop()
    thread.join(timeout=40)
    assert not thread.is_alive()


def _evaluated(r, fed, version: int, headline: float, regions=None) -> None:
    """Every region's accepted result for ``version`` (what the aggregator writes), each with
    the validation headline ``headline``."""
    schema = fed.metrics
    for region in regions or fed.regions:
        figures = {m.name: (100.0 if m.is_count else 0.5) for m in schema.metrics}
        figures[schema.headline] = headline
        record = {"version": version, "region": region, "job_id": f"{region}-e{version}-x",
                  "at": 1.0, "test": figures,
                  "validation": {n: figures[n] for n in schema.validation}}  # fmt: skip
        r.xadd(K.metrics, streams.accepted_entry(version, region, encode_result(record)))


def _gated(r, aggregator, grace: float = 60.0) -> ModelFollower:
    fed = aggregator.fed
    gate = EvaluationGate(r, K, fed.regions, fed.metrics, grace)
    return _follower(r, aggregator, policy=SwapPolicy(evaluated=True), gate=gate)


def test_one_lying_region_can_neither_hold_a_swap_back_nor_push_a_fallen_version(r, toy_data):
    """cn reports a fall each time the others rise, and a rise when they fall."""
    aggregator = _federation(r, toy_data)
    follower = _gated(r, aggregator)
    fed = aggregator.fed
    honest = fed.regions[1:]
    assert follower.check() and follower.served.version == 0
    for i, (headline, lie) in enumerate([(0.50, 0.9), (0.55, 0.01), (0.45, 1.0)], start=1):
        _commit(r, aggregator, 0.01)
        _evaluated(r, fed, i, headline, regions=honest)
        _evaluated(r, fed, i, lie, regions=fed.regions[:1])
        follower.check()
        if i < 3:  # every honest region rose: served despite cn's "fall"
            assert follower.served.version == i
    assert follower.served.version == 2  # the honest regions fell: cn's "rise" does not hide it
    assert "fell to" in follower.held_back[3] and "(in 5 of 6 regions)" in follower.held_back[3]


def test_a_silent_region_does_not_veto_a_swap_past_the_grace(r, toy_data):
    aggregator = _federation(r, toy_data)
    follower = _gated(r, aggregator, grace=0.0)
    fed = aggregator.fed
    assert follower.check() and follower.served.version == 0
    _commit(r, aggregator, 0.01)
    _evaluated(r, fed, 1, 0.5, regions=fed.regions[:3])  # 3 of 6: below the quorum of 4
    assert not follower.check()
    _evaluated(r, fed, 1, 0.5, regions=fed.regions[3:4])  # 4 of 6, the others silent
    assert follower.check() and follower.served.version == 1
    r.sadd(K.quarantined, *fed.regions[3:])  # quarantined regions' figures do not count
    _commit(r, aggregator, 0.01)
    _evaluated(r, fed, 2, 0.1, regions=fed.regions[3:])
    _evaluated(r, fed, 2, 0.6, regions=fed.regions[:3])
    assert follower.check() and follower.served.version == 2


def test_the_evaluated_policy_serves_only_versions_whose_evaluation_did_not_fall(r, toy_data):
    aggregator = _federation(r, toy_data)
    follower = _gated(r, aggregator)
    assert follower.check() and follower.served.version == 0  # ready before any evaluation
    fed = aggregator.fed
    _commit(r, aggregator, 0.01)
    r.hset(K.pinned, 1, "[]")  # the coordinator scheduled its evaluation
    assert not follower.check()  # not evaluated yet: version 1 is held, 0 serves
    _commit(r, aggregator, 0.02)
    r.delete(K.model(1))  # the blob left Redis before the last result: the held copy serves
    _evaluated(r, fed, 1, 0.60, regions=fed.regions[:-1])
    assert not follower.check()  # one region has not reported
    _evaluated(r, fed, 1, 0.60, regions=fed.regions[-1:])
    assert follower.check() and follower.served.version == 1
    expected = ModelStore(r, K).read(2).weights  # version 1's blob is gone: compare the shapes
    assert set(follower.served.model) == set(expected)
    for i, headline in [(3, 0.55), (4, 0.62)]:
        while aggregator.version < i:
            _commit(r, aggregator, 0.01)
        r.hset(K.pinned, i, "[]")
        follower.check()
        _evaluated(r, fed, i, headline)
        if i == 3:  # fell from 0.60: passed over, version 1 keeps serving
            assert not follower.check() and follower.served.version == 1
            assert (
                "fell to 0.5500 from 0.6000 (in 6 of 6 regions) at version 1"
                in (follower.held_back[3])
            )
    # 0.62 against 0.55 before it: did not fall
    assert follower.check() and follower.served.version == 4


def test_the_evaluated_policy_needs_the_evaluations(r, toy_data):
    aggregator = _federation(r, toy_data)
    with pytest.raises(ValueError, match="needs the federation's evaluations"):
        _follower(r, aggregator, policy=SwapPolicy(evaluated=True))


def test_a_fallen_newest_version_does_not_hide_an_older_good_one(r, toy_data):
    """Both evaluations end between two looks: the newest fell, the one before it did not."""
    aggregator = _federation(r, toy_data)
    follower = _gated(r, aggregator)
    assert follower.check() and follower.served.version == 0
    for i, headline in [(1, 0.60), (2, 0.50)]:
        _commit(r, aggregator, 0.01 * i)
        _evaluated(r, aggregator.fed, i, headline)
    assert follower.check() and follower.served.version == 1
    assert "fell to 0.5000 from 0.6000" in follower.held_back[2]
    assert not follower.check()  # nothing newer that did not fall


def test_garbage_in_the_version_counter_never_stops_the_follower(r, toy_data):
    """Whoever could write the counter (an admin's slip, a compromised coordinator) makes the
    follower say so and keep serving; once it is a number again, following goes on."""
    aggregator = _federation(r, toy_data)
    said: list[str] = []
    follower = _follower(r, aggregator, say=said.append)
    stop = threading.Event()
    thread = threading.Thread(target=follower.run, args=(stop, 0.1))
    thread.start()
    try:
        assert wait_until(lambda: follower.served is not None, 10)
        r.set(K.version, b"not-a-number")
        r.hset(K.pinned, b"garbage", b"[]")
        assert wait_until(lambda: follower.problem is not None, 10)
        assert thread.is_alive() and follower.served.version == 0
        assert sum("cannot follow the federation" in m for m in said) == 1  # said once
        r.set(K.version, 0)
        r.hdel(K.pinned, b"garbage")
        version = _commit(r, aggregator, 0.01)
        assert wait_until(lambda: follower.served.version == version, 10)
        assert follower.problem is None
    finally:
        stop.set()
        thread.join(10)
