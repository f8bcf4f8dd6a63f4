"""fedq quarantine and the guard's attribution in fedq status and fedq audit (real Redis; the
live test runs real aggregator, coordinator and worker processes)."""

from __future__ import annotations

import json
import os
import subprocess

import redis

from coordinator import service
from coordinator.dispatcher import ROUND_GRACE, Dispatcher
from coordinator.guard import RegionRecord
from shared.federation import Federation, create
from shared.jobs import JobSpec, parse_issued, record_issued
from shared.keys import Keys
from shared.redis_server import free_port
from shared.settings import FederationSettings
from tasks.toy import TASK as TOY
from tests.fleet import FEDQ, Fleet, wait_until


def fedq(url: str, namespace: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "FEDQ_REDIS_URL": url, "FEDQ_NAMESPACE": namespace}
    return subprocess.run([*FEDQ, *args], env=env, capture_output=True, text=True, timeout=120)


def fedq_json(url: str, namespace: str, *args: str):
    out = fedq(url, namespace, *args, "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _train_jobs(r: redis.Redis, keys: Keys, region: str) -> set[str]:
    """The train jobs the coordinator issued to ``region``."""
    return {
        k.decode()
        for k, v in r.hgetall(keys.issued).items()
        if parse_issued(v).get("kind") == "train" and parse_issued(v).get("region") == region
    }


def _outcomes(r: redis.Redis, keys: Keys, region: str) -> tuple[set[str], dict[str, str]]:
    """The region's applied update ids, and its rejected ones with their reasons."""
    applied = {m.decode() for m in r.smembers(keys.applied) if m.startswith(f"{region}-".encode())}
    rejected = {
        k.decode(): v.decode()
        for k, v in r.hgetall(keys.rejected).items()
        if k.startswith(f"{region}-".encode())
    }
    return applied, rejected


def test_quarantine_stops_a_regions_train_jobs_and_refuses_its_updates_until_released(
    redis_server, toy_data
):
    """cn is quarantined while a job it was issued waits for a worker: that job's update is
    refused (``quarantined``), no train job is issued to cn while us's keep being applied, and
    after the release cn gets jobs again and its updates are applied."""
    keys = Keys("quar")
    url, ns = redis_server.url, keys.namespace
    r = redis.Redis.from_url(url)
    for key in r.scan_iter(f"{ns}:*"):
        r.delete(key)
    # the guard is left out: what is tested is the operator's quarantine, whose refusal comes
    # before the guard's checks; without it every update of cn's after the release is applied
    settings = FederationSettings(
        task="toy", inflight_per_region=1, eval_every=0, target_versions=0, robust=False
    )
    service.initialise(r, keys, toy_data, settings)
    with Fleet(url, ns, toy_data) as fleet:
        fleet.aggregator()
        fleet.coordinator()
        fleet.worker("us")
        # cn has no worker yet: its one job waits on its queue, so its slot is full and no
        # dispatch can be racing the quarantine below
        assert wait_until(
            lambda: int(r.get(keys.version) or 0) >= 3 and r.hlen(keys.inflight("cn")), 60
        )
        before = _train_jobs(r, keys, "cn")
        assert len(before) == 1

        out = fedq(url, ns, "quarantine", "cn")
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith("quarantined cn (suspicion 0.00)"), out.stdout
        again = fedq(url, ns, "quarantine", "cn")
        assert again.returncode == 0 and "already quarantined" in again.stdout
        assert fedq_json(url, ns, "quarantine") == {
            "quarantined": [{"region": "cn", "known": True, "suspicion": 0.0, "flagged": False}]
        }
        assert r.smembers(keys.quarantined) == {b"cn"}

        fleet.worker("cn")  # runs the job issued before the quarantine: its update is refused
        assert wait_until(lambda: "quarantined" in _outcomes(r, keys, "cn")[1].values(), 60)
        refused_at = int(r.get(keys.version) or 0)
        # us goes on; cn's slot is free (its job ended) yet it is given nothing
        assert wait_until(
            lambda: (
                not r.hlen(keys.inflight("cn")) and int(r.get(keys.version) or 0) >= refused_at + 5
            ),
            60,
        )
        assert _train_jobs(r, keys, "cn") == before
        applied, rejected = _outcomes(r, keys, "cn")
        assert not applied and set(rejected.values()) == {"quarantined"}
        status = fedq_json(url, ns, "status")
        assert status["regions"]["cn"]["quarantined"] is True
        assert status["regions"]["us"]["quarantined"] is False
        text = fedq(url, ns, "status")
        assert "QUARANTINED (no train jobs, updates refused): cn" in text.stdout
        report = fedq_json(url, ns, "audit")
        assert report["ok"], report["problems"]  # a quarantine is information, not a problem
        assert report["regions"]["cn"]["quarantined"] is True
        assert report["regions"]["cn"]["refused"]["quarantined"] == len(rejected) >= 1

        out = fedq(url, ns, "quarantine", "cn", "--release")
        assert out.returncode == 0 and out.stdout.startswith("released cn"), out.stderr
        assert not r.smembers(keys.quarantined)
        assert wait_until(lambda: _outcomes(r, keys, "cn")[0], 60)  # a cn update applied
        assert len(_train_jobs(r, keys, "cn")) > len(before)
        again = fedq(url, ns, "quarantine", "cn", "--release")
        assert again.returncode == 0 and "was not quarantined" in again.stdout
        assert fedq_json(url, ns, "quarantine") == {"quarantined": []}
    assert fedq_json(url, ns, "audit")["ok"]


def test_the_dispatcher_leaves_a_quarantined_region_out_of_async_slots_and_sync_rounds(r, toy_data):
    keys = Keys("quardisp")
    fed = service.initialise(
        r, keys, toy_data, FederationSettings(task="toy", inflight_per_region=1, eval_every=0)
    )
    r.sadd(keys.quarantined, "cn")
    Dispatcher(r, keys, fed).tick()
    assert not r.hlen(keys.inflight("cn"))
    assert all(r.hlen(keys.inflight(region)) == 1 for region in fed.regions if region != "cn")

    keys = Keys("quarsync")
    settings = FederationSettings(task="toy", mode="sync", eval_every=0, round_deadline=60)
    fed = service.initialise(r, keys, toy_data, settings)
    r.sadd(keys.quarantined, "cn")
    now = [1000.0]
    dispatcher = Dispatcher(r, keys, fed, clock=lambda: now[0])
    dispatcher.tick()
    regions = json.loads(r.hget(keys.round, "regions"))
    assert "cn" not in regions and set(regions) == set(fed.regions) - {"cn"}
    assert "cn" not in json.loads(r.hget(keys.round, "jobs"))
    assert not _train_jobs(r, keys, "cn")
    r.srem(keys.quarantined, "cn")  # released: the next round has it again
    now[0] += 60 + ROUND_GRACE + 1
    dispatcher.tick()
    assert int(r.hget(keys.round, "number")) == 2
    assert "cn" in json.loads(r.hget(keys.round, "regions"))
    assert len(_train_jobs(r, keys, "cn")) == 1


def test_bad_input_to_quarantine_is_one_line(redis_server, r, toy_data):
    keys = Keys("quarbad")
    url, ns = redis_server.url, keys.namespace
    for args, says in (
        (("quarantine", "cn"), f"no federation under namespace '{ns}'"),
        (("quarantine",), f"no federation under namespace '{ns}'"),
    ):
        out = fedq(url, ns, *args)
        assert out.returncode == 1 and out.stderr.strip().splitlines() == [
            f"Error: {says} in this Redis"
        ]
    service.initialise(r, keys, toy_data, FederationSettings(task="toy", eval_every=0))
    for args, says in (
        (("quarantine", "xx"), "unknown region 'xx'; the federation has: cn, us, eu, in, jp, me"),
        (("quarantine", "xx", "--release"), "unknown region 'xx'"),
        (("quarantine", "--release"), "--release needs the REGION to release"),
    ):
        out = fedq(url, ns, *args)
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 1 and len(lines) == 1 and says in lines[0], (args, out.stderr)
    assert not r.exists(keys.quarantined)
    r.sadd(keys.quarantined, "old")  # a stray member (a region no longer in the federation)
    listed = fedq_json(url, ns, "quarantine")["quarantined"]
    assert [(q["region"], q["known"]) for q in listed] == [("old", False)]
    out = fedq(url, ns, "quarantine", "old", "--release")
    assert out.returncode == 0 and "released old" in out.stdout and not r.exists(keys.quarantined)
    dead = f"redis://127.0.0.1:{free_port()}/0"
    out = fedq(dead, ns, "quarantine", "cn")
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 1 and len(lines) == 1
    assert lines[0].startswith(f"Error: cannot reach Redis at {dead}")


def test_status_and_audit_show_what_the_guard_recorded_of_each_region(redis_server, r):
    """A guard record (as the aggregator writes it), refusals by check, an applied update the
    guard down-weighted and a quarantine: status and audit show each per region, audit ok."""
    keys = Keys("quarview")
    url, ns = redis_server.url, keys.namespace
    create(
        r, keys, Federation(FederationSettings(task="toy"), ("cn", "us"), "d", "test", TOY.metrics)
    )
    record = RegionRecord(suspicion=0.7, judged=10, acted={"direction": 4, "norm": 2}, refused=3)
    r.hset(keys.guard, "cn", record.to_json())
    r.sadd(keys.quarantined, "us")
    ids = {}
    for name, region in (
        ("a", "cn"),
        ("b", "cn"),
        ("c", "cn"),
        ("d", "cn"),
        ("e", "us"),
        ("f", "cn"),
    ):
        job_id = f"{region}-{name}-0123456789abcdef"
        record_issued(r, keys, job_id, JobSpec(kind="train", region=region))
        ids[name] = f"{job_id}.00000000"
        r.hincrby(keys.published(region), ids[name], 1)
    updates = [
        {"id": ids["a"], "region": "cn", "base": 0, "guard": "direction: cosine -0.02"},
        {"id": ids["b"], "region": "cn", "base": 0},
    ]
    r.xadd(keys.applies, {"version": 1, "at": 1.0, "updates": json.dumps(updates)})
    r.sadd(keys.applied, ids["a"], ids["b"])
    r.set(keys.version, 1)
    for name, reason in (
        ("c", "direction"),
        ("d", "influence"),
        ("e", "quarantined"),
        ("f", "suspected"),
    ):
        r.hset(keys.rejected, ids[name], reason)
        r.xadd(keys.rejections, {"id": ids[name], "reason": reason})

    status = fedq_json(url, ns, "status")
    cn, us = status["regions"]["cn"], status["regions"]["us"]
    assert cn["guard"]["suspicion"] == 0.7 and cn["guard"]["flagged"] is True
    assert cn["guard"]["acted"] == {"direction": 4, "norm": 2} and cn["guard"]["refused"] == 3
    assert cn["quarantined"] is False and us["quarantined"] is True
    assert us["guard"]["suspicion"] == 0.0 and us["guard"]["flagged"] is False
    text = fedq(url, ns, "status").stdout
    assert "FLAGGED by the guard (suspicion): cn (0.70)" in text
    assert "QUARANTINED (no train jobs, updates refused): us" in text
    cn_row = next(line for line in text.splitlines() if line.startswith("│ cn "))
    assert "FLAGGED" in cn_row and "direction 4" in cn_row  # the table wraps long cells

    report = fedq_json(url, ns, "audit")
    assert report["ok"], report["problems"]
    assert report["regions"]["cn"] == {
        "suspicion": 0.7,
        "flagged": True,
        "quarantined": False,
        "down_weighted": 1,
        "refused": {"direction": 1, "influence": 1, "suspected": 1, "quarantined": 0},
        "replays": 0,
    }
    assert report["regions"]["us"]["quarantined"] is True
    assert report["regions"]["us"]["refused"] == {
        "direction": 0,
        "influence": 0,
        "suspected": 0,
        "quarantined": 1,
    }
    text = fedq(url, ns, "audit")
    assert text.returncode == 0 and text.stdout.strip().endswith("audit: ok")
    assert (
        "cn: suspicion 0.700 (FLAGGED); refused: direction 1, influence 1, suspected 1, "
        "quarantined 0; "
        "down-weighted 1; replays 0" in text.stdout
    )
