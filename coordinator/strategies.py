"""Aggregation strategies: the state transitions of each mode, on decoded updates.

A strategy owns what the mode remembers (FedBuff's buffer, FedAvg's round) and decides, for each
update offered, whether it makes a new version now, waits, or is rejected and why. The math is
``shared.aggregation``'s; Redis, clocks and acknowledgements are the aggregator's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shared import aggregation as agg
from shared import robust
from shared.codec import RejectReason, Update, Weights
from shared.settings import FederationSettings

BaseLookup = Callable[[int], Weights | None]


@dataclass(frozen=True)
class Pending:
    entry_id: str
    update: Update
    weight: float = 1.0  # the guard's factor on its weight in the combination (guard.py)
    guard: str = ""  # what the guard did to it, if anything (recorded with the applied update)

    @property
    def update_id(self) -> str:
        return self.update.header.update_id


@dataclass
class Outcome:
    new_weights: Weights | None = None
    applied: list[Pending] = field(default_factory=list)
    rejected: list[tuple[Pending, RejectReason, str]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    shares: dict[str, float] = field(default_factory=dict)  # region -> its part of the step
    guard: dict[str, str] = field(default_factory=dict)  # region -> guard record to persist

    def reject(self, pending: Pending, reason: RejectReason, detail: str) -> Outcome:
        self.rejected.append((pending, reason, detail))
        return self


@dataclass(frozen=True)
class Round:
    """Sync mode's current round, as the dispatcher published it."""

    number: int
    base_version: int
    deadline: float
    regions: tuple[str, ...]


class Strategy:
    """A mode's policy: the aggregator's loop asks it, never which mode it is."""

    name = "base"
    uses_rounds = False  # the loop reads the coordinator's open round for it (FedAvg)

    def __init__(self, settings: FederationSettings, started: float | None = None) -> None:
        self.settings = settings
        self.started = time.time() if started is None else started

    def elapsed(self) -> float:
        return time.time() - self.started

    def holds(self, job_id: str) -> bool:
        """Whether an update of the job is waiting inside the strategy (buffered, or in an open
        round): another attempt of the same job is then a duplicate."""
        return False

    def held(self) -> list[Pending]:
        return []

    def discard(self, update_id: str) -> None:
        """Forget a held update (it was rejected while being offered)."""

    def offer(self, pending: Pending, version: int, weights: Weights, base: BaseLookup) -> Outcome:
        raise NotImplementedError

    def tick(self, version: int, weights: Weights, now: float, round_: Round | None) -> Outcome:
        return Outcome()

    def finish(self, version: int, weights: Weights) -> Outcome:
        """The federation ended: what to do with updates still held (default: nothing)."""
        return Outcome()

    def _staleness(self, pending: Pending, version: int) -> tuple[int, Outcome | None]:
        s = version - pending.update.header.base_version
        if s < 0:
            detail = f"base version {pending.update.header.base_version} > model version {version}"
            return s, Outcome().reject(pending, RejectReason.FUTURE_BASE, detail)
        if s > self.settings.max_staleness:
            detail = f"staleness {s} > max {self.settings.max_staleness}"
            return s, Outcome().reject(pending, RejectReason.STALE, detail)
        return s, None


class FedAsync(Strategy):
    """Apply each update on arrival: ``w <- (1 - a) w + a (w_base + delta)``."""

    name = "async"

    def __init__(self, settings: FederationSettings, started: float | None = None) -> None:
        super().__init__(settings, started)
        self.fn = settings.staleness_function()
        self.mean_samples: float | None = None

    def offer(self, pending: Pending, version: int, weights: Weights, base: BaseLookup) -> Outcome:
        s, rejected = self._staleness(pending, version)
        if rejected:
            return rejected
        h = pending.update.header
        base_weights = weights if s == 0 else base(h.base_version)
        if base_weights is None:
            detail = f"base version {h.base_version} is no longer stored"
            return Outcome().reject(pending, RejectReason.STALE, detail)
        reference = None
        if self.settings.sample_weighting:
            m = self.mean_samples
            n = h.weight_samples
            self.mean_samples = n if m is None else 0.95 * m + 0.05 * n
            reference = self.mean_samples
        alpha = self.settings.alpha * self.settings.decay(version, self.elapsed())
        a = agg.mixing_weight(alpha, s, self.fn, h.weight_samples, reference) * pending.weight
        new = agg.fedasync_apply(weights, base_weights, pending.update.delta, a)
        info = {"staleness": s, "weight": round(a, 6)}
        return Outcome(new, [pending], info=info, shares={h.region: a})


