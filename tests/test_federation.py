"""Whole federations: real redis-server, real worker/aggregator/coordinator processes."""

from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
import redis

from shared.processes import stop_processes
from shared.settings import FederationSettings
from tasks.recommender.dataset import read_meta
from tests.privacy_scan import assert_no_raw_data

FEDQ = [sys.executable, "-m", "cli"]


def _run(
    args: list[str], env: dict | None = None, timeout: float = 600
) -> subprocess.CompletedProcess:
    proc = subprocess.run([*FEDQ, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})  # fmt: skip
    assert proc.returncode == 0, f"fedq {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def federated_run(small_data, redis_server, tmp_path_factory):
    """One async run on the small data: 6 regions x 2 workers, against the test redis-server."""
    out = tmp_path_factory.mktemp("run")
    connection = redis.Redis.from_url(redis_server.url)
    connection.flushall()
    proc = _run(["run", "--data", str(small_data), "--redis-url", redis_server.url,
                 "--namespace", "e2e", "--workers-per-region", "2", "--target-versions", "24",
                 "--eval-every", "12", "--no-baselines", "--out", str(out),
                 "--json", str(out / "copy.json")])  # fmt: skip
    report = json.loads((out / "report.json").read_text())
    return report, proc, connection, out


def test_end_to_end_async_run(federated_run, small_data):
    report, proc, connection, out = federated_run
    regions = read_meta(small_data).regions
    assert report["mode"] == "async"
    assert report["versions"] >= 24
    # async: one version per applied update, and every update ended applied or rejected
    assert report["updates"]["applied"] == report["versions"]
    assert set(report["final"]["regions"]) == set(regions)
    for m in [*report["final"]["regions"].values(), report["final"]["overall"]]:
        for key in ("hr@10", "ndcg@10", "hr@10_sampled", "ndcg@10_sampled", "cold_start.hr@10"):
            assert 0.0 <= m[key] <= 1.0
    versions = [p["version"] for p in report["curve"]]
    assert versions[0] == 12 and versions[-1] == report["versions"]
    assert json.loads((out / "copy.json").read_text())["versions"] == report["versions"]
    assert report["peak_rss_mb"]["worker"] > 0
    assert "version" in proc.stdout
    # regions get work in proportion to their data: the more data, the more jobs
    sizes = {r: int(connection.get(f"e2e:data-size:{r}") or 0) for r in regions}
    jobs = {k.decode(): int(v) for k, v in connection.hgetall("e2e:dispatched:by-region").items()}
    assert all(sizes.values())
    by_size = sorted(regions, key=sizes.get, reverse=True)
    counts = [jobs.get(r, 0) for r in by_size]
    assert counts == sorted(counts, reverse=True) and counts[0] > counts[-1]
    total = sum(counts)
    for r in regions:  # the deficit rule keeps every region within one job of its share
        assert jobs.get(r, 0) <= total * sizes[r] / sum(sizes.values()) + 1
    regions_seen = set()
    for _id, fields in connection.xrange("e2e:applies"):
        regions_seen |= {u["region"] for u in json.loads(fields[b"updates"])}
    assert set(by_size[:3]) <= regions_seen


def test_run_reaps_every_process_it_started(federated_run):
    report, proc, connection, out = federated_run
    assert _fedq_processes("e2e") == []
    # its workers said goodbye to RQ (clean shutdown, not a kill)
    assert connection.scard("rq:workers") == 0


def test_job_data_in_redis_is_json_not_pickle(federated_run):
    _report, _proc, connection, _out = federated_run
    jobs = [k for k in connection.scan_iter("rq:job:*") if connection.type(k) == b"hash"]
    assert jobs
    for key in jobs:
        stored = connection.hget(key, "data")
        if stored is None:
            continue
        data = zlib.decompress(stored)  # RQ compresses job data; the payload is the serializer's
        assert not data.startswith(b"\x80"), f"{key!r} holds pickle"
        func, _instance, args, _kwargs = json.loads(data)
        assert func in ("worker.tasks.train", "worker.tasks.evaluate")
        assert set(args[0]) >= {"kind", "region", "seed"}
        with pytest.raises(pickle.UnpicklingError):
            pickle.loads(data)


def test_no_raw_interaction_data_in_redis_after_a_run(federated_run, small_data):
    _report, _proc, connection, _out = federated_run
    assert_no_raw_data(connection, small_data)


