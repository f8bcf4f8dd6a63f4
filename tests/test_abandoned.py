"""A worker killed mid-job: its job is given up within seconds and the work goes on."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import redis

from coordinator import service
from shared.keys import Keys
from shared.processes import stop_processes
from shared.settings import FederationSettings

FEDQ = [sys.executable, "-m", "shared"]


def _wait(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def test_kill_9_of_a_worker_mid_job_frees_its_slot_and_the_job_is_redone(small_data, redis_server):
    r = redis.Redis.from_url(redis_server.url)
    r.flushall()
    keys = Keys("abandon")
    settings = FederationSettings(eval_every=0, target_versions=2, inflight_per_region=1)
    service.initialise(r, keys, small_data, settings)
    env = {**os.environ, "FEDQ_REDIS_URL": redis_server.url, "FEDQ_NAMESPACE": "abandon"}
    started: list[subprocess.Popen] = []

    def spawn(*args: str) -> subprocess.Popen:
        proc = subprocess.Popen([*FEDQ, *args], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)  # fmt: skip
        started.append(proc)
        return proc

    try:
        spawn("aggregator")
        spawn("coordinator", "--data", str(small_data))
        # a very slow cn worker: its first job will still be running when it is killed
        slow = spawn("worker", "--region", "cn", "--data", str(small_data), "--slowdown", "200")

        def cn_started() -> str | None:
            for job_id in r.hkeys(keys.inflight("cn")):
                if r.hget(f"rq:job:{job_id.decode()}", "status") == b"started":
                    return job_id.decode()
            return None

        assert _wait(lambda: cn_started() is not None, 90), "the slow worker never started a job"
        victim = cn_started()
        slow.send_signal(signal.SIGKILL)
        slow.wait()
        # within the alive key's TTL plus a tick, the dispatcher gives the job up
        assert _wait(lambda: not r.hexists(keys.inflight("cn"), victim), 30)
        assert int(r.get(keys.abandoned) or 0) >= 1
        # a worker that comes back picks up the new job and the federation moves on
        spawn("worker", "--region", "cn", "--data", str(small_data))
        assert _wait(lambda: int(r.get(keys.version) or 0) >= 1, 120)
        assert not r.sismember(keys.applied, victim)
    finally:
        stop_processes(started)
