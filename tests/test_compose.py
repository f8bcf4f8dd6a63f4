"""compose.yaml, checked without Docker: parsed, and every service's command run as a process."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from shared import settings
from shared.settings import FederationSettings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text())
SERVICES = COMPOSE["services"]
FEDQ_SERVICES = [name for name in SERVICES if name != "redis"]


def _defaults(volume: str) -> str:
    """A volume as compose reads it with no variable set: ``${VAR:-default}`` is ``default``."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", volume)


def _seconds(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600}
    return sum(int(n) * units[u] for n, u in re.findall(r"(\d+)([smh])", text))


def test_redis_keeps_data_and_reports_health():
    redis = SERVICES["redis"]
    assert "--appendonly" in redis["command"] and "yes" in redis["command"]
    # capped, and never evicting (an evicted key is a lost update or model): here and secured
    for command in (redis["command"], SECURE["redis"]["command"]):
        assert command[command.index("--maxmemory-policy") + 1] == "noeviction", command
        assert command[command.index("--maxmemory") + 1] == "2gb", command
    assert redis["healthcheck"]["test"][-1] == "ping"
    assert any(v.endswith(":/data") for v in redis["volumes"])


@pytest.mark.parametrize("name", FEDQ_SERVICES)
def test_every_command_is_a_fedq_command_that_runs(name):
    command = SERVICES[name]["command"]
    assert command[0] == "fedq"
    proc = subprocess.run([sys.executable, "-m", "cli", command[1], "--help"],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    # every option the service passes is one the command knows
    for option in (c for c in command[2:] if c.startswith("--")):
        assert option in proc.stdout, f"{name}: {option} is not an option of fedq {command[1]}"
    assert SERVICES[name]["environment"]["FEDQ_REDIS_URL"].startswith("redis://redis:")


@pytest.mark.parametrize("name", [n for n in FEDQ_SERVICES if n.startswith("worker-")])
def test_workers_scale_outlast_a_job_and_see_only_their_region(name):
    service = SERVICES[name]
    region = name.removeprefix("worker-")
    assert service["deploy"]["replicas"] >= 2
    assert _seconds(service["stop_grace_period"]) > FederationSettings().job_timeout
    assert service["command"][service["command"].index("--region") + 1] == region
    mounted = {_defaults(v).split(":")[0] for v in service["volumes"]}
    assert mounted == {"./data/meta.json", "./data/catalogue.csv", f"./data/{region}"}


def test_the_settings_file_documents_every_setting_at_its_default():
    import dataclasses
    import tomllib

    loaded = settings.load(ROOT / "fedq.toml")
    assert dataclasses.replace(loaded, task_settings={}) == settings.FederationSettings()
    raw = tomllib.loads((ROOT / "fedq.toml").read_text())
    fields = {f.name for f in dataclasses.fields(settings.FederationSettings)}
    assert fields - set(raw) == set()
    from tasks.recommender.task import DEFAULTS

    assert set(DEFAULTS) - set(raw["task_settings"]) == set()
    assert raw["task_settings"] == DEFAULTS


# --- compose.secure.yaml: ACL users and signed updates, each service given only its own keys ---

SECURE = yaml.safe_load((ROOT / "compose.secure.yaml").read_text())["services"]


def _mounts(service: dict) -> dict[str, str]:
    """Container path -> host path of a service's bind mounts."""
    pairs = (_defaults(v).split(":")[:2] for v in service.get("volumes", []))
    return {target: source for source, target in pairs}


def test_secure_override_gives_each_service_only_its_own_secrets():
    regions = [n.removeprefix("worker-") for n in FEDQ_SERVICES if n.startswith("worker-")]
    assert set(SECURE) <= set(SERVICES)
    secrets = {f"./keys/{r}.key" for r in regions}
    for name in FEDQ_SERVICES:
        service = SECURE[name]
        assert service["environment"]["FEDQ_KEYS"] == "/keys"
        mounted = set(_mounts(service).values())
        if name.startswith("worker-"):
            region = name.removeprefix("worker-")
            assert mounted == {
                f"./keys/{region}.key",
                f"./keys/users/fedq-worker-{region}.password",
            }
        elif name.startswith("service-"):  # logs in as its region's worker user, signs nothing
            region = name.removeprefix("service-")
            assert mounted == {f"./keys/users/fedq-worker-{region}.password"}, name
        else:
            assert mounted == secrets | {f"./keys/users/fedq-{name}.password"}, name
    assert "--aclfile" in SECURE["redis"]["command"]
    assert "--signed-updates" in SECURE["coordinator"]["command"]


def test_secure_override_runs_a_federation_with_only_the_mounted_files(
    redis7_binary, small_data, tmp_path
):
    """Every service's command as a process that finds in FEDQ_KEYS exactly what its mounts
    give it, against a Redis 7 started with the override's ACL file."""
    import os

    import redis as redis_py

    from shared.auth import load_password
    from shared.redis_server import RedisServer
    from tests.fleet import wait_until

    host = tmp_path / "host"
    made = subprocess.run([sys.executable, "-m", "cli", "keys", "init", "--data",
                           str(small_data), "--dir", str(host / "keys")],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert made.returncode == 0, made.stderr

    def given(name: str) -> Path:
        """A directory holding exactly the files the service's mounts put under /keys."""
        root = tmp_path / name
        for target, source in _mounts(SECURE[name]).items():
            if target.startswith("/keys/"):
                (root / target[len("/keys/") :]).parent.mkdir(parents=True, exist_ok=True)
                (root / target[len("/keys/") :]).write_bytes((host / source).read_bytes())
        return root

    redis_keys = given("redis")
    command = SECURE["redis"]["command"]
    acl = redis_keys / command[command.index("--aclfile") + 1].removeprefix("/keys/")
    admin = ("fedq-admin", load_password(redis_keys, "fedq-admin") or "")
    server = RedisServer(tmp_path / "redis", acl_file=acl, admin=admin,
                         binary=redis7_binary).start()  # fmt: skip
    procs = []
    try:
        for name in FEDQ_SERVICES:
            args = SECURE[name].get("command") or SERVICES[name]["command"]
            args = [str(small_data) if a == "/data" else a for a in args[1:]]
            args = [str(ROOT / "fedq.toml") if a == "/config/fedq.toml" else a for a in args]
            if name == "coordinator":
                args += ["--target-versions", "8", "--eval-every", "8"]
            if name.startswith("service-"):  # loopback and a free port here
                args = [{"0.0.0.0": "127.0.0.1", "8000": "0"}.get(a, a) for a in args]
            env = {**os.environ, "FEDQ_REDIS_URL": server.url, "FEDQ_KEYS": str(given(name)),
                   "FEDQ_NAMESPACE": "fedq"}  # fmt: skip
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "cli", *args],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        r = server.client()
        assert wait_until(lambda: r.get("fedq:done"), 300)
        assert r.acl_log() == []
        # one snapshot: after "done" the aggregator may still commit what was in flight
        with r.pipeline(transaction=True) as pipe:
            applied, version = pipe.scard("fedq:applied").get("fedq:model:version").execute()
        assert applied == int(version) >= 8
        assert r.hlen("fedq:rejected") == 0
        with pytest.raises(redis_py.AuthenticationError):
            redis_py.Redis.from_url(server.url).ping()
    finally:
        from shared.processes import stop_processes

        stop_processes(procs)
        server.stop()
