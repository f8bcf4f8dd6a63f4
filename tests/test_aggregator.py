"""The aggregator against a real Redis: staleness weights, rejections, duplicates, atomicity."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from coordinator import service
from coordinator.aggregator import Aggregator
from shared.keys import Keys
from shared.settings import FederationSettings
from shared.store import ModelStore
from tests.updates import publish

KEYS = Keys("t")


def _fed(r, toy_data, **overrides):
    overrides.setdefault("target_versions", 0)  # no target: alpha does not decay
    overrides.setdefault("max_update_norm", 0.0)  # the weighting tests use large deltas
    overrides.setdefault("robust", False)  # the exact math of each mode (the guard: test_guard.py)
    settings = FederationSettings(task="toy", **overrides)
    return service.initialise(r, KEYS, toy_data, settings)


def _publish(r, region, base, delta, n=100, data_size=0, round_=None, stream=None):
    """One attempt of a newly issued job; returns its update id."""
    return publish(r, KEYS, region, base, delta, n=n, data_size=data_size, round_=round_,
                   stream=stream)  # fmt: skip


def _reasons(r) -> dict[str, str]:
    """claimed or update id -> reason, from the rejections stream."""
    return {(f.get(b"claimed") or f[b"id"]).decode(): f[b"reason"].decode()
            for _, f in r.xrange(KEYS.rejections)}  # fmt: skip


def _waiting(r) -> int:
    return sum(r.xlen(k) for k in r.keys(f"{KEYS.namespace}:updates:*"))


def _delta(agg: Aggregator, value: float) -> dict[str, np.ndarray]:
    return {k: np.full(v.shape, value, dtype=np.float32) for k, v in agg.weights.items()}


def _drain(agg: Aggregator) -> None:
    while agg.step(block_ms=50):
        pass


def test_stale_update_gets_exactly_the_documented_weight(r, toy_data):
    fed = _fed(r, toy_data, alpha=0.6, staleness="polynomial", staleness_a=0.5,
               sample_weighting=False)  # fmt: skip
    agg = Aggregator(r, KEYS, fed)
    w0 = {k: v.copy() for k, v in agg.weights.items()}
    _publish(r, "cn", 0, _delta(agg, 0.5))
    _drain(agg)
    assert agg.version == 1
    w1 = {k: v.copy() for k, v in agg.weights.items()}
    # staleness 0: a = 0.6 -> w1 = 0.4 w0 + 0.6 (w0 + 0.5) = w0 + 0.3
    for k in w0:
        np.testing.assert_allclose(w1[k], w0[k] + 0.3, atol=1e-6)
    # an update on base 0 arriving at version 1: staleness 1, a = 0.6 * 2 ** -0.5
    _publish(r, "us", 0, _delta(agg, -1.0))
    _drain(agg)
    a = 0.6 * 2**-0.5
    for k in w0:
        np.testing.assert_allclose(agg.weights[k], (1 - a) * w1[k] + a * (w0[k] - 1.0), atol=1e-5)
    stored = ModelStore(r, KEYS).read(2)
    np.testing.assert_array_equal(stored.weights["w"], agg.weights["w"])
    last = r.xrevrange(KEYS.applies, count=1)[0][1]
    assert int(last[b"version"]) == 2
    assert float(last[b"weight"]) == pytest.approx(a, rel=1e-5)
    assert int(last[b"staleness"]) == 1


def test_sample_weighting_scales_by_region_data_size(r, toy_data):
    fed = _fed(r, toy_data, alpha=0.5, staleness="constant", sample_weighting=True)
    agg = Aggregator(r, KEYS, fed)
    _publish(r, "cn", 0, _delta(agg, 0.0), data_size=1000)  # sets the reference
    _publish(r, "me", 1, _delta(agg, 0.0), data_size=100)
    _drain(agg)
    weights = [float(e[1][b"weight"]) for e in r.xrange(KEYS.applies)]
    reference = 0.95 * 1000 + 0.05 * 100
    assert weights == pytest.approx([0.5, 0.5 * 100 / reference], rel=1e-5)


def test_updates_beyond_max_staleness_are_rejected_with_a_reason(r, toy_data):
    fed = _fed(r, toy_data, max_staleness=2, sample_weighting=False)
    agg = Aggregator(r, KEYS, fed)
    for i in range(3):
        _publish(r, "cn", i, _delta(agg, 0.01))
    _drain(agg)
    assert agg.version == 3
    old = _publish(r, "eu", 0, _delta(agg, 0.01))  # staleness 3 > 2
    ok = _publish(r, "eu", 1, _delta(agg, 0.01))  # staleness 2
    _drain(agg)
    assert agg.version == 4
    assert r.hget(KEYS.rejected, old) == b"stale"
    entry = r.xrange(KEYS.rejections)[-1][1]
    assert entry[b"id"] == old.encode() and entry[b"reason"] == b"stale"
    assert b"staleness 3 > max 2" in entry[b"detail"]
    assert r.sismember(KEYS.applied, ok) and not r.sismember(KEYS.applied, old)
    assert _waiting(r) == 0  # every entry settled: acknowledged and removed


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"u": b"\x00garbage", "id": "g1"}, "malformed"),
        ({"id": "g2"}, "malformed"),
    ],
)
def test_garbage_entries_are_rejected_not_fatal(r, toy_data, fields, reason):
    fed = _fed(r, toy_data)
    agg = Aggregator(r, KEYS, fed)
    r.xadd(KEYS.update_stream("cn"), fields)
    _drain(agg)
    assert _reasons(r) == {fields["id"]: reason}
    assert not r.hexists(KEYS.rejected, fields["id"])  # an entry not tied to a job: by entry
    assert agg.version == 0


def test_bad_region_shape_and_nan_are_rejected(r, toy_data):
    fed = _fed(r, toy_data)
    agg = Aggregator(r, KEYS, fed)
    mars = _publish(r, "mars", 0, _delta(agg, 0.0), stream="cn")
    posing = _publish(r, "us", 0, _delta(agg, 0.0), stream="cn")  # a cn worker posing as us
    bad_shape = _delta(agg, 0.0)
    bad_shape["w"] = np.zeros(3, dtype=np.float32)
    shape = _publish(r, "cn", 0, bad_shape)
    with_nan = _delta(agg, 0.0)
    with_nan["w"][0] = math.nan
    nan = _publish(r, "cn", 0, with_nan)
    _drain(agg)
    assert _reasons(r) == {mars: "unknown_region", posing: "wrong_region", shape: "shape",
                           nan: "non_finite"}  # fmt: skip
    # only the cn updates were authentic updates of cn jobs: recorded under their ids
    reasons = {k.decode(): v.decode() for k, v in r.hgetall(KEYS.rejected).items()}
    assert {i: reasons[i] for i in (shape, nan)} == {shape: "shape", nan: "non_finite"}
    assert mars not in reasons and posing not in reasons
    assert agg.version == 0


def test_an_update_above_the_norm_bound_is_rejected_or_clipped(r, toy_data):
    fed = _fed(r, toy_data, max_update_norm=5.0, alpha=0.5, staleness="constant")
    agg = Aggregator(r, KEYS, fed)
    n = sum(v.size for v in agg.weights.values())
    small = 4.0 / math.sqrt(n)  # L2 norm 4: within the bound
    ok = _publish(r, "cn", 0, _delta(agg, small))
    huge = _publish(r, "cn", 1, _delta(agg, 1e3))
    _drain(agg)
    assert r.hget(KEYS.rejected, huge) == b"norm" and r.sismember(KEYS.applied, ok)
    detail = r.xrevrange(KEYS.rejections, count=1)[0][1][b"detail"].decode()
    assert detail.startswith("L2 norm ") and "> bound 5" in detail
    # clip: the same update goes in scaled to the bound's length
    r.flushall()
    fed = _fed(r, toy_data, max_update_norm=5.0, norm_action="clip", alpha=0.5,
               staleness="constant")  # fmt: skip
    agg = Aggregator(r, KEYS, fed)
    w0 = {k: v.copy() for k, v in agg.weights.items()}
    huge = _publish(r, "cn", 0, _delta(agg, 1e3))
    _drain(agg)
    assert r.sismember(KEYS.applied, huge)
    assert float(r.hget(KEYS.clipped, huge)) == pytest.approx(1e3 * math.sqrt(n), rel=1e-4)
    moved = math.sqrt(sum(float(np.sum((agg.weights[k] - w0[k]) ** 2)) for k in w0))
    assert moved == pytest.approx(0.5 * 5.0, rel=1e-4)  # alpha x the clipped delta


def test_an_oversized_update_is_rejected_before_decoding(r, toy_data):
    from coordinator import aggregator as aggregator_module

    fed = _fed(r, toy_data)
    agg = Aggregator(r, KEYS, fed)
    r.xadd(KEYS.update_stream("cn"), {"u": b"x" * (aggregator_module.MAX_UPDATE_BYTES + 1),
                                       "id": "big"})  # fmt: skip
    _drain(agg)
    assert _reasons(r) == {"big": "too_large"} and agg.version == 0


def test_an_update_published_twice_is_applied_once(r, toy_data):
    fed = _fed(r, toy_data)
    agg = Aggregator(r, KEYS, fed)
    same = _publish(r, "cn", 0, _delta(agg, 0.1))
    r.xadd(KEYS.update_stream("cn"), r.xrange(KEYS.update_stream("cn"))[0][1])  # a second copy
    _drain(agg)
    assert agg.version == 1
    assert int(r.hget(KEYS.duplicates, same)) == 1
    assert r.xlen(KEYS.update_stream("cn")) == 0


def test_a_commit_after_redis_lost_its_scripts_loads_the_script_and_commits_once(r, toy_data):
    fed = _fed(r, toy_data)
    agg = Aggregator(r, KEYS, fed)
    _publish(r, "cn", 0, _delta(agg, 0.1))
    _drain(agg)
    r.script_flush()  # what a restarted Redis without the script cache looks like to the commit
    second = _publish(r, "cn", 1, _delta(agg, 0.1))
    _drain(agg)
    assert agg.version == 2 and int(r.get(KEYS.version)) == 2
    assert r.sismember(KEYS.applied, second)
    assert r.xlen(KEYS.update_stream("cn")) == 0 and not r.keys(f"{KEYS.namespace}:staged:*")


def test_buffered_mode_flushes_every_k_and_scales_by_staleness(r, toy_data):
    fed = _fed(r, toy_data, mode="buffered", buffer_size=2, server_lr=1.0,
               sample_weighting=False)  # fmt: skip
    agg = Aggregator(r, KEYS, fed)
    w0 = {k: v.copy() for k, v in agg.weights.items()}
    a = _publish(r, "cn", 0, _delta(agg, 1.0))
    _drain(agg)
    assert agg.version == 0 and r.xlen(KEYS.update_stream("cn")) == 1  # held, unacknowledged
    b = _publish(r, "us", 0, _delta(agg, 3.0))
    _drain(agg)
    assert agg.version == 1
    for k in w0:
        np.testing.assert_allclose(agg.weights[k], w0[k] + 2.0, atol=1e-6)
    info = json.loads(r.xrange(KEYS.applies)[-1][1][b"updates"])
    assert sorted(u["id"] for u in info) == sorted([a, b])


def test_alpha_decays_towards_the_target(r, toy_data):
    fed = _fed(r, toy_data, alpha=0.6, staleness="constant", sample_weighting=False,
               target_versions=10, decay_floor=0.1)  # fmt: skip
    agg = Aggregator(r, KEYS, fed)
    for i in range(6):
        _publish(r, "cn", i, _delta(agg, 0.0))
    _drain(agg)
    weights = [float(e[1][b"weight"]) for e in r.xrange(KEYS.applies)]
    assert weights == pytest.approx([0.6 * (1 - 0.9 * v / 10) for v in range(6)], rel=1e-5)


def test_sync_round_closes_when_every_region_reported(r, toy_data):
    import time as clock

    fed = _fed(r, toy_data, mode="sync", round_deadline=60.0)
    agg = Aggregator(r, KEYS, fed)
    w0 = {k: v.copy() for k, v in agg.weights.items()}
    regions = list(fed.regions)
    # the round opens after the aggregator last looked: updates for it must still count
    r.hset(KEYS.round, mapping={"number": 1, "base_version": 0, "deadline": clock.time() + 60,
                                "regions": json.dumps(regions)})  # fmt: skip
    sizes = {region: 100 * (i + 1) for i, region in enumerate(regions)}
    for i, region in enumerate(regions):
        _publish(r, region, 0, _delta(agg, float(i)), data_size=sizes[region], round_=1)
    straggler = _publish(r, "cn", 0, _delta(agg, 9.0), round_=0)  # a closed round's
    _drain(agg)
    assert agg.version == 1
    expected = sum(i * sizes[reg] for i, reg in enumerate(regions)) / sum(sizes.values())
    for k in w0:
        np.testing.assert_allclose(agg.weights[k], w0[k] + expected, atol=1e-5)
    assert r.hget(KEYS.rejected, straggler) == b"late"
