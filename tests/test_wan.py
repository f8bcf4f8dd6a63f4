"""The WAN harness: the link's arithmetic, and real namespaces with real TCP over the links.

The second part makes network namespaces (root only: CI runs as root), sends TCP between them
over the emulated link and checks the round trip, the rate, a partition and the clean-up.
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import threading

import pytest

from harness.wan import HUB_ADDRESS, QUEUE_BYTES, Direction, Link, Network, departure, namespaces


def test_departure_waits_for_the_link_then_the_wire() -> None:
    link = Link(rtt_ms=100, rate_mbit=8)  # 1 MB/s: a 1,000-byte packet takes 1 ms
    due, free_at = departure(10.0, 1000, 0.0, link)
    assert free_at == pytest.approx(10.001)
    assert due == pytest.approx(10.051)  # serialised, then half the round trip
    due2, free2 = departure(10.0, 1000, free_at, link)  # arrives behind the first one
    assert free2 == pytest.approx(10.002) and due2 == pytest.approx(10.052)


def test_departure_drops_when_the_queue_is_full() -> None:
    link = Link(rtt_ms=10, rate_mbit=8)
    backlog = QUEUE_BYTES / 1e6  # seconds of queue already waiting at 1 MB/s
    assert departure(0.0, 1000, backlog * 0.99, link) is not None
    assert departure(0.0, 1000, backlog * 1.01, link) is None


def test_direction_loses_about_its_share_and_a_cut_loses_everything() -> None:
    way = Direction(read_fd=-1, write_fd=-1, link=Link(10, 1000, loss_pct=5.0))
    rng = random.Random(1)
    for i in range(20_000):
        way.take(b"x" * 100, i * 1e-3, rng)
    assert 0.04 < way.lost / 20_000 < 0.06
    assert len(way.pending) == 20_000 - way.lost
    queued, lost = len(way.pending), way.lost
    way.cut = True
    for _ in range(100):
        way.take(b"x", 100.0, rng)
    assert way.lost == lost + 100 and len(way.pending) == queued


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")

_CLIENT = r"""
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))
t = time.monotonic(); s.sendall(b"p"); s.recv(1); rtt = time.monotonic() - t
t = time.monotonic(); s.sendall(b"y" * 200_000); s.recv(1); up = time.monotonic() - t
print(f"{rtt} {up}")
"""


def _serve(server: socket.socket) -> None:
    while True:
        try:
            conn, _ = server.accept()
        except OSError:
            return
        with conn:
            conn.recv(1)
            conn.sendall(b"p")
            got = 0
            while got < 200_000:
                data = conn.recv(65536)
                if not data:
                    break
                got += len(data)
            conn.sendall(b"k")


@needs_root
def test_network_carries_tcp_with_the_links_delay_and_rate_and_partitions() -> None:
    prefix = f"fqt{os.getpid() % 100000}"
    net = Network(["far", "near"], prefix=prefix).create()
    try:
        net.enter_hub()
        server = socket.socket()
        server.bind((HUB_ADDRESS, 0))
        server.listen()
        port = str(server.getsockname()[1])
        threading.Thread(target=_serve, args=(server,), daemon=True).start()

        def client(region: str, timeout: float = 20.0) -> subprocess.CompletedProcess:
            return subprocess.run(
                [*net.exec_prefix(region), sys.executable, "-c", _CLIENT, HUB_ADDRESS, port,
                 str(timeout)], capture_output=True, text=True, timeout=60,
            )  # fmt: skip

        net.shape({"far": Link(rtt_ms=200, rate_mbit=4), "near": None})
        far = client("far")
        assert far.returncode == 0, far.stderr
        rtt, up = map(float, far.stdout.split())
        assert 0.2 <= rtt < 0.3  # the link's round trip, not loopback's
        assert up >= 0.4  # 200 kB at 4 Mbit/s: at least 0.4 s of serialisation
        near = client("near")
        rtt_near, _ = map(float, near.stdout.split())
        assert rtt_near < 0.05  # the unshaped region is not slowed by the other's link
        net.partition("far")
        cut = client("far", timeout=2.0)
        assert cut.returncode != 0 and "timed out" in cut.stderr  # black-holed, silently
        net.heal("far")
        assert client("far").returncode == 0
        server.close()
    finally:
        net.close()
    assert not [n for n in namespaces() if n.startswith(prefix)]


@needs_root
def test_network_cleans_up_what_a_killed_run_left() -> None:
    prefix = f"fqk{os.getpid() % 100000}"
    subprocess.run(["ip", "netns", "add", f"{prefix}-hub"], check=True)
    try:
        net = Network(["a"], prefix=prefix).create()  # removes the leftover, then makes anew
        net.close()
    finally:
        subprocess.run(["ip", "netns", "delete", f"{prefix}-hub"], capture_output=True)
    assert not [n for n in namespaces() if n.startswith(prefix)]
