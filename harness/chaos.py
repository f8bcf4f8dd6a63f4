"""Fault injection for a running federation: SIGKILL roles at seeded moments, restart them.

``Chaos`` is ``run_federation``'s ``disturb`` hook. Its schedule is drawn from a seed before
the run: fault i fires when the model reaches a version drawn uniformly from 5-85% of the
target, kills (SIGKILL) one role of a drawn kind (worker 60%, aggregator 20%, coordinator 20%;
which worker is drawn too) and starts it again after a drawn delay of 0-3 s. Once the target is
reached it injects nothing more and restarts whatever is still down, so the final evaluation
has every region's workers.
"""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from harness.run import Role

KINDS = {"worker": 0.6, "aggregator": 0.2, "coordinator": 0.2}
MAX_RESTART_DELAY = 3.0


@dataclass(frozen=True)
class Fault:
    at_version: int
    kind: str
    restart_after: float
    pick: float  # which role of that kind (a fraction of the list)


@dataclass
class Injected:
    fault: Fault
    role: str
    version: int


@dataclass
class Chaos:
    faults: int
    seed: int
    target_versions: int
    kinds: dict[str, float] = field(default_factory=lambda: dict(KINDS))  # kind -> weight
    schedule: list[Fault] = field(default_factory=list)
    injected: list[Injected] = field(default_factory=list)
    _down: list[tuple[float, Role]] = field(default_factory=list)

    def __post_init__(self) -> None:
        rng = random.Random(self.seed)
        unknown = set(self.kinds) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown kinds {sorted(unknown)}: choose from {sorted(KINDS)}")
        kinds, weights = zip(*self.kinds.items(), strict=True)
        lo, hi = int(0.05 * self.target_versions), int(0.85 * self.target_versions)
        self.schedule = sorted(
            (Fault(rng.randint(max(lo, 1), max(hi, 1)), rng.choices(kinds, weights)[0],
                   rng.uniform(0, MAX_RESTART_DELAY), rng.random())
             for _ in range(self.faults)),
            key=lambda f: f.at_version,
        )  # fmt: skip

    def __call__(
        self, roles: list[Role], respawn: Callable[[Role], Role], version: int, done: bool
    ) -> None:
        now = time.monotonic()
        for due, role in list(self._down):
            if done or now >= due:
                roles.append(respawn(role))
                self._down.remove((due, role))
        while not done and self.schedule and version >= self.schedule[0].at_version:
            fault = self.schedule[0]
            candidates = [r for r in roles if r.kind == fault.kind]
            if not candidates:  # every role of that kind is down: the fault waits for one
                break
            self.schedule.pop(0)
            victim = candidates[int(fault.pick * len(candidates))]
            victim.process.send_signal(signal.SIGKILL)
            victim.process.wait()
            roles.remove(victim)
            self._down.append((now + fault.restart_after, victim))
            self.injected.append(Injected(fault, victim.name, version))

    def by_kind(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for fault in self.injected:
            kind = fault.role.split("-")[0]
            out[kind] = out.get(kind, 0) + 1
        return out
