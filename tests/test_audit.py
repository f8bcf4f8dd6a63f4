"""The exactly-once audit finds what it is there to find (against a real Redis)."""

from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pytest
import redis
from redis.exceptions import NoPermissionError

from coordinator import service
from coordinator.aggregator import Aggregator
from harness.audit import audit
from shared import streams
from shared.acl import Users
from shared.auth import ACL_FILE, init_keys, init_users, load_keys, load_password, sign
from shared.federation import Federation, create
from shared.jobs import JobSpec, new_update_id, record_issued
from shared.keys import Keys
from shared.redis_server import RedisServer
from shared.settings import FederationSettings
from tasks.toy import TASK as TOY
from tests.fleet import FEDQ, Fleet, wait_until
from tests.updates import issue_train, update_payload

K = Keys("audit")


def _federation(r) -> None:
    create(r, K, Federation(FederationSettings(task="toy"), ("cn", "us"), "d", "test",
                            TOY.metrics))  # fmt: skip


def _job(r, name: str, region: str = "cn") -> str:
    job_id = f"{region}-{name}-0123456789abcdef"
    record_issued(r, K, job_id, JobSpec(kind="train", region=region))
    return job_id


def _apply(r, version: int, *ids: str) -> None:
    r.xadd(K.applies, {"version": version, "updates": json.dumps([{"id": i} for i in ids])})
    r.sadd(K.applied, *ids)
    r.set(K.version, version)


def _publish(r, update_id: str, copies: int = 1) -> None:
    r.hincrby(K.published(update_id.partition("-")[0]), update_id, copies)


def _reject(r, update_id: str, reason: str) -> None:
    r.hset(K.rejected, update_id, reason)
    r.xadd(K.rejections, {"id": update_id, "reason": reason})


def test_a_clean_history_passes(r):
    _federation(r)
    a, b, c, d = (f"{_job(r, n)}.0000000{i}" for i, n in enumerate("abcd"))
    retried = f"{_job(r, 'e', 'us')}.00000001"  # a first, stale attempt; the re-run applied
    rerun = retried[:-1] + "2"
    for i in (a, b, c, d, retried, rerun):
        _publish(r, i)
    _publish(r, a)  # a second copy, dropped as a duplicate
    r.hincrby(K.duplicates, a, 1)
    _apply(r, 1, a, b)
    _apply(r, 2, c, rerun)
    _reject(r, d, "stale")
    _reject(r, retried, "stale")
    r.xadd(
        K.rejections,
        {
            "id": "entry:audit:updates:cn 1-0",
            "reason": "unknown_job",
            "claimed": f"{_job(r, 'f', 'us')}.00000000",
        },
    )  # a forgery, not counted
    _publish(r, "cn-made-up.0")  # a hostile worker's count under an id nobody issued
    result = audit(r, K)
    assert result.ok, result.problems
    assert (result.applied, result.rejected, result.duplicates) == (4, 2, 1)
    assert (result.jobs_applied, result.forged_or_broken, result.unknown_claims) == (4, 1, 1)


def test_a_lost_update_a_double_apply_and_a_gap_are_each_found(r):
    _federation(r)
    a, b, lost = (f"{_job(r, n)}.00000000" for n in ("a", "b", "lost"))
    for i in (a, b, lost):
        _publish(r, i)
    _apply(r, 1, a)
    _apply(r, 2, a, b)
    r.set(K.version, 3)
    problems = " | ".join(audit(r, K).problems)
    assert f"neither applied nor rejected: {lost}" in problems
    assert f"applied more than once: {a}" in problems
    assert "version counter 3" in problems


def test_unaccounted_copies_two_attempts_applied_and_unissued_jobs_are_found(r):
    _federation(r)
    a, b = (f"{_job(r, n)}.00000000" for n in ("a", "b"))
    twin = a[:-1] + "1"  # another attempt of a's job
    _publish(r, a, copies=2)  # two copies, but no duplicate recorded
    _publish(r, b)
    _publish(r, twin)
    stranger = "us-t7-ffffffffffffffff.00000000"  # applied, never issued
    _apply(r, 1, a, b, twin, stranger)
    _reject(r, b, "shape")
    problems = " | ".join(audit(r, K).problems)
    assert f"copies not accounted for: {a}" in problems
    assert f"both applied and rejected: {b}" in problems
    assert f"more than one applied attempt: {a.rpartition('.')[0]}" in problems
    assert f"never issued: {stranger}" in problems


# --- replays and a running federation, against real processes and a real ACL ---

REPLAY = Keys("replay")


@pytest.fixture
def acl_server(tmp_path, toy_data):
    """The embedded server run with the namespace's ACL users (a region's user may append
    to its own update stream and count its own copies, nothing more); yields it and the key
    directory (secrets and passwords)."""
    regions = TOY.describe(toy_data).regions
    keys_dir = tmp_path / "keys"
    init_keys(keys_dir, regions)
    init_users(keys_dir, REPLAY.namespace, regions)
    admin = Users(REPLAY.namespace).admin
    server = RedisServer(
        tmp_path / "redis",
        acl_file=keys_dir / ACL_FILE,
        admin=(admin, load_password(keys_dir, admin)),
    ).start()
    yield server, keys_dir
    server.stop()