def _fedq_processes(namespace: str) -> list[int]:
    """PIDs of live `python -m cli ...` processes started for ``namespace`` (by their env)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"cli" in cmdline and f"FEDQ_NAMESPACE={namespace}".encode() in environ:
            found.append(int(proc.name))
    return found


def _initialise(connection: redis.Redis, namespace: str, data: Path, **settings) -> None:
    from coordinator import service
    from shared.keys import Keys
    from shared.settings import FederationSettings

    service.initialise(
        connection, Keys(namespace), data, FederationSettings(eval_every=0, **settings)
    )


def test_a_region_without_workers_stalls_no_other_region(small_data, redis_server, tmp_path):
    connection = redis.Redis.from_url(redis_server.url)
    connection.flushall()
    env = {"FEDQ_REDIS_URL": redis_server.url, "FEDQ_NAMESPACE": "lonely"}
    # a global bound of 2 jobs: without the stall rule the idle regions' queued jobs would hold it
    _initialise(connection, "lonely", small_data, target_versions=12, max_inflight=2,
                stall_after=2.0)  # fmt: skip
    procs = []
    logs = []
    try:
        for args in (["aggregator"],
                     ["coordinator", "--data", str(small_data)],
                     ["worker", "--region", "cn", "--data", str(small_data)],
                     ["worker", "--region", "us", "--data", str(small_data)]):  # fmt: skip
            log = open(tmp_path / f"{args[0]}-{len(procs)}.log", "wb")  # noqa: SIM115
            logs.append(log)
            procs.append(subprocess.Popen([*FEDQ, *args], env={**os.environ, **env},
                                          stdout=log, stderr=subprocess.STDOUT))  # fmt: skip
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and int(connection.get("lonely:model:version") or 0) < 12:
            time.sleep(0.5)
        version = int(connection.get("lonely:model:version") or 0)
        assert version >= 12, f"only {version} versions with cn and us working"
        # the idle regions hold at most their in-flight bound of queued jobs, nothing piles up
        bound = FederationSettings().inflight_per_region
        for region in ("eu", "in", "jp", "me"):
            assert connection.llen(f"rq:queue:lonely:region:{region}") <= bound
    finally:
        stop_processes(procs)
        for log in logs:
            log.close()


def test_rq_info_shows_fedq_queues_and_workers(small_data, redis_server, tmp_path):
    connection = redis.Redis.from_url(redis_server.url)
    connection.flushall()
    env = {"FEDQ_REDIS_URL": redis_server.url, "FEDQ_NAMESPACE": "info"}
    _initialise(connection, "info", small_data)
    worker = subprocess.Popen([*FEDQ, "worker", "--region", "jp", "--data", str(small_data)],
                              env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not connection.scard("rq:workers"):
            time.sleep(0.3)
        rq = str(Path(sys.executable).with_name("rq"))
        out = subprocess.run([rq, "info", "--url", redis_server.url], capture_output=True,
                             text=True, timeout=60)  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert "info:region:jp" in out.stdout
        assert re.search(rf"jp\.{re.escape(os.uname().nodename)}-[0-9a-f]{{6}}\.{worker.pid} ",
                         out.stdout), out.stdout  # fmt: skip
    finally:
        worker.terminate()
        worker.wait(timeout=30)


def test_the_process_finder_sees_live_fedq_processes(small_data, redis_server):
    """The reaping check above is only worth something if it can see a live process."""
    env = {**os.environ, "FEDQ_REDIS_URL": redis_server.url, "FEDQ_NAMESPACE": "finder"}
    proc = subprocess.Popen([*FEDQ, "aggregator", "--wait", "30"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and proc.pid not in _fedq_processes("finder"):
            time.sleep(0.1)
        assert proc.pid in _fedq_processes("finder")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert proc.pid not in _fedq_processes("finder")


def _png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk (and proof that it is a PNG)."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR", path
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def test_the_run_writes_its_plots_and_summary(federated_run):
    report, _proc, _connection, out = federated_run
    for name in ("headline_vs_time.png", "headline_vs_version.png", "staleness.png",
                 "updates_per_region.png"):  # fmt: skip
        width, height = _png_size(out / name)
        assert width > 300 and height > 200
    summary = (out / "summary.md").read_text()
    assert f"{report['final']['overall']['hr@10']:.4f}" in summary
    assert "![headline_vs_time](headline_vs_time.png)" in summary
    assert len(report["updates_log"]) == report["updates"]["applied"]
    assert set(report["curve"][-1]["regions"]) == set(report["regions"])
