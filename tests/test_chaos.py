"""The fault injector: a seeded schedule, kills that are reaped, restarts that happen."""

from __future__ import annotations

import subprocess
import sys
import time

from harness.chaos import Chaos
from harness.run import Role

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


def _role(name: str, kind: str) -> Role:
    return Role(name, kind, [], subprocess.Popen(SLEEPER))


def test_the_schedule_is_drawn_from_the_seed_within_5_to_85_percent_of_the_target():
    a, b, c = Chaos(20, 1, 1000), Chaos(20, 1, 1000), Chaos(20, 2, 1000)
    assert a.schedule == b.schedule != c.schedule
    assert len(a.schedule) == 20
    assert all(50 <= f.at_version <= 850 for f in a.schedule)
    assert [f.at_version for f in a.schedule] == sorted(f.at_version for f in a.schedule)
    assert {f.kind for f in a.schedule} <= {"worker", "aggregator", "coordinator"}


def test_kills_are_reaped_and_every_victim_is_back_once_the_target_is_reached():
    roles = [_role("aggregator", "aggregator"), _role("coordinator", "coordinator"),
             _role("worker-cn-0", "worker"), _role("worker-us-0", "worker")]  # fmt: skip
    first = list(roles)
    chaos = Chaos(6, 3, 100)
    try:
        chaos(roles, lambda r: _role(r.name, r.kind), 100, False)  # every fault is due
        killed = [r for r in first if r not in roles]
        assert killed and all(r.process.returncode == -9 for r in killed)
        # a fault whose kind is all down waits for a restart (0-3 s later)
        deadline = time.monotonic() + 20
        while chaos.schedule and time.monotonic() < deadline:
            time.sleep(0.1)
            chaos(roles, lambda r: _role(r.name, r.kind), 100, False)
        assert len(chaos.injected) == 6
        chaos(roles, lambda r: _role(r.name, r.kind), 100, True)  # target reached
        assert sorted(r.name for r in roles) == sorted(r.name for r in first)
        assert all(r.process.poll() is None for r in roles)
        assert sum(chaos.by_kind().values()) == 6
    finally:
        for r in roles + first:
            if r.process.poll() is None:
                r.process.kill()
            r.process.wait()
