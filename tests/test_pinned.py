"""A version with evaluations scheduled stays stored until they are done, past the window.

The model store keeps the last ``max_staleness + 1`` versions; an evaluation job for a version
that left the window before a worker took it used to fail and leave its curve point empty.
Now the coordinator pins the version when it schedules the evaluation, the commit script keeps
a pinned blob, and the coordinator drops pin and blob once the evaluation jobs have ended.
"""

from __future__ import annotations

import numpy as np

from coordinator import service
from coordinator.aggregator import Aggregator
from coordinator.dispatcher import Dispatcher
from shared.evaluations import accepted_results
from shared.keys import Keys
from shared.settings import FederationSettings
from tests.fleet import Fleet
from tests.updates import publish

K = Keys("pinned")


def test_an_evaluation_scheduled_for_a_version_that_left_the_window_still_runs(
    toy_data, redis_server, r
):
    settings = FederationSettings(task="toy", eval_every=0, target_versions=0, max_staleness=1)
    fed = service.initialise(r, K, toy_data, settings)
    agg = Aggregator(r, K, fed)
    dispatcher = Dispatcher(r, K, fed)

    def advance(n: int) -> None:
        for _ in range(n):
            delta = {k: np.full(v.shape, 1e-4, np.float32) for k, v in agg.weights.items()}
            publish(r, K, "cn", agg.version, delta)
            while agg.step(block_ms=50):
                pass

    advance(1)
    dispatcher.schedule_evaluation(1)  # no worker runs it yet
    advance(4)  # the window is 2 versions: version 1 left it three commits ago
    assert r.exists(K.model(1)) and not r.exists(K.model(2))  # kept for its evaluation only
    with Fleet(redis_server.url, K.namespace, toy_data) as fleet:
        for region in fed.regions:
            worker = fleet.worker(region, "--burst")
            assert worker.wait(timeout=120) == 0, fleet.log(worker)
    while agg.step(block_ms=50):
        pass
    assert set(accepted_results(r, K, fed)[1]) == set(fed.regions)  # every region scored version 1
    dispatcher._release_pins()
    assert r.hlen(K.pinned) == 0 and not r.exists(K.model(1))
    assert r.exists(K.model(agg.version)) and r.exists(K.model(agg.version - 1))
