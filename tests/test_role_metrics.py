"""Every role's Prometheus endpoint (``--metrics-port``) in a live federation: real Redis,
aggregator, coordinator and worker processes, scraped over loopback HTTP."""

from __future__ import annotations

import re
import socket
import subprocess

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from coordinator import service
from shared.keys import Keys
from shared.settings import FederationSettings
from tests.fleet import FEDQ, Fleet, wait_until

NS = "promroles"
KEYS = Keys(NS)
ENDPOINT = re.compile(r"Prometheus metrics on (http://\S+/metrics)")


def _samples(url: str) -> dict[tuple[str, tuple], float]:
    """(sample name, sorted labels) -> value of one scrape."""
    text = httpx.get(url).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}  # fmt: skip


def _value(samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def _endpoint(fleet: Fleet, proc: subprocess.Popen) -> str:
    found: list[str] = []
    assert wait_until(lambda: found.extend(ENDPOINT.findall(fleet.log(proc))) or found, 60), (
        fleet.log(proc)
    )
    return found[0]


@pytest.fixture(scope="module")
def scraped(redis_server, toy_data):
    r = redis.Redis.from_url(redis_server.url)
    for key in r.scan_iter(f"{NS}:*"):
        r.delete(key)
    settings = FederationSettings(task="toy", eval_every=5, inflight_per_region=1)  # no target
    service.initialise(r, KEYS, toy_data, settings)
    with Fleet(redis_server.url, NS, toy_data) as fleet:
        aggregator = fleet.spawn("aggregator", "--metrics-port", "0")
        coordinator = fleet.coordinator("--metrics-port", "0")
        worker = fleet.worker("cn", "--metrics-port", "0")
        roles = {"aggregator": aggregator, "coordinator": coordinator, "worker": worker}
        urls = {role: _endpoint(fleet, proc) for role, proc in roles.items()}
        evaluated = lambda: sum(f[b"region"] == b"cn" for _, f in r.xrange(KEYS.metrics))  # noqa: E731
        assert wait_until(lambda: int(r.get(KEYS.version) or 0) >= 12 and evaluated() >= 2,
                          120), fleet.log(coordinator)  # fmt: skip
        coordinating = _samples(urls["coordinator"])
        coordinator.terminate()  # no more jobs: the figures settle
        assert coordinator.wait(60) == 0
        versions: list[bytes | None] = []
        assert wait_until(lambda: versions.append(r.get(KEYS.version)) or
                          versions[-8:] == [versions[-1]] * 8, 60, poll=0.5)  # fmt: skip
        scrapes = {role: _samples(urls[role]) for role in ("aggregator", "worker")}
        yield {**scrapes, "coordinator": coordinating}, r, urls


def test_the_aggregator_counts_what_it_applies_and_how_stale_and_how_long(scraped):
    samples, r, _urls = scraped
    a = samples["aggregator"]
    versions = int(r.get(KEYS.version))
    applied = _value(a, "fedq_aggregator_updates_applied_total", region="cn")
    assert applied == versions >= 10  # only cn works: every version is one of its updates
    assert _value(a, "fedq_aggregator_versions_committed_total") == versions
    assert _value(a, "fedq_aggregator_model_version") == versions
    assert _value(a, "fedq_aggregator_update_staleness_versions_count") == applied
    assert _value(a, "fedq_aggregator_commit_duration_seconds_count") == versions
    assert _value(a, "fedq_aggregator_commit_duration_seconds_sum") > 0
    assert _value(a, "fedq_aggregator_update_age_seconds_count") == applied


def test_the_coordinator_shows_jobs_in_flight_and_dispatched_per_region(scraped):
    samples, r, _urls = scraped
    c = samples["coordinator"]
    assert _value(c, "fedq_coordinator_redis_up") == 1
    dispatched = {k.decode(): int(v) for k, v in r.hgetall(KEYS.dispatched_by_region).items()}
    seen = _value(c, "fedq_coordinator_train_jobs_dispatched_total", region="cn")
    assert 3 <= seen <= dispatched["cn"]  # scraped at version 3 or later, read at the end
    in_flight = {dict(labels)["region"]: v for (name, labels), v in c.items()
                 if name == "fedq_coordinator_jobs_in_flight"}  # fmt: skip
    assert set(in_flight) == {"cn", "us", "eu", "in", "jp", "me"}
    assert all(0 <= v <= 1 for v in in_flight.values())  # inflight_per_region = 1
    assert 3 <= _value(c, "fedq_coordinator_model_version") <= int(r.get(KEYS.version))


def test_the_worker_times_its_jobs_and_counts_examples(scraped):
    samples, _r, _urls = scraped
    w = samples["worker"]
    done = _value(w, "fedq_worker_jobs_total", region="cn", kind="train", outcome="done")
    assert done >= 10
    assert _value(w, "fedq_worker_job_duration_seconds_count", region="cn", kind="train") == done
    assert _value(w, "fedq_worker_jobs_total", region="cn", kind="evaluate", outcome="done") >= 2
    assert _value(w, "fedq_worker_examples_trained_total", region="cn") > 0
    assert _value(w, "fedq_worker_examples_per_second", region="cn") > 0


def test_a_metrics_port_in_use_is_one_line(redis_server, toy_data):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([*FEDQ, "aggregator", "--metrics-port", str(port), "--wait", "1",
                               "--redis-url", redis_server.url, "--namespace", NS],
                              capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 1
    assert f"aggregator: cannot serve metrics on 127.0.0.1:{port}" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_the_aggregator_counts_rejections_by_reason(scraped):
    _samples_before, r, urls = scraped
    r.xadd(KEYS.update_stream("cn"), {"u": b"\x93junk", "id": "cn-t1-x.y", "region": "cn"})

    def rejected() -> dict[str, float]:
        scrape = _samples(urls["aggregator"])
        return {dict(labels)["reason"]: v for (name, labels), v in scrape.items()
                if name == "fedq_aggregator_updates_rejected_total"}  # fmt: skip

    assert wait_until(lambda: sum(rejected().values()) >= 1, 30)
    reasons = {v.decode() for v in r.hvals(KEYS.rejected)}
    assert set(rejected()) == reasons
