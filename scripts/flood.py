"""A region holding valid credentials floods its own update stream: what the federation feels.

    python scripts/flood.py [--seconds 20] [--mb 50] [--out runs/flood] [--maxmemory 2gb]

Runs one toy-task federation with ``fedq run``'s machinery (``harness.run.run_federation``: its
own capped Redis with ACL users, every role a process of its own), measures it for ``--seconds``
undisturbed, then for ``--seconds`` while a thread logged in as the ``cn`` workers' ACL user
XADDs ``--mb`` MB entries onto cn's update stream as fast as it can (a write Redis refuses at
its cap is counted and retried at once), then lets the federation finish. It prints Redis's
used_memory peak against its cap (and the AOF's growth), versions/s without and during the
flood and their ratio, each role's peak RSS without and during the flood, and what the
aggregator's janitor (coordinator/quota.py) deleted, by reason. Exits 1 if Redis went past its
cap, the rate fell below 0.8x, or a role went above 2x its usual memory.

Takes about 130 s with the defaults (the federation's start, 20 s, 20 s, the rest of its
100 s time budget, its end); ``--no-aof`` turns the run's AOF off, to tell the disk's share of
the slowdown from the rest.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import redis  # noqa: E402

from harness.run import Role, RunOptions, peak_rss_mb, run_federation  # noqa: E402
from shared.acl import Users  # noqa: E402
from shared.auth import load_password  # noqa: E402
from shared.keys import Keys  # noqa: E402
from shared.redis_server import parse_size  # noqa: E402
from shared.settings import FederationSettings  # noqa: E402
from tasks.toy import TASK as TOY  # noqa: E402

HOSTILE = "cn"
NAMESPACE = "fedq"
MB = 1024 * 1024


@dataclass
class Window:
    """What one phase saw: the versions at its ends and the peaks within it."""

    start: float = 0.0
    end: float = 0.0
    first: int = 0
    last: int = 0
    redis_peak: int = 0
    rss_peak: dict[str, float] = field(default_factory=dict)  # role kind -> MB

    @property
    def rate(self) -> float:
        return (self.last - self.first) / max(1e-9, self.end - self.start)


class Flood:
    """The measurement and the attack, driven by a sampler thread (every 0.1 s)."""

    def __init__(self, seconds: float, mb: int, out: Path, aof: bool = True) -> None:
        self.seconds, self.size, self.out, self.aof = seconds, mb * MB, out, aof
        self.windows = {"without": Window(), "flood": Window()}
        self.sent = 0
        self.refused = 0  # writes Redis refused at its cap
        self.roles: list[Role] = []
        self.redis_pid = 0
        self.stop = threading.Event()
        self.flooding = threading.Event()
        self.phases_done = threading.Event()
        self.cap = 0
        self.aof_before = self.aof_after = 0

    def attach(self, url: str, admin: redis.Redis) -> None:
        self.admin = admin
        if not self.aof:  # the diagnosis: what the flood costs without writing it to disk
            admin.config_set("appendonly", "no")
        self.cap = int(admin.config_get("maxmemory")["maxmemory"])
        self.redis_pid = int(admin.info("server")["process_id"])
        password = load_password(self.out / "keys", Users(NAMESPACE).worker(HOSTILE))
        self.hostile = redis.Redis.from_url(url, username=Users(NAMESPACE).worker(HOSTILE),
                                            password=password, socket_timeout=60)  # fmt: skip
        threading.Thread(target=self._sample, daemon=True).start()
        threading.Thread(target=self._flood, daemon=True).start()

    def disturb(self, roles: list[Role], _respawn, _version: int, _done: bool) -> None:
        self.roles = roles  # the sampler reads their pids

    def _sample(self) -> None:
        keys = Keys(NAMESPACE)
        started = None
        plan = ["without", "flood"]
        while not self.stop.is_set():
            try:
                version = int(self.admin.get(keys.version) or 0)
                used = int(self.admin.info("memory")["used_memory"])
            except redis.RedisError:
                time.sleep(0.1)
                continue
            now = time.monotonic()
            if started is None and version >= 20:  # every role up and working
                started = now + 2.0
            if started is not None and plan:
                i = 0 if now < started + self.seconds else 1
                if now >= started + 2 * self.seconds:
                    self._close(self.windows["flood"], now, version)
                    self.flooding.clear()
                    plan.clear()
                    self.phases_done.set()
                elif now >= started:
                    w = self.windows[plan[i]]
                    if not w.start:
                        if i == 1:
                            self._close(self.windows["without"], now, version)
                            self.aof_before = self._aof()
                            self.flooding.set()
                        w.start, w.first = now, version
                    w.redis_peak = max(w.redis_peak, used)
                    for kind, mb in self._rss().items():
                        w.rss_peak[kind] = max(w.rss_peak.get(kind, 0.0), mb)
            time.sleep(0.1)

    def _close(self, w: Window, now: float, version: int) -> None:
        w.end, w.last = now, version

    def _rss(self) -> dict[str, float]:
        out: dict[str, float] = {"redis": peak_rss_mb(self.redis_pid)}
        for role in list(self.roles):
            kind = role.kind if role.region != HOSTILE else f"{role.kind}-{HOSTILE}"
            out[kind] = max(out.get(kind, 0.0), peak_rss_mb(role.process.pid))
        return out

    def _aof(self) -> int:
        try:
            return int(self.admin.info("persistence").get("aof_current_size", 0))
        except redis.RedisError:
            return 0

    def _flood(self) -> None:
        stream = Keys(NAMESPACE).update_stream(HOSTILE)
        payload = b"\x00" * self.size
        self.flooding.wait()
        while self.flooding.is_set():
            try:
                self.hostile.xadd(stream, {"u": payload, "id": f"flood-{self.sent}"})
                self.sent += 1
            except redis.exceptions.OutOfMemoryError:
                self.refused += 1
            except redis.RedisError as exc:
                print(f"flood: {type(exc).__name__}: {exc}", file=sys.stderr)
                time.sleep(0.1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="of each phase")
    parser.add_argument("--mb", type=int, default=50, help="size of each flood entry")
    parser.add_argument("--out", type=Path, default=Path("runs/flood"))
    parser.add_argument("--maxmemory", default="2gb", help="the run's Redis cap")
    parser.add_argument(
        "--no-aof",
        action="store_true",
        help="turn the run's AOF off (what the flood costs besides the disk)",
    )
    args = parser.parse_args()
    data = args.out / "data"
    if not (data / "meta.json").exists():
        TOY.generate(data, seed=3)
    settings = FederationSettings(task="toy", target_versions=0, eval_every=0,
                                  time_budget=4 * args.seconds + 20)  # fmt: skip
    flood = Flood(args.seconds, args.mb, args.out / "run", aof=not args.no_aof)
    options = RunOptions(data, settings, workers_per_region=1, out_dir=args.out / "run", acl=True,
                         redis_maxmemory=parse_size(args.maxmemory))  # fmt: skip
    deleted: Counter[str] = Counter()

    def finished(connection: redis.Redis) -> None:
        flood.aof_after = flood._aof()
        for _, f in connection.xrange(Keys(NAMESPACE).rejections):
            if f.get(b"region") == HOSTILE.encode() and f[b"reason"] in (b"too_large", b"quota"):
                deleted[f[b"reason"].decode()] += 1

    try:
        report = run_federation(options, lambda m: None, lambda s: None, flood.disturb,
                                on_start=flood.attach, on_finish=finished)  # fmt: skip
    finally:
        flood.stop.set()
        flood.flooding.clear()
    without, during = flood.windows["without"], flood.windows["flood"]
    ratio = during.rate / max(1e-9, without.rate)
    peak = max(without.redis_peak, during.redis_peak)
    print(f"flood: {flood.sent} entries of {args.mb} MB XADDed by {HOSTILE}'s ACL user in "
          f"{during.end - during.start:.1f} s ({flood.refused} refused at the cap)")  # fmt: skip
    print(
        f"redis used_memory peak: {peak / MB:.0f} MB (without the flood "
        f"{without.redis_peak / MB:.0f} MB) against a cap of {flood.cap / MB:.0f} MB; "
        f"AOF grew {(flood.aof_after - flood.aof_before) / MB:.0f} MB from the flood's start"
    )
    print(
        f"versions/s: {without.rate:.1f} without, {during.rate:.1f} during the flood "
        f"(ratio {ratio:.2f}); {report['versions']} versions in {report['seconds']:.0f} s"
    )
    worst = 0.0
    for kind in sorted(set(without.rss_peak) | set(during.rss_peak)):
        usual, flooded = without.rss_peak.get(kind, 0.0), during.rss_peak.get(kind, 0.0)
        times = flooded / usual if usual else 0.0
        if kind != "redis":
            worst = max(worst, times)
        print(f"peak RSS {kind}: {usual:.0f} MB without, {flooded:.0f} MB during ({times:.2f}x)")
    print(f"deleted by the janitor (rejections naming {HOSTILE}): {dict(deleted)}; "
          f"applied {report['updates']['applied']}, rejected by reason "
          f"{report['updates']['rejected_by_reason']}")  # fmt: skip
    ok = peak <= flood.cap and ratio >= 0.8 and worst <= 2.0
    print("PASS" if ok else "FAIL", "(cap, rate >= 0.8x, roles <= 2x their usual memory)")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
