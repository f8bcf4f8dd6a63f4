"""Regions on separate hosts over a WAN, on one machine: network namespaces and emulated links.

Every number fedq had measured was processes on one machine over loopback, with no latency;
the real links are China-EU and US-Middle East. This harness gives each region a network
namespace of its own ("its host") and a hub namespace that holds Redis (and by default the
aggregator and the coordinator: one data centre). Each region reaches the hub over a link of
its own with a round trip, a rate and a loss.

The link is emulated in user space, packet by packet, because this machine's kernel is built
without ``sch_netem`` (and without the fq qdisc that timestamp-based delay needs): a pair of TUN
devices per region, one in the region's namespace and one in the hub's, and one thread that
reads each IP packet from one end and writes it into the other after the link's serialisation
time (its rate, with a drop-tail queue) and half its round trip, or drops it (its loss, drawn
per packet). The kernels on both sides run real TCP over it: slow start after idle,
retransmissions and their timeouts are theirs, not a model of them. A partition black-holes a
region's link (every packet dropped, what is on the wire too, as a cut cable or a firewall
does: nothing tells the endpoints, they find out through their timeouts) and heals it. A LAN is
the same devices with no delay, rate or loss, so LAN and WAN runs pay the same forwarding cost.

The addresses come from 198.18.0.0/15, the block set aside for benchmarking network devices
(RFC 2544), and exist only inside the harness's own namespaces: the hub is 198.18.0.1, region i
198.18.0.(10 + i). Nothing is added to the host's own namespace; closing the devices and
deleting the namespaces removes everything. Needs root and ``ip`` (iproute2).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import random
import select
import shutil
import struct
import subprocess
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from shared.errors import FedqError

SUBNET = "198.18.0"  # inside the harness's namespaces only (RFC 2544's benchmarking block)
HUB_ADDRESS = f"{SUBNET}.1"
FIRST_REGION_HOST = 10
MTU = 1500
# a link's drop-tail queue in bytes (1,000 full-size packets, a common transmit queue length)
QUEUE_BYTES = 1000 * MTU

_TUNSETIFF = 0x400454CA
_IFF_TUN = 0x0001
_IFF_NO_PI = 0x1000
_CLONE_NEWNET = 0x40000000


class WanError(FedqError):
    """The host cannot make the namespaces or their links (not root, no iproute2, ...)."""


@dataclass(frozen=True)
class Link:
    """One region's link to the hub, the same both ways; the loss is drawn per packet in each
    direction."""

    rtt_ms: float
    rate_mbit: float
    loss_pct: float = 0.0

    def describe(self) -> str:
        return f"{self.rtt_ms:g} ms, {self.rate_mbit:g} Mbit/s, {self.loss_pct:g}% loss"


Profile = Mapping[str, Link | None]  # region -> its link (None: unshaped, a LAN)


def departure(now: float, size: int, free_at: float, link: Link) -> tuple[float, float] | None:
    """When a packet of ``size`` bytes arriving ``now`` leaves the far end, and when the link
    is free again: ``(due, free_at)``; None when the queue before it is full (drop-tail).

    The link sends one packet at a time at its rate (a packet waits for those before it), and
    every packet then spends half the round trip on the wire."""
    start = max(now, free_at)
    rate = link.rate_mbit * 1e6 / 8  # bytes per second
    if (start - now) * rate > QUEUE_BYTES:
        return None
    sent = start + size / rate
    return sent + link.rtt_ms / 2000, sent


@dataclass
class Direction:
    """One way of one region's link: a FIFO delay line from one TUN device to the other."""

    read_fd: int
    write_fd: int
    link: Link | None = None
    cut: bool = False
    free_at: float = 0.0
    pending: deque = field(default_factory=deque)  # (due, packet), due in order
    packets: int = 0
    lost: int = 0  # to the link's loss or a partition
    overflowed: int = 0  # to the full queue

    def take(self, packet: bytes, now: float, rng: random.Random) -> None:
        if self.cut:
            self.lost += 1
            return
        link = self.link
        if link is None:
            self.pending.append((now, packet))
            return
        if link.loss_pct and rng.random() * 100 < link.loss_pct:
            self.lost += 1
            return
        scheduled = departure(now, len(packet), self.free_at, link)
        if scheduled is None:
            self.overflowed += 1
            return
        due, self.free_at = scheduled
        self.pending.append((due, packet))


