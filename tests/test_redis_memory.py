"""Redis at its memory cap: the embedded servers are capped with noeviction, and a write Redis
refuses there ("OOM command not allowed") is retried by the roles in one line, never dropped."""

from __future__ import annotations

import os
import subprocess

import redis

from coordinator import service
from harness.audit import audit
from shared.keys import Keys
from shared.redis_server import RedisServer, default_maxmemory, parse_size
from shared.settings import FederationSettings
from tests.fleet import FEDQ, Fleet, started_job, wait_until


def test_a_write_refused_at_the_cap_is_retried_in_one_line_and_the_update_lands_after(
    toy_data, tmp_path
):
    keys = Keys("full")
    server = RedisServer(tmp_path / "redis", maxmemory=parse_size("64mb")).start()
    r = redis.Redis.from_url(server.url)
    settings = FederationSettings(task="toy", eval_every=0, target_versions=0, time_budget=600,
                                  inflight_per_region=1, worker_ttl=60,
                                  task_settings={"job_seconds": 3.0})  # fmt: skip
    service.initialise(r, keys, toy_data, settings)
    try:
        assert r.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
        with Fleet(server.url, "full", toy_data) as fleet:
            roles = [fleet.aggregator(), fleet.coordinator(), fleet.worker("cn")]
            assert wait_until(lambda: int(r.get(keys.version) or 0) >= 1, 90)
            assert wait_until(lambda: started_job(r, keys), 30)
            job_id = started_job(r, keys)  # finishes while Redis refuses writes
            r.config_set("maxmemory", str(r.info("memory")["used_memory"] // 2))
            with_update = _applied(r, keys)
            assert wait_until(lambda: "Redis refuses writes" in fleet.log(roles[2]), 30)
            assert _applied(r, keys) == with_update  # nothing got through the cap
            assert all(p.poll() is None for p in roles), [fleet.log(p) for p in roles]
            r.config_set("maxmemory", str(parse_size("64mb")))
            assert wait_until(lambda: r.hexists(keys.applied_jobs, job_id), 60), fleet.log(roles[2])
            assert wait_until(lambda: len(_applied(r, keys)) >= len(with_update) + 3, 60)
            assert all(p.poll() is None for p in roles)
            for p in roles:
                log = fleet.log(p)
                assert "Traceback" not in log, log
                assert log.count("Redis refuses writes: out of memory") <= 1, log
            log = fleet.log(roles[2])
            assert log.count("Redis refuses writes: out of memory") == 1, log
            assert "Redis takes writes again" in log, log
        assert list(r.hvals(keys.published("cn"))).count(b"1") == r.hlen(keys.published("cn"))
        result = audit(r, keys)
        assert result.ok and result.applied >= 4, result.problems
    finally:
        server.stop()


def _applied(r: redis.Redis, keys: Keys) -> set[bytes]:
    return set(r.hkeys(keys.applied_jobs))


def test_the_embedded_server_is_capped_and_a_bad_cap_is_one_line(toy_data, tmp_path):
    home = tmp_path / "home"
    env = {**os.environ, "FEDQ_HOME": str(home), "FEDQ_REDIS_MAXMEMORY": "96mb"}
    env.pop("FEDQ_REDIS_URL", None)
    started = subprocess.run([*FEDQ, "redis", "start"], env=env, capture_output=True, text=True,
                             timeout=60)  # fmt: skip
    try:
        assert started.returncode == 0, started.stderr
        r = redis.Redis.from_url(started.stdout.strip().splitlines()[-1])
        assert r.config_get("maxmemory")["maxmemory"] == str(96 * 1024**2)
        assert r.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
    finally:
        subprocess.run([*FEDQ, "redis", "stop"], env=env, capture_output=True, timeout=60)
    assert 64 * 1024**2 <= default_maxmemory() <= 2 * 1024**3  # min(2 GiB, RAM / 4)
    bad = subprocess.run([*FEDQ, "run", "--task", "toy", "--data", str(toy_data),
                          "--redis-maxmemory", "12 parsecs"], env=env, capture_output=True,
                         text=True, timeout=60)  # fmt: skip
    assert bad.returncode != 0
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and "12 parsecs" in lines[0], lines