def _cli(url: str, keys_dir, *args: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "FEDQ_REDIS_URL": url,
        "FEDQ_NAMESPACE": REPLAY.namespace,
        "FEDQ_KEYS": str(keys_dir),
    }
    return subprocess.run([*FEDQ, *args], env=env, capture_output=True, text=True, timeout=120)


def test_a_regions_replays_of_its_settled_updates_are_counted_as_its_own_and_the_audit_passes(
    acl_server, toy_data
):
    """cn's user re-sends the exact fields of an applied signed update (twice) and of one
    rejected for its norm: each copy is dropped or rejected again, nothing is applied twice,
    the audit passes and counts three replays, all cn's."""
    server, keys_dir = acl_server
    admin = server.client()
    settings = FederationSettings(task="toy", signed_updates=True, target_versions=0, eval_every=0)
    fed = service.initialise(admin, REPLAY, toy_data, settings)
    secrets = load_keys(keys_dir, fed.regions)
    agg = Aggregator(admin, REPLAY, fed, region_keys=secrets)
    user = Users(REPLAY.namespace).worker("cn")
    cn = redis.Redis.from_url(server.url, username=user, password=load_password(keys_dir, user))

    def send(name: str, value: float) -> dict:
        """One update as a cn worker publishes it: XADD and its count in one MULTI."""
        update_id = new_update_id(issue_train(admin, REPLAY, "cn", name))
        delta = {k: np.full(v.shape, value, np.float32) for k, v in agg.weights.items()}
        payload = update_payload(update_id, "cn", 0, delta, data_size=100)
        fields = streams.update_entry(payload, update_id, "cn", sign(secrets["cn"], payload))
        with cn.pipeline(transaction=True) as pipe:
            pipe.xadd(REPLAY.update_stream("cn"), fields)
            pipe.hincrby(REPLAY.published("cn"), update_id, 1)
            pipe.execute()
        return fields

    good, bad = send("good", 1e-4), send("bad", 1e3)  # bad: over max_update_norm
    while agg.step(block_ms=50):
        pass
    good_id, bad_id = good["id"], bad["id"]
    assert admin.smembers(REPLAY.applied) == {good_id.encode()}
    assert admin.hget(REPLAY.rejected, bad_id) == b"norm"
    assert _cli(server.url, keys_dir, "audit").returncode == 0
    for fields in (good, good, bad):  # the replays, as cn's own user sends them
        cn.xadd(REPLAY.update_stream("cn"), fields)
    with pytest.raises(NoPermissionError):  # another region's stream is not cn's to write
        cn.xadd(REPLAY.update_stream("us"), good)
    while agg.step(block_ms=50):
        pass
    assert agg.version == 1 and admin.smembers(REPLAY.applied) == {good_id.encode()}
    assert int(admin.hget(REPLAY.duplicates, good_id)) == 2

    out = _cli(server.url, keys_dir, "audit", "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout)
    assert report["ok"] and report["replays"] == 3
    assert {r: v["replays"] for r, v in report["regions"].items() if v["replays"]} == {"cn": 3}
    # the norm-rejected update's copy is dropped as a replay too (never judged again)
    assert (report["applied"], report["rejected"], report["duplicates"]) == (1, 1, 3)
    text = _cli(server.url, keys_dir, "audit").stdout
    assert "cn: suspicion" in text and "replays 3" in text and text.strip().endswith("audit: ok")
    # status counts the copies dropped as duplicates beyond the published count: every copy
    # of a settled update is one now, the rejected one's too
    out = _cli(server.url, keys_dir, "status", "--json")
    assert out.returncode == 0, out.stderr
    status = json.loads(out.stdout)
    assert {r: v["replays"] for r, v in status["regions"].items() if v["replays"]} == {"cn": 3}


def test_an_audit_of_a_running_federation_passes(redis_server, toy_data):
    """Audits taken while versions are being made: each sees one moment of the federation (an
    audit that read the applies stream before a commit and the counter after it, or the applied
    set before and the update streams after, reported problems that were not there)."""
    keys = Keys("auditlive")
    r = redis.Redis.from_url(redis_server.url)
    for key in r.scan_iter(f"{keys.namespace}:*"):
        r.delete(key)
    settings = FederationSettings(
        task="toy", inflight_per_region=2, target_versions=0, eval_every=0
    )
    service.initialise(r, keys, toy_data, settings)
    version = lambda: int(r.get(keys.version) or 0)  # noqa: E731
    with Fleet(redis_server.url, keys.namespace, toy_data) as fleet:
        fleet.aggregator()
        fleet.coordinator()
        fleet.worker("cn")
        fleet.worker("us")
        assert wait_until(lambda: version() >= 5, 60)
        first = version()
        results = []

        def enough() -> bool:
            results.append(audit(r, keys))
            return len(results) >= 30 and results[-1].versions >= first + 30

        assert wait_until(enough, 120, poll=0)
        assert [p for a in results for p in a.problems] == []
        assert len({a.versions for a in results}) > 10  # they saw it at work
        assert any(a.in_stream for a in results)  # and updates in flight
