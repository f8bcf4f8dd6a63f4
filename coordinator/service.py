"""The coordinator and aggregator processes' main loops, as library functions.

``initialise`` writes the federation record and version 0 of the model (both only if absent, so
a restarted coordinator joins the federation it finds). The loops stop when ``should_stop``
says so (SIGTERM in the CLI) and return what they did.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import redis

from coordinator.aggregator import Aggregator, Counters
from coordinator.dispatcher import Dispatcher
from shared import federation
from shared.federation import Federation
from shared.keys import Keys
from shared.lease import Lease, LostLease
from shared.resilience import REDIS_DOWN, Outage
from shared.settings import FederationSettings
from shared.store import ModelStore
from shared.streams import CommitWatch
from shared.telemetry import AggregatorMetrics
from tasks.api import load_task, require_private


def initialise(
    connection: redis.Redis, keys: Keys, data_dir: Path, settings: FederationSettings
) -> Federation:
    """Create the federation from the data's public part (the task's description), unless it
    exists; the task validates its own settings first. A coordinator that finds a federation
    joins it with the record's task and settings, whatever its own flags say.

    The task builds version 0 only when it has to, so an aggregator or a coordinator joining a
    running federation imports no model code.
    """
    fed = federation.read(connection, keys)
    if fed is None:  # a new federation: of the settings' task
        task = load_task(settings.task)
        settings = replace(settings, task_settings=task.settings(settings.task_settings))
        if settings.dp_clip:  # before the record: every worker would refuse it
            require_private(task, settings.task)
        described = task.describe(data_dir)
        # version 0 before the record: a role that finds the record finds a model too
        _initial_model(connection, keys, task, data_dir, settings)
        wanted = Federation(
            settings=settings,
            regions=described.regions,
            data_digest=described.digest,
            data_name=described.name,
            metrics=task.metrics,
            created_at=time.time(),
        )
        fed = federation.create(connection, keys, wanted)
    # joining (or raced by another coordinator): the record's task and settings are in force
    task = load_task(fed.settings.task)
    federation.check_data(fed, task, data_dir)
    _initial_model(connection, keys, task, data_dir, fed.settings)
    return fed


def _initial_model(connection: redis.Redis, keys: Keys, task, data_dir: Path,
                   settings: FederationSettings) -> None:  # fmt: skip
    store = ModelStore(connection, keys, window=settings.max_staleness + 1)
    if store.current_version() is None:
        weights = task.initial_weights(data_dir, settings.task_settings, settings.seed)
        store.initialise(weights, {"mode": settings.mode, "seed": settings.seed})


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

    Only the holder of the coordinator lease dispatches; another instance stands by and takes
    over when the active one dies. A Redis outage pauses it (backoff, one line per interval);
    all its state is in Redis, so it picks up where it was, and a half-done dispatch is tidied
    by the next reconcile.
    """
    lease = Lease(connection, keys, "coordinator")
    dispatcher = Dispatcher(connection, keys, fed, lease=lease)
    outage = Outage(say, "coordinator")
    try:
        return _coordinate(dispatcher, lease, should_stop, interval, final_evaluation, say,
                           outage)  # fmt: skip
    finally:
        lease.release()


def _coordinate(dispatcher, lease, should_stop, interval, final_evaluation, say, outage):
    connection, keys = dispatcher.r, dispatcher.keys
    watch = None
    while not should_stop():
        try:
            watch = watch or CommitWatch(connection, keys)
            if lease.value is None and not lease.hold(should_stop, say):
                return None
            lease.check()
            reason = dispatcher.tick()
            if reason:
                dispatcher.drain(should_stop)
                if final_evaluation and not should_stop():
                    version = dispatcher.store.current_version() or 0
                    if not connection.sismember(keys.evaluated, version):
                        dispatcher.schedule_evaluation(version)
                return reason
            outage.recovered()
            # the next tick at the next commit (a slot frees, a round closes) or after interval
            watch.wait(interval)
        except LostLease as exc:
            if say is not None:
                say(f"coordinator: {exc}; standing by")
            lease.value = None
        except REDIS_DOWN as exc:
            time.sleep(outage.failed(exc))
    return None


def aggregate(
    connection: redis.Redis,
    keys: Keys,
    fed: Federation,
    should_stop: Callable[[], bool],
    consumer: str | None = None,
    say: Callable[[str], None] | None = None,
    metrics: AggregatorMetrics | None = None,
) -> Counters:
    """Aggregate until ``should_stop``; after a Redis outage, start over from what Redis holds.

    Only the holder of the aggregator lease aggregates, and every write it makes is fenced by
    the lease; another instance stands by and takes over (claiming what the dead one had read)
    when the active one dies, and an instance that finds its lease gone stands by again.
    Starting over is the crash-restart path: the model and version are re-read (a commit whose
    reply was lost is not applied again) and the updates it had read but not settled are still
    pending in the stream, so ``recover`` reads them again.
    """
    totals = Counters()
    outage = Outage(say, "aggregator")
    lease = Lease(connection, keys, "aggregator")
    consumer = consumer or lease.holder
    try:
        while not should_stop():
            aggregator = None
            try:
                if lease.value is None and not lease.hold(should_stop, say):
                    break
                aggregator = Aggregator(connection, keys, fed, consumer, lease=lease,
                                        metrics=metrics)  # fmt: skip
                outage.recovered()
                aggregator.run(lambda: should_stop() or lease.lost.is_set())
                lease.check()
            except LostLease as exc:
                if say is not None:
                    say(f"aggregator: {exc}; standing by")
                lease.value = None
            except REDIS_DOWN as exc:
                time.sleep(outage.failed(exc))
            finally:
                if aggregator is not None:
                    totals.add(aggregator.counters)
    finally:
        lease.release()
    return totals
