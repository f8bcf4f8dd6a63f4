"""Prometheus metrics of the federation's roles: every series named and defined once, here.

Each role (aggregator, coordinator, worker) serves its own on ``--metrics-port`` (off by default;
no environment variable, since one would give every process of a host the same port) in
Prometheus' text format, from a registry of its own
(so tests can run several roles in one process). The aggregator and the worker count what they
do as they do it; the coordinator's figures are the federation's state in Redis (in flight,
queued, dispatched), read at each scrape, so a restarted or standby coordinator shows the same
numbers as the active one. ``docs/METRICS.md`` lists every series (and the service's).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import redis
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from shared.keys import Keys

SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
JOB_SECONDS = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0, 300.0)
VERSIONS = (0, 1, 2, 4, 8, 16, 32, 64, 128)


class RoleMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()

    def serve(self, port: int, host: str = "127.0.0.1"):
        """Serve /metrics on ``host:port`` from a daemon thread; returns the server."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return server


class AggregatorMetrics(RoleMetrics):
    def __init__(self) -> None:
        super().__init__()
        r = self.registry
        self.applied = Counter("fedq_aggregator_updates_applied", "Updates applied, by region.",
                               ["region"], registry=r)  # fmt: skip
        self.rejected = Counter("fedq_aggregator_updates_rejected",
                                "Updates and results rejected, by reason.", ["reason"],
                                registry=r)  # fmt: skip
        self.duplicates = Counter("fedq_aggregator_duplicates_dropped",
                                  "Copies of settled updates dropped.", registry=r)  # fmt: skip
        self.results = Counter("fedq_aggregator_evaluation_results_accepted",
                               "Evaluation results accepted, by region.", ["region"],
                               registry=r)  # fmt: skip
        self.versions = Counter("fedq_aggregator_versions_committed",
                                "Model versions this process committed.", registry=r)  # fmt: skip
        self.version = Gauge("fedq_aggregator_model_version", "The newest version it knows.",
                             registry=r)  # fmt: skip
        self.suspicion = Gauge(
            "fedq_aggregator_region_suspicion",
            "How much the guard took from a region's recent updates (0-1; flagged from 0.5).",
            ["region"],
            registry=r,
        )
        self.guarded = Counter(
            "fedq_aggregator_updates_guarded",
            "Updates a guard check scaled down, down-weighted or refused, by region and check.",
            ["region", "check"],
            registry=r,
        )
        self.staleness = Histogram("fedq_aggregator_update_staleness_versions",
                                   "Versions between an applied update's base and the model it "
                                   "was mixed into.", buckets=VERSIONS, registry=r)  # fmt: skip
        self.commit_seconds = Histogram("fedq_aggregator_commit_duration_seconds",
                                        "The atomic commit of one version (blob, counter, ids, "
                                        "acknowledgements).", buckets=SECONDS,
                                        registry=r)  # fmt: skip
        self.update_age = Histogram("fedq_aggregator_update_age_seconds",
                                    "From a worker publishing an update to its commit (hosts' "
                                    "clocks).", buckets=SECONDS, registry=r)  # fmt: skip


class WorkerMetrics(RoleMetrics):
    def __init__(self, region: str) -> None:
        super().__init__()
        r = self.registry
        self.jobs = Counter("fedq_worker_jobs", "Jobs ended, by kind and outcome.",
                            ["region", "kind", "outcome"], registry=r)  # fmt: skip
        self.job_seconds = Histogram("fedq_worker_job_duration_seconds",
                                     "A job from start to its update or result published.",
                                     ["region", "kind"], buckets=JOB_SECONDS,
                                     registry=r)  # fmt: skip
        self.examples = Counter("fedq_worker_examples_trained", "Training examples processed.",
                                ["region"], registry=r)  # fmt: skip
        self.examples_per_second = Gauge("fedq_worker_examples_per_second",
                                         "Training examples per second of the last train job.",
                                         ["region"], registry=r)  # fmt: skip
        self.region = region

    def job_done(self, kind: str, seconds: float, examples: int = 0,
                 train_seconds: float = 0.0) -> None:  # fmt: skip
        self.job_seconds.labels(self.region, kind).observe(seconds)
        if examples:
            self.examples.labels(self.region).inc(examples)
            self.examples_per_second.labels(self.region).set(examples / max(train_seconds, 1e-9))

    def job_ended(self, kind: str, outcome: str) -> None:
        self.jobs.labels(self.region, kind, outcome).inc()


class CoordinatorMetrics(RoleMetrics):
    """The federation's dispatch state, read from Redis at each scrape."""

    def __init__(self, connection: redis.Redis, keys: Keys, regions: tuple[str, ...],
                 queue_keys: dict[str, str]) -> None:  # fmt: skip
        super().__init__()
        self.registry.register(_DispatchCollector(connection, keys, regions, queue_keys))


class _DispatchCollector:
    def __init__(self, connection: redis.Redis, keys: Keys, regions: tuple[str, ...],
                 queue_keys: dict[str, str]) -> None:  # fmt: skip
        self.r, self.keys, self.regions, self.queue_keys = connection, keys, regions, queue_keys

    def collect(self) -> Iterator[Any]:
        up = GaugeMetricFamily("fedq_coordinator_redis_up", "1 if this scrape could read Redis.")
        try:
            with self.r.pipeline(transaction=False) as pipe:
                for region in self.regions:
                    pipe.hlen(self.keys.inflight(region))
                    pipe.llen(self.queue_keys[region])
                pipe.hgetall(self.keys.dispatched_by_region)
                pipe.get(self.keys.version)
                pipe.get(self.keys.retried)
                pipe.get(self.keys.abandoned)
                rows = pipe.execute()
        except redis.RedisError:
            up.add_metric([], 0.0)
            yield up
            return
        up.add_metric([], 1.0)
        yield up
        inflight = GaugeMetricFamily("fedq_coordinator_jobs_in_flight",
                                     "Jobs dispatched and not ended, by region.",
                                     labels=["region"])  # fmt: skip
        queued = GaugeMetricFamily(
            "fedq_coordinator_jobs_queued",
            "Jobs waiting on the region's RQ queue.",
            labels=["region"],
        )
        for i, region in enumerate(self.regions):
            inflight.add_metric([region], float(rows[2 * i]))
            queued.add_metric([region], float(rows[2 * i + 1]))
        dispatched = CounterMetricFamily("fedq_coordinator_train_jobs_dispatched",
                                         "Train jobs dispatched, by region.",
                                         labels=["region"])  # fmt: skip
        by_region = {k.decode(): float(v) for k, v in rows[2 * len(self.regions)].items()}
        for region in self.regions:
            dispatched.add_metric([region], by_region.get(region, 0.0))
        version, retried, abandoned = rows[2 * len(self.regions) + 1 :]
        yield inflight
        yield queued
        yield dispatched
        yield GaugeMetricFamily("fedq_coordinator_model_version", "The federation's version.",
                                value=float(version or 0))  # fmt: skip
        yield CounterMetricFamily("fedq_coordinator_jobs_retried",
                                  "Train jobs re-queued (same id) after their worker died or "
                                  "failed them.",
                                  value=float(retried or 0))  # fmt: skip
        yield CounterMetricFamily("fedq_coordinator_jobs_abandoned",
                                  "Started jobs whose worker died, given up by the dispatcher.",
                                  value=float(abandoned or 0))  # fmt: skip
