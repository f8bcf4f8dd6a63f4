"""Redis goes away: the model survives a restart (AOF), and every process rides out the outage."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time

import numpy as np
import redis

from coordinator import service
from coordinator.aggregator import Aggregator
from harness.audit import audit
from shared.keys import Keys
from shared.redis_server import RedisServer, free_port
from shared.settings import FederationSettings
from shared.store import ModelStore
from tests.fleet import FEDQ, Fleet, started_job, wait_until
from tests.updates import publish


def _apply_some(r: redis.Redis, keys: Keys, toy_data, n: int) -> dict[str, np.ndarray]:
    fed = service.initialise(r, keys, toy_data, FederationSettings(task="toy", eval_every=0))
    agg = Aggregator(r, keys, fed)
    for i in range(n):
        delta = {k: np.full(v.shape, 0.01 * (i + 1), np.float32) for k, v in agg.weights.items()}
        publish(r, keys, "cn", i, delta)
        agg.step(block_ms=100)
    assert agg.version == n
    return agg.weights


def test_model_and_version_survive_a_restart_and_a_kill_9_of_redis(toy_data, tmp_path):
    keys = Keys("aof")
    server = RedisServer(tmp_path / "redis").start()
    try:
        weights = _apply_some(redis.Redis.from_url(server.url), keys, toy_data, 3)
        port = server.port
        server.stop()  # a clean shutdown
        server = RedisServer(tmp_path / "redis", port=port).start()
        r = redis.Redis.from_url(server.url)
        model = ModelStore(r, keys).read_current()
        assert model.version == 3 and int(r.get(keys.version)) == 3
        for name, value in weights.items():
            np.testing.assert_array_equal(model.weights[name], value)
        assert r.scard(keys.applied) == 3
        # a crash of redis-server itself: AOF is fsynced every second
        r.set(keys.done, "marker")
        time.sleep(1.5)
        server.process.send_signal(signal.SIGKILL)
        server.process.wait()
        server = RedisServer(tmp_path / "redis", port=port).start()
        r = redis.Redis.from_url(server.url)
        assert ModelStore(r, keys).current_version() == 3 and r.get(keys.done) == b"marker"
    finally:
        server.stop()


def test_every_process_rides_out_a_redis_outage_and_the_federation_goes_on(toy_data, tmp_path):
    keys = Keys("outage")
    server = RedisServer(tmp_path / "redis").start()
    r = redis.Redis.from_url(server.url)
    settings = FederationSettings(task="toy", eval_every=0, target_versions=0, time_budget=600,
                                  inflight_per_region=1)  # fmt: skip
    service.initialise(r, keys, toy_data, settings)
    try:
        with Fleet(server.url, "outage", toy_data) as fleet:
            roles = [fleet.aggregator(), fleet.coordinator(), fleet.worker("cn"),
                     fleet.worker("us")]  # fmt: skip
            assert wait_until(lambda: int(r.get(keys.version) or 0) >= 3, 120)
            port = server.port
            server.stop()
            time.sleep(6)
            dead = [(i, fleet.log(p)[-3000:]) for i, p in enumerate(roles) if p.poll() is not None]
            assert not dead, f"a process died with Redis: {dead}"
            server = RedisServer(tmp_path / "redis", port=port).start()
            r = redis.Redis.from_url(server.url)
            before = int(r.get(keys.version))
            stalled = not wait_until(lambda: int(r.get(keys.version)) >= before + 5, 120)
            if stalled:  # where each role is: its threads' stacks (faulthandler, SIGUSR1)
                for p in roles:
                    p.send_signal(signal.SIGUSR1)
                time.sleep(2)
                for name, p in zip(["aggregator", "coordinator", "cn", "us"], roles, strict=True):
                    print(f"===== {name} =====\n{fleet.log(p)}")  # shown whole, not truncated
            assert not stalled, f"fewer than 5 versions in 120 s after the restart (from {before})"
            assert all(p.poll() is None for p in roles)
            logs = [fleet.log(p) for p in roles]
            for log in logs[:2]:  # aggregator, coordinator
                assert log.count("Redis unreachable") == 1, log
                assert "Redis reachable again" in log, log
                assert "Traceback" not in log, log
            # a worker in the middle of a job through the whole outage may not see it at all
            noticed = ["could not connect to Redis" in log or "Redis unreachable" in log
                       for log in logs[2:]]  # fmt: skip
            assert any(noticed), logs[2:]
            for log in logs[2:]:
                assert log.count("could not connect to Redis") <= 2, log  # once per interval
                assert "Traceback" not in log, log
        result = audit(r, keys)
        assert result.ok and result.applied > 0, result.problems
    finally:
        server.stop()


def test_a_worker_holds_its_finished_update_through_an_outage_and_publishes_it_after(
    toy_data, tmp_path
):
    keys = Keys("held")
    server = RedisServer(tmp_path / "redis").start()
    r = redis.Redis.from_url(server.url)
    settings = FederationSettings(task="toy", eval_every=0, target_versions=0, time_budget=600,
                                  inflight_per_region=1, worker_ttl=60,
                                  task_settings={"job_seconds": 8.0})  # fmt: skip
    service.initialise(r, keys, toy_data, settings)
    try:
        with Fleet(server.url, "held", toy_data) as fleet:
            fleet.coordinator()
            worker = fleet.worker("cn")
            assert wait_until(lambda: started_job(r, keys), 90)
            job_id = started_job(r, keys)
            port = server.port
            server.stop()  # the job finishes while Redis is away
            time.sleep(12)
            assert worker.poll() is None
            server = RedisServer(tmp_path / "redis", port=port).start()
            r = redis.Redis.from_url(server.url)
            assert wait_until(lambda: list(r.hvals(keys.published("cn"))) == [b"1"], 60)
            said = rf"worker cn\.{re.escape(socket.gethostname())}-[0-9a-f]{{6}}\.{worker.pid}: "
            assert re.search(said + "Redis unreachable", fleet.log(worker)), fleet.log(worker)
            assert wait_until(lambda: r.hget(f"rq:job:{job_id}", "status") == b"finished", 30)
            assert int(r.get(keys.retried) or 0) == 0  # the first run published it, no re-run
            assert worker.poll() is None
    finally:
        server.stop()


def test_a_role_started_before_its_redis_waits_for_it_or_says_in_one_line_why_not(
    toy_data, tmp_path
):
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    env = {**os.environ, "FEDQ_REDIS_URL": url, "FEDQ_NAMESPACE": "early"}
    gone = subprocess.run([*FEDQ, "aggregator", "--wait", "0"], env=env, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert gone.returncode != 0
    lines = gone.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: cannot reach Redis at {url}: "), lines
    with Fleet(url, "early", toy_data) as fleet:
        early = fleet.aggregator()
        time.sleep(2)
        server = RedisServer(tmp_path / "redis", port=port).start()
        try:
            r = redis.Redis.from_url(server.url)
            service.initialise(
                r, Keys("early"), toy_data, FederationSettings(task="toy", eval_every=0)
            )
            made = Keys("early").update_stream("cn")
            assert wait_until(lambda: r.exists(made), 60)  # its group is made
            assert early.poll() is None
            assert f"waiting for Redis at {url}: Redis unreachable" in fleet.log(early)
        finally:
            fleet.__exit__(None, None, None)
            server.stop()


def test_rqs_traceback_for_a_redis_gone_away_becomes_one_line():
    import io
    import logging

    from worker.process import OncePerInterval

    out = io.StringIO()
    log = logging.getLogger("fedq-test-rq-lines")
    log.addHandler(logging.StreamHandler(out))
    log.addFilter(OncePerInterval())
    for error in (redis.ConnectionError("Connection reset by peer"), ValueError("a bug")):
        try:
            raise error
        except Exception:
            log.error("Worker %s: found an unhandled exception, quitting...", "us.h.1",
                      exc_info=True)  # fmt: skip
    lines = out.getvalue().splitlines()
    assert lines[0] == ("Worker us.h.1: found an unhandled exception, quitting... "
                        "(Redis went away: Connection reset by peer)")  # fmt: skip
    assert lines[1].startswith("Worker us.h.1: found") and lines[2].startswith("Traceback")
    assert lines[-1] == "ValueError: a bug"  # anything else keeps its traceback
