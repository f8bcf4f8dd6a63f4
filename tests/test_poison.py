"""Poison entries: no stream entry can stop the aggregator, whatever happens while handling it.

An exception while handling an entry is a rejection (``malformed``, with the detail); an entry
that kills the aggregator process outright (here a crash point standing for a segfault or an
OOM kill) is rejected unread once the aggregator has died ``MAX_HANDLINGS`` times on it, so no
restart loop can exist.
"""

from __future__ import annotations

import numpy as np

from coordinator import service
from coordinator.aggregator import MAX_HANDLINGS
from shared.keys import Keys
from shared.settings import FederationSettings
from shared.store import ModelStore
from tests.fleet import Fleet, wait_until
from tests.updates import publish

K = Keys("poison")


def _entry(r) -> str:
    weights = ModelStore(r, K).read_current().weights
    delta = {k: np.full(v.shape, 1e-4, np.float32) for k, v in weights.items()}
    return publish(r, K, "cn", 0, delta)


def _rejection(r, update_id: str) -> dict[bytes, bytes] | None:
    return next((f for _, f in r.xrange(K.rejections) if f.get(b"claimed") == update_id.encode()),
                None)  # fmt: skip


def _federation(r, toy_data):
    settings = FederationSettings(task="toy", eval_every=0, target_versions=0)
    return service.initialise(r, K, toy_data, settings)


def test_an_exception_while_handling_an_entry_is_a_rejection(toy_data, redis_server, r):
    _federation(r, toy_data)
    boom = _entry(r)
    with Fleet(redis_server.url, K.namespace, toy_data) as fleet:
        agg = fleet.aggregator(crash_at="aggregator.handle:1:raise")
        assert wait_until(lambda: _rejection(r, boom), 60), fleet.log(agg)
        fine = _entry(r)  # the same process goes on: the next entry is applied
        assert wait_until(lambda: r.sismember(K.applied, fine), 60), fleet.log(agg)
        assert agg.poll() is None
    rejection = _rejection(r, boom)
    assert rejection[b"reason"] == b"malformed"
    assert b"handling failed: InjectedFault" in rejection[b"detail"]


def test_an_entry_that_kills_the_aggregator_is_rejected_after_a_few_deaths(
    toy_data, redis_server, r
):
    _federation(r, toy_data)
    killer = _entry(r)
    deaths = 0
    with Fleet(redis_server.url, K.namespace, toy_data) as fleet:
        for _ in range(MAX_HANDLINGS + 3):
            agg = fleet.aggregator(crash_at="aggregator.handle:1")
            wait_until(lambda a=agg: a.poll() is not None or _rejection(r, killer), 60)
            if agg.poll() is None:
                break  # it survived: the entry was rejected unread
            assert agg.returncode == -9, fleet.log(agg)
            deaths += 1
        assert agg.poll() is None, "the aggregator never got past the entry"
    # the first death is on first delivery; then MAX_HANDLINGS counted handlings on restarts
    assert deaths == MAX_HANDLINGS + 1
    rejection = _rejection(r, killer)
    assert rejection[b"reason"] == b"malformed"
    assert f"died {MAX_HANDLINGS} times".encode() in rejection[b"detail"]
    assert r.hlen(K.handling) == 0 and r.xlen(K.update_stream("cn")) == 0
