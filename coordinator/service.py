"""The coordinator and aggregator processes' main loops, as library functions.

``initialise`` writes the federation record and version 0 of the model (both only if absent, so
a restarted coordinator joins the federation it finds). The loops stop when ``should_stop``
says so (SIGTERM in the CLI) and return what they did.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import redis

from coordinator.aggregator import Aggregator, Counters
from coordinator.dispatcher import Dispatcher
from shared import federation
from shared.federation import Federation
from shared.keys import Keys
from shared.resilience import REDIS_DOWN, Outage
from shared.settings import FederationSettings
from shared.store import ModelStore


def initialise(
    connection: redis.Redis, keys: Keys, data_dir: Path, settings: FederationSettings
) -> Federation:
    """Create the federation from the data's public part (meta, catalogue), unless it exists.

    torch is imported only when version 0 has to be built, so an aggregator or a coordinator
    joining a running federation stays small.
    """
    from shared.task.local_data import load_shared

    shared = load_shared(data_dir)
    wanted = Federation(
        settings=settings,
        regions=shared.meta.regions,
        catalogue_digest=federation.catalogue_digest(data_dir),
        data_name=shared.meta.name,
        created_at=time.time(),
    )
    fed = federation.create(connection, keys, wanted)
    federation.check_catalogue(fed, data_dir)
    store = ModelStore(connection, keys, window=fed.settings.max_staleness + 1)
    if store.current_version() is None:
        from shared.task.model import build, state_to_numpy

        config = shared.model_config(dim=fed.settings.model_dim)
        weights = state_to_numpy(build(config, shared.features, seed=fed.settings.seed))
        store.initialise(weights, {"mode": fed.settings.mode, "seed": fed.settings.seed})
    return fed


def coordinate(
    connection: redis.Redis,
    keys: Keys,
    fed: Federation,
    should_stop: Callable[[], bool],
    interval: float = 0.05,
    final_evaluation: bool = True,
    say: Callable[[str], None] | None = None,
) -> str | None:
    """Dispatch until a target is reached (returns its reason) or ``should_stop``.

    A Redis outage pauses it (backoff, one line per interval); all its state is in Redis, so
    it picks up where it was, and a half-done dispatch is tidied by the next reconcile.
    """
    dispatcher = Dispatcher(connection, keys, fed)
    outage = Outage(say, "coordinator")
    while not should_stop():
        try:
            reason = dispatcher.tick()
            if reason:
                dispatcher.drain(should_stop)
                if final_evaluation and not should_stop():
                    version = dispatcher.store.current_version() or 0
                    if not connection.sismember(keys.evaluated, version):
                        dispatcher.schedule_evaluation(version)
                return reason
            outage.recovered()
        except REDIS_DOWN as exc:
            time.sleep(outage.failed(exc))
            continue
        time.sleep(interval)
    return None


def aggregate(
    connection: redis.Redis,
    keys: Keys,
    fed: Federation,
    should_stop: Callable[[], bool],
    consumer: str = "aggregator",
    say: Callable[[str], None] | None = None,
) -> Counters:
    """Aggregate until ``should_stop``; after a Redis outage, start over from what Redis holds.

    Starting over is the crash-restart path: the model and version are re-read (a commit whose
    reply was lost is not applied again) and the updates it had read but not settled are still
    pending in the stream, so ``recover`` reads them again.
    """
    totals = Counters()
    outage = Outage(say, "aggregator")
    while not should_stop():
        aggregator = None
        try:
            aggregator = Aggregator(connection, keys, fed, consumer)
            outage.recovered()
            aggregator.run(should_stop)
        except REDIS_DOWN as exc:
            time.sleep(outage.failed(exc))
        finally:
            if aggregator is not None:
                totals.add(aggregator.counters)
    return totals
