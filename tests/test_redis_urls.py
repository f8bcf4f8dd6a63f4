"""Password and ``rediss://`` (TLS) URLs work in every command; they never show a password."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from shared.redis_server import RedisServer, free_port
from tests.fleet import FEDQ
from tests.test_inspect import _first_user

PASSWORD = "pw-Zq81-never-printed"
INSPECT = ("status", "queues", "workers", "jobs", "updates", "rejections", "models")


def fedq(url: str, namespace: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "FEDQ_REDIS_URL": url, "FEDQ_NAMESPACE": namespace}
    env.pop("FEDQ_KEYS", None)
    return subprocess.run([*FEDQ, *args], env=env, capture_output=True, text=True, timeout=600)


def _every_command(url: str, namespace: str, data, tmp_path) -> list[subprocess.CompletedProcess]:
    """A whole run (coordinator, aggregator, workers) and every other command, on ``url``."""
    out_dir = str(tmp_path / "run")
    run = fedq(url, namespace, "run", "--data", str(data), "--redis-url", url, "--namespace",
               namespace, "--target-versions", "6", "--eval-every", "6",
               "--workers-per-region", "1", "--no-baselines", "--out", out_dir)  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["updates"]["applied"] == report["versions"] >= 6
    done = [run]
    for command in INSPECT:
        out = fedq(url, namespace, command, "--json")
        assert out.returncode == 0, (command, out.stderr)
        json.loads(out.stdout)
        done.append(out)
    user = str(_first_user(data, "cn"))
    for args in (["export", "--out", str(tmp_path / "m.pt")], ["requeue"],
                 ["recommend", "--data", str(data), "--region", "cn", "--user", user]):  # fmt: skip
        out = fedq(url, namespace, *args)
        assert out.returncode == 0, (args, out.stderr)
        done.append(out)
    return done


def test_every_command_over_tls_with_a_password(redis7_binary, tls_files, small_data, tmp_path):
    server = RedisServer(tmp_path / "redis", password=PASSWORD, tls=tls_files,
                         binary=redis7_binary).start()  # fmt: skip
    try:
        url = server.url
        assert url.startswith("rediss://") and "ssl_ca_certs=" in url
        outputs = _every_command(url, "tls", small_data, tmp_path)
        assert all(PASSWORD not in o.stdout + o.stderr for o in outputs)
        plain = f"redis://:{PASSWORD}@127.0.0.1:{server.port}/0"  # the TLS port, without TLS
        unverified = url.split("?")[0]  # TLS, but without the CA that signed the server
        for bad in (plain, unverified):
            out = fedq(bad, "tls", "status")
            lines = out.stderr.strip().splitlines()
            assert out.returncode == 1 and len(lines) == 1, out.stderr
            assert lines[0].startswith("Error: cannot reach Redis at redis") and "***@" in lines[0]
            assert PASSWORD not in out.stderr
    finally:
        server.stop()


def test_every_command_with_a_password_on_the_embedded_binary(small_data, tmp_path):
    server = RedisServer(tmp_path / "redis", password=PASSWORD).start()  # the embedded binary
    try:
        outputs = _every_command(server.url, "pw", small_data, tmp_path)
        assert all(PASSWORD not in o.stdout + o.stderr for o in outputs)
        wrong = f"redis://:not-the-password@127.0.0.1:{server.port}/0"
        out = fedq(wrong, "pw", "status")
        assert out.returncode == 1 and len(out.stderr.strip().splitlines()) == 1
        assert "refused the credentials" in out.stderr and "not-the-password" not in out.stderr
        worker = fedq(wrong, "pw", "worker", "--region", "cn", "--data", str(small_data),
                      "--wait", "0")  # fmt: skip
        assert worker.returncode == 1 and "refused the credentials" in worker.stderr
    finally:
        server.stop()


@pytest.mark.parametrize("scheme", ["redis", "rediss"])
def test_no_server_is_one_line_naming_the_url_without_its_password(scheme):
    url = f"{scheme}://user:{PASSWORD}@127.0.0.1:{free_port()}/0"
    out = fedq(url, "x", "queues")
    assert out.returncode == 1 and out.stderr.strip().splitlines() == [
        line for line in out.stderr.strip().splitlines() if line.startswith("Error: cannot reach")
    ]
    assert PASSWORD not in out.stderr and f"{scheme}://***@127.0.0.1" in out.stderr


def test_the_embedded_server_runs_in_a_directory_with_spaces_and_quotes(tmp_path):
    server = RedisServer(tmp_path / 'run dir "one"' / "redis").start()
    try:
        assert server.client().ping()
        assert (tmp_path / 'run dir "one"' / "redis" / "redis.log").exists()
    finally:
        server.stop()