class FedBuff(Strategy):
    """Buffer K updates, then ``w <- w + eta * mean(delta_k / sqrt(1 + s_k))``."""

    name = "buffered"

    def __init__(self, settings: FederationSettings, started: float | None = None) -> None:
        super().__init__(settings, started)
        self.buffer: list[Pending] = []

    def holds(self, job_id: str) -> bool:
        return any(p.update.header.job_id == job_id for p in self.buffer)

    def held(self) -> list[Pending]:
        return list(self.buffer)

    def discard(self, update_id: str) -> None:
        self.buffer = [p for p in self.buffer if p.update_id != update_id]

    def offer(self, pending: Pending, version: int, weights: Weights, base: BaseLookup) -> Outcome:
        _, rejected = self._staleness(pending, version)
        if rejected:
            return rejected
        self.buffer.append(pending)
        if len(self.buffer) < self.settings.buffer_size:
            return Outcome()
        return self._flush(version, weights)

    def finish(self, version: int, weights: Weights) -> Outcome:
        """Apply a partial buffer (when the federation ends, so nothing is left unapplied)."""
        return self._flush(version, weights) if self.buffer else Outcome()

    def _flush(self, version: int, weights: Weights) -> Outcome:
        group = list(self.buffer)
        staleness = [version - p.update.header.base_version for p in group]
        deltas: list[agg.Weights] = [p.update.delta for p in group]
        if self.settings.sample_weighting:
            n = np.array([p.update.header.weight_samples for p in group], dtype=np.float64)
            scale = n / n.mean()
            deltas = [{k: v * c for k, v in d.items()} for d, c in zip(deltas, scale, strict=True)]
        regions = [p.update.header.region for p in group]
        if self.settings.robust and len(set(regions)) > 1:
            pairs = zip(deltas, staleness, strict=True)
            scaled = [robust.scaled(d, agg.fedbuff_scale(s)) for d, s in pairs]
            step, shares = _robust_step(scaled, regions, [p.weight for p in group])
            lr = self.settings.server_lr
            new = {k: (weights[k] + lr * step[k]).astype(np.float32) for k in weights}
        else:
            weighted = [
                robust.scaled(d, p.weight) if p.weight != 1.0 else d
                for d, p in zip(deltas, group, strict=True)
            ]
            new = agg.fedbuff_apply(weights, weighted, staleness, self.settings.server_lr)
            shares = _shares(regions, [p.weight for p in group])
        self.buffer = []  # only once the math is done: an exception leaves the buffer whole
        info = {"staleness": max(staleness), "buffered": len(group)}
        return Outcome(new, group, info=info, shares=shares)


class FedAvg(Strategy):
    """Synchronous rounds: one update per region, averaged by samples when all are in."""

    name = "sync"
    uses_rounds = True

    def __init__(self, settings: FederationSettings, started: float | None = None) -> None:
        super().__init__(settings, started)
        self.round: Round | None = None
        self.collected: dict[str, Pending] = {}

    def holds(self, job_id: str) -> bool:
        return any(p.update.header.job_id == job_id for p in self.collected.values())

    def held(self) -> list[Pending]:
        return list(self.collected.values())

    def discard(self, update_id: str) -> None:
        self.collected = {r: p for r, p in self.collected.items() if p.update_id != update_id}

    def offer(self, pending: Pending, version: int, weights: Weights, base: BaseLookup) -> Outcome:
        h = pending.update.header
        current = self.round
        if current is None or h.round != current.number or h.base_version != current.base_version:
            where = "no open round" if current is None else f"round {current.number}"
            detail = f"update for round {h.round} (base {h.base_version}); {where} is open"
            return Outcome().reject(pending, RejectReason.LATE, detail)
        if h.base_version != version:
            return Outcome().reject(
                pending, RejectReason.LATE, f"round base {h.base_version} is old"
            )
        if h.region in self.collected:
            detail = f"region {h.region} already reported for round {current.number}"
            return Outcome().reject(pending, RejectReason.LATE, detail)
        self.collected[h.region] = pending
        if set(current.regions) <= set(self.collected):
            return self._close(weights, "complete")
        return Outcome()

    def tick(self, version: int, weights: Weights, now: float, round_: Round | None) -> Outcome:
        out = Outcome()
        if round_ is not None and (self.round is None or round_.number != self.round.number):
            # a new round: whatever the old one still held can no longer be applied
            for pending in self.collected.values():
                out.reject(pending, RejectReason.LATE, f"round {self.round.number} closed")
            self.round, self.collected = round_, {}
        if self.round and self.collected and now >= self.round.deadline:
            closed = self._close(weights, "deadline")
            closed.rejected.extend(out.rejected)
            return closed
        return out

    def _close(self, weights: Weights, why: str) -> Outcome:
        group = list(self.collected.values())
        self.collected = {}
        samples = [p.update.header.weight_samples * p.weight for p in group]
        regions = [p.update.header.region for p in group]
        if self.settings.robust and len(group) > 1:
            step, shares = _robust_step([p.update.delta for p in group], regions, samples)
            new = agg.add(weights, step)
        else:
            new = agg.fedavg([agg.add(weights, p.update.delta) for p in group], samples)
            shares = _shares(regions, samples)
        number = self.round.number if self.round else -1
        info = {"staleness": 0, "round": number, "closed": why}
        return Outcome(new, group, info=info, shares=shares)


def _shares(regions: list[str], weights: list[float]) -> dict[str, float]:
    total = sum(weights) or 1.0
    out: dict[str, float] = {}
    for region, w in zip(regions, weights, strict=True):
        out[region] = out.get(region, 0.0) + w / total
    return out


def _robust_step(
    deltas: list[Weights], regions: list[str], weights: list[float]
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """One point per region (the weighted mean of its deltas), combined by centered clipping
    with ``tau`` twice the points' median distance from their mean: regions that differ as
    honest non-IID regions do are averaged, one far from the rest moves the step by at most
    ``tau`` (its weight counts, its distance does not)."""
    points, mass, shares = [], [], {}
    for region in dict.fromkeys(regions):
        mine = [(d, w) for d, r, w in zip(deltas, regions, weights, strict=True) if r == region]
        total = sum(w for _, w in mine)
        points.append({k: sum(w * d[k] for d, w in mine) / total for k in mine[0][0]})
        mass.append(total)
        shares[region] = total / sum(weights)
    step, _ = robust.centered_clip(points, mass, tau_factor=2.0)
    return step, shares


def make_strategy(settings: FederationSettings, started: float | None = None) -> Strategy:
    kinds = {"async": FedAsync, "buffered": FedBuff, "sync": FedAvg}
    return kinds[settings.mode](settings, started)
