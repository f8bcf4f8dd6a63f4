"""Shared fixtures: a small generated data set, made once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.task import generate


@pytest.fixture(scope="session")
def small_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("data") / "small"
    generate.write(generate.generate(seed=3, scale="small"), out)
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
