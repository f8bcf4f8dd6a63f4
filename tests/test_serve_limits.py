"""``fedq serve`` bounds what a client makes it read before a request: a head too large is
refused at once, a head too slow (or none at all) is dropped after ``HEAD_TIMEOUT``; normal
requests, kept-alive ones too, are served as before. Raw sockets against the real service."""

from __future__ import annotations

import os
import select
import socket
import subprocess
import time
from urllib.parse import urlsplit

import httpx
import pytest
import redis

from coordinator import service
from harness.serving import start_service
from serving.guard import HEAD_TIMEOUT, MAX_HEAD_BYTES
from shared.keys import Keys
from shared.processes import stop_processes
from shared.settings import FederationSettings
from tests.fleet import FEDQ

BOUND = 30.0  # generous: what is checked is that it happens, not how fast


@pytest.fixture(scope="module")
def url(small_data, redis_server, tmp_path_factory):
    """cn's service of an exported model (no Redis behind it): its base URL."""
    ns = "limits"
    r = redis.Redis.from_url(redis_server.url)
    for key in r.scan_iter(f"{ns}:*"):
        r.delete(key)
    service.initialise(r, Keys(ns), small_data, FederationSettings(eval_every=0))
    tmp = tmp_path_factory.mktemp("limits")
    env = {**os.environ, "FEDQ_REDIS_URL": redis_server.url, "FEDQ_NAMESPACE": ns}
    subprocess.run([*FEDQ, "export", "--out", str(tmp / "model.npz")], env=env, check=True,
                   capture_output=True, timeout=120)  # fmt: skip
    args = ["--region", "cn", "--data", str(small_data), "--model", str(tmp / "model.npz")]
    proc, base = start_service(args, {**env, "FEDQ_REDIS_URL": "redis://127.0.0.1:1/0"},
                               tmp / "serve.log")  # fmt: skip
    try:
        yield base
    finally:
        stop_processes([proc])


def _connect(base: str) -> socket.socket:
    parts = urlsplit(base)
    return socket.create_connection((parts.hostname, parts.port), timeout=BOUND)


def _answer(sock: socket.socket) -> bytes:
    """What the service sent before it closed (b"" if it reset the connection)."""
    out = b""
    try:
        while chunk := sock.recv(65536):
            out += chunk
    except ConnectionResetError:
        pass
    return out


def _closed(sock: socket.socket) -> bool:
    """The service closed its end (its answer, if any, is read and dropped)."""
    if not select.select([sock], [], [], 0)[0]:
        return False
    try:
        while chunk := sock.recv(65536):
            if not select.select([sock], [], [], 0.05)[0]:
                return False
            del chunk
    except ConnectionResetError:
        pass
    return True


def test_a_normal_request_and_a_kept_alive_one_are_served(url):
    with httpx.Client(timeout=BOUND) as client:
        for _ in range(3):  # one connection, three requests
            got = client.post(url + "/recommend", json={"recent_items": [3, 1, 4], "k": 5},
                              headers={"x-padding": "a" * (MAX_HEAD_BYTES // 2)})  # fmt: skip
            assert got.status_code == 200, got.text
            assert len(got.json()["items"]) == 5
    # a body larger than the head's bound is no head: the request is refused by its own rules
    big = httpx.post(url + "/recommend", content=b"[" + b"1," * MAX_HEAD_BYTES + b"1]",
                     headers={"content-type": "application/json"}, timeout=BOUND)  # fmt: skip
    assert big.status_code != 431 and big.status_code < 500, big.text


def test_a_1_mb_header_is_refused_at_once_and_the_service_goes_on(url):
    sock = _connect(url)
    started = time.monotonic()
    try:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 1024 * 1024)
    except (BrokenPipeError, ConnectionResetError):
        pass  # refused while it was still sending: what is wanted
    answer = _answer(sock)
    sock.close()
    assert time.monotonic() - started < BOUND
    assert answer == b"" or answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert httpx.get(url + "/healthz", timeout=BOUND).status_code == 200


def test_slow_header_clients_and_silent_ones_are_dropped(url):
    silent = [_connect(url) for _ in range(20)]
    slow = _connect(url)
    slow.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-slow: ")
    started = time.monotonic()
    dropped = False
    while time.monotonic() - started < BOUND and not dropped:
        try:
            slow.sendall(b"a")  # one header byte a second
        except (BrokenPipeError, ConnectionResetError):
            dropped = True
            break
        dropped = _closed(slow)
        time.sleep(1.0)
    elapsed = time.monotonic() - started
    assert dropped, f"a slow-header client was still connected after {elapsed:.0f}s"
    assert elapsed >= HEAD_TIMEOUT - 2  # dropped by the head's timer, not at once
    deadline = time.monotonic() + BOUND
    while silent and time.monotonic() < deadline:
        for sock in [s for s in silent if _closed(s)]:
            sock.close()
            silent.remove(sock)
        time.sleep(0.5)
    assert not silent, f"{len(silent)} silent connections still open"
    assert httpx.get(url + "/healthz", timeout=BOUND).status_code == 200