class Network:
    """The hub and one namespace per region with its emulated link: ``create``, then ``close``.

    ``prefix`` names every namespace it makes (``<prefix>-hub``, ``<prefix>-<region>``), so a
    run killed before its clean-up is cleaned up by the next one with the same prefix, and
    nothing else on the host is touched."""

    def __init__(self, regions: list[str] | tuple[str, ...], prefix: str = "fedqwan",
                 seed: int = 0) -> None:  # fmt: skip
        self.regions = list(regions)
        self.prefix = prefix
        self.hub = f"{prefix}-hub"
        self.directions: dict[str, tuple[Direction, Direction]] = {}  # region: (up, down)
        self._rng = random.Random(seed)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._home: int | None = None  # the caller's own namespace, to come back to
        self._fds: list[int] = []

    def namespace(self, region: str) -> str:
        return f"{self.prefix}-{region}"

    def address(self, region: str) -> str:
        i = self.regions.index(region)
        if i >= 240:
            raise WanError("at most 240 regions on the harness's /24")
        return f"{SUBNET}.{FIRST_REGION_HOST + i}"

    # --- making and removing ---

    def create(self) -> Network:
        check_host()
        self.remove_namespaces()  # what a killed run of the same prefix left
        try:
            self._home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
            _ip("netns", "add", self.hub)
            _ip("-n", self.hub, "link", "set", "lo", "up")
            _ip("-n", self.hub, "addr", "add", f"{HUB_ADDRESS}/32", "dev", "lo")
            for i, region in enumerate(self.regions):
                ns, here = self.namespace(region), self.address(region)
                _ip("netns", "add", ns)
                _ip("-n", ns, "link", "set", "lo", "up")
                region_fd = self._tun(ns, f"fqr{i}")
                hub_fd = self._tun(self.hub, f"fqh{i}")
                _ip("-n", ns, "addr", "add", f"{here}/32", "dev", f"fqr{i}")
                _ip("-n", ns, "route", "add", f"{HUB_ADDRESS}/32", "dev", f"fqr{i}")
                _ip("-n", self.hub, "route", "add", f"{here}/32", "dev", f"fqh{i}", "src",
                    HUB_ADDRESS)  # fmt: skip
                self.directions[region] = (Direction(region_fd, hub_fd),
                                           Direction(hub_fd, region_fd))  # fmt: skip
            self._thread = threading.Thread(target=self._forward, name="wan-links", daemon=True)
            self._thread.start()
        except BaseException:
            self.close()
            raise
        return self

    def _tun(self, ns: str, name: str) -> int:
        """A TUN device ``name`` in namespace ``ns``, open for this process (it lives as long
        as the descriptor does)."""
        _enter(f"/run/netns/{ns}")
        try:
            fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
            self._fds.append(fd)
            fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH", name.encode(), _IFF_TUN | _IFF_NO_PI))
        finally:
            self.leave()
        _ip("-n", ns, "link", "set", name, "mtu", str(MTU), "up")
        return fd

    def enter_hub(self) -> None:
        """Move the calling thread into the hub: what it starts from then on runs there (the
        driver's Redis, aggregator and coordinator)."""
        _enter(f"/run/netns/{self.hub}")

    def leave(self) -> None:
        if self._home is not None:
            _enter_fd(self._home)

    def close(self) -> None:
        """Stop forwarding, close the devices, delete the namespaces. The caller stops the
        processes it started in them first (a process inside keeps its namespace alive)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()
        self.leave()
        if self._home is not None:
            os.close(self._home)
            self._home = None
        self.remove_namespaces()

    def remove_namespaces(self) -> None:
        for name in namespaces():
            if name == self.hub or name.startswith(f"{self.prefix}-"):
                _ip("netns", "delete", name, check=False)

    def __enter__(self) -> Network:
        return self.create()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- shaping ---

    def shape(self, profile: Profile) -> None:
        """Give each region's link its profile (a region it does not name stays as it is)."""
        for region, link in profile.items():
            if region not in self.directions:
                raise WanError(f"profile names unknown region {region!r}")
            for way in self.directions[region]:
                way.link = link

    def partition(self, region: str) -> None:
        """Black-hole ``region``'s link both ways, with what is on the wire."""
        for way in self.directions[region]:
            way.cut = True
            way.pending.clear()

    def heal(self, region: str) -> None:
        for way in self.directions[region]:
            way.cut = False

    def counters(self) -> dict[str, dict[str, int]]:
        out = {}
        for region, (up, down) in self.directions.items():
            out[region] = {"packets": up.packets + down.packets, "lost": up.lost + down.lost,
                           "overflowed": up.overflowed + down.overflowed}  # fmt: skip
        return out

    def tcp_slow_start_after_idle(self, on: bool) -> None:
        """Linux's default (on) restarts a connection's window from 10 packets after an idle
        round trip, so each model transfer of a job pays slow start again; off, the window a
        connection grew is kept (every namespace of the network: both ends of each link)."""
        for ns in (self.hub, *map(self.namespace, self.regions)):
            _ip("netns", "exec", ns, "sysctl", "-qw",
                f"net.ipv4.tcp_slow_start_after_idle={int(on)}")  # fmt: skip

    # --- running things there ---

    def exec_prefix(self, region: str | None) -> list[str]:
        """The command prefix that runs a process on ``region``'s host (None: the hub)."""
        ns = self.hub if region is None else self.namespace(region)
        return ["ip", "netns", "exec", ns]

    def _forward(self) -> None:
        ways = [w for pair in self.directions.values() for w in pair]
        by_fd = {w.read_fd: w for w in ways}
        poller = select.poll()
        for fd in by_fd:
            poller.register(fd, select.POLLIN)
        while not self._stop.is_set():
            now = time.monotonic()
            heads = [w.pending[0][0] for w in ways if w.pending]
            wait = min(heads, default=now + 0.05) - now
            for fd, _ in poller.poll(max(0, min(wait, 0.05)) * 1000):
                way = by_fd[fd]
                arrived = time.monotonic()
                for _ in range(256):
                    try:
                        packet = os.read(fd, MTU + 64)
                    except (BlockingIOError, InterruptedError):
                        break
                    way.packets += 1
                    way.take(packet, arrived, self._rng)
            now = time.monotonic()
            for way in ways:
                while way.pending and way.pending[0][0] <= now:
                    _, packet = way.pending.popleft()
                    with contextlib.suppress(OSError):  # a device gone at shutdown
                        os.write(way.write_fd, packet)


def namespaces() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    return [line.split()[0] for line in out.stdout.splitlines() if line.strip()]


def check_host() -> None:
    """One line naming what is missing, before anything is made."""
    if os.geteuid() != 0:
        raise WanError("the WAN harness makes network namespaces: run it as root")
    if shutil.which("ip") is None:
        raise WanError("no 'ip' on PATH: install iproute2 (apt-get install iproute2)")
    if not os.path.exists("/dev/net/tun"):
        raise WanError("no /dev/net/tun: the kernel needs TUN devices (CONFIG_TUN)")


_libc = ctypes.CDLL(None, use_errno=True)


def _enter(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        _enter_fd(fd)
    finally:
        os.close(fd)


def _enter_fd(fd: int) -> None:
    """setns(2) for the calling thread (Python 3.11 has no os.setns)."""
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise WanError(f"setns: {os.strerror(err)}")


def _ip(*args: str, check: bool = True) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        problem = (done.stderr or done.stdout).strip().splitlines()
        raise WanError(f"ip {' '.join(args)}: {problem[-1] if problem else done.returncode}")
