"""The dispatcher against a real Redis, without workers: what it queues and when it holds off."""

from __future__ import annotations

from coordinator import service
from coordinator.dispatcher import Dispatcher
from shared.keys import Keys
from shared.settings import FederationSettings

K = Keys("disp")


def _queued(r, fed) -> int:
    return sum(r.hlen(K.inflight(region)) for region in fed.regions)


def test_a_backlog_of_unsettled_updates_holds_new_jobs_until_the_aggregator_catches_up(
    r, small_data
):
    settings = FederationSettings(max_staleness=8, inflight_per_region=1, eval_every=0)
    fed = service.initialise(r, K, small_data, settings)
    for i in range(4):  # half of max_staleness waits in the stream
        r.xadd(K.updates, {"u": b"x", "id": f"u{i}"})
    dispatcher = Dispatcher(r, K, fed)
    dispatcher.tick()
    assert _queued(r, fed) == 0
    r.xtrim(K.updates, maxlen=3, approximate=False)  # the aggregator settled one
    dispatcher.tick()
    assert _queued(r, fed) == len(fed.regions)
