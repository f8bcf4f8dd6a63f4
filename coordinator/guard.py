"""The aggregator's guard: what a region with valid credentials is allowed to move.

Every protocol check (signature, issued job, shape, finiteness, the fixed norm bound) can pass
and an update still be poisoned: the negation of an honest delta, an honest delta scaled up,
a norm budget spent on a few parameters. The guard judges each such update against what the
federation has seen from its regions lately, with the pure checks of ``shared.robust``:

- **norm**: each tensor of the delta above ``robust_norm_factor`` x the median over regions of
  each region's median recent norm of that tensor is scaled down to that bound (tensors of at
  least ``MIN_TENSOR`` values), and then the whole delta likewise (a region, or a minority of
  colluding regions, that always sends long deltas cannot raise a bound; a norm budget spent
  on one small tensor (a few products' bias, say) is held to what honest regions move it by);
- **direction**: the delta's cosine with the recent global trajectory (an exponential average
  of the model's own steps), or its region's median recent cosine if that is higher, below
  ``direction_full`` lowers its weight, to zero at ``direction_floor`` (honest deltas of the
  recommender measure 0.2-0.4 at the median and rarely below -0.1); the band moves down when
  the other regions' own cosines are low, and stays below what chance gives a random direction
  in a model of few values (at an optimum honest updates are mostly noise);
- **influence**: a region whose share of the recently applied weight exceeds
  ``influence_slack`` x its data share has its weight scaled back to that cap.

Each check that acts is named in the verdict; the region's suspicion (an average of how much
the guard took from its updates) is kept per region, written to Redis (``Keys.guard``) for
``fedq status``, ``fedq audit`` and the metrics, and read back when an aggregator starts, so a
restart or a standby's take-over does not reset what the federation learned.
"""

from __future__ import annotations

import json
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from shared import robust
from shared.codec import RejectReason, Weights
from shared.settings import FederationSettings

HISTORY = 16  # recent updates per region the norm and direction figures are taken over
MIN_TENSOR = 64  # tensors with fewer values are bounded only as part of the whole delta
DIRECTION_MARGIN = 0.4  # how far below the other regions' median cosine the band may sit
CHANCE = 1.5  # the floor stays this many standard deviations of a random cosine below zero
INFLUENCE_WINDOW = 200  # applied updates the influence shares are measured over
TRAJECTORY_DECAY = 0.9  # the trajectory averages the model's last ~10 steps
SUSPICION_RATE = 0.1  # the suspicion is an exponential average over ~10 updates
FLAGGED = 0.5  # suspicion from which a region is shown as flagged
TRUSTED = 0.2  # suspicion below this costs a region nothing; above, its weight x (1 - it)


@dataclass(frozen=True)
class Verdict:
    """What the guard makes of one update: scale its delta, weigh it, or refuse it."""

    norm: float
    scale: float = 1.0  # the whole delta is multiplied by this (the norm check)
    weight: float = 1.0  # its weight in the combination is multiplied by this
    cosine: float = math.nan
    notes: tuple[tuple[str, str], ...] = ()  # (check, detail) for each check that acted
    tensor_scales: Mapping[str, float] = field(default_factory=dict)  # tensors scaled down
    kept: float = 1.0  # the delta's norm after the norm check, over its norm before
    judged: float = 1.0  # its weight from the direction check (speed is no evidence)

    @property
    def refused(self) -> bool:
        return self.weight <= 0.0

    @property
    def penalty(self) -> float:
        """How much of the update the norm and direction checks took away, 0..1 (not what the
        influence cap took, a fast region's, nor its region's suspicion, which would feed on
        itself)."""
        return 1.0 - max(0.0, min(1.0, self.kept * self.judged))

    def factors(self) -> dict[str, float]:
        """Tensor name -> what to multiply it by (tensors not named: ``scale``)."""
        return {k: f * self.scale for k, f in self.tensor_scales.items()}

    @property
    def reason(self) -> RejectReason:
        checks = [c for c, _ in self.notes]
        return RejectReason.INFLUENCE if checks == ["influence"] else RejectReason.DIRECTION

    def detail(self) -> str:
        return "; ".join(f"{check}: {text}" for check, text in self.notes)


@dataclass
class RegionRecord:
    """What the guard remembers of one region (persisted as JSON in ``Keys.guard``)."""

    norms: deque[float] = field(default_factory=lambda: deque(maxlen=HISTORY))
    cosines: deque[float] = field(default_factory=lambda: deque(maxlen=HISTORY))
    suspicion: float = 0.0
    judged: int = 0
    acted: dict[str, int] = field(default_factory=dict)  # check -> updates it acted on
    refused: int = 0
    tensors: dict[str, deque[float]] = field(default_factory=dict)  # tensor -> recent norms

    def to_json(self) -> str:
        return json.dumps(
            {
                "norms": [round(x, 6) for x in self.norms],
                "cosines": [round(x, 4) for x in self.cosines if math.isfinite(x)],
                "suspicion": round(self.suspicion, 4),
                "judged": self.judged,
                "acted": self.acted,
                "refused": self.refused,
                "tensors": {k: [round(x, 6) for x in v] for k, v in self.tensors.items()},
            }
        )

    @staticmethod
    def from_json(raw: str | bytes) -> RegionRecord:
        """A record as written by ``to_json``; anything else is an empty record."""
        try:
            d = json.loads(raw)
            return RegionRecord(
                deque((float(x) for x in d["norms"]), maxlen=HISTORY),
                deque((float(x) for x in d["cosines"]), maxlen=HISTORY),
                float(d["suspicion"]),
                int(d["judged"]),
                {str(k): int(v) for k, v in d["acted"].items()},
                int(d["refused"]),
                {
                    str(k): deque((float(x) for x in v), maxlen=HISTORY)
                    for k, v in d.get("tensors", {}).items()
                },
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            return RegionRecord()


class Guard:
    """Judges updates before the strategy sees them; learns from those applied."""

    def __init__(self, settings: FederationSettings, regions: tuple[str, ...]) -> None:
        self.s = settings
        self.regions = regions
        self.records = {r: RegionRecord() for r in regions}
        # each region's part of the model's recent steps (an exponential average, decayed
        # lazily: region -> its sum, the step count it is as of, its norm then)
        self.steps: dict[str, tuple[dict[str, np.ndarray], int, float]] = {}
        self.clock = 0  # steps committed since this guard started
        self.path: dict[str, np.ndarray] | None = None  # the model's path, after a restart
        self.recent: deque[tuple[str, float]] = deque(maxlen=INFLUENCE_WINDOW)
        self.shares: dict[str, float] = {}  # target influence shares (data shares, capped)

    @property
    def enabled(self) -> bool:
        return self.s.robust

    @property
    def quorum(self) -> int:
        """Regions whose figures the guard needs before it judges by them: three, so that one
        region is always outvoted (fewer in a federation of fewer)."""
        return min(3, len(self.regions))

    @property
    def warm(self) -> bool:
        return sum(1 for rec in self.records.values() if rec.norms) >= self.quorum

    # --- state ---

    def load(self, stored: Mapping[str, str | bytes]) -> None:
        """The records an earlier aggregator wrote (``Keys.guard``): region -> JSON."""
        for region, raw in stored.items():
            if region in self.records:
                self.records[region] = RegionRecord.from_json(raw)

    def set_data_sizes(self, sizes: Mapping[str, float]) -> None:
        """Target shares from the regions' announced data sizes (``robust.data_shares``)."""
        known = {r: v for r, v in sizes.items() if r in self.records}
        self.shares = robust.data_shares(known, self.s.max_region_share)

    def start_trajectory(self, current: Weights, earlier: Weights | None) -> None:
        """Seed the trajectory from the model's recent path (after a restart)."""
        if earlier is not None:
            self.path = robust.difference(current, earlier)

    # --- judging ---

    def judge(self, region: str, delta: Weights, norm: float) -> Verdict:
        """The verdict on ``region``'s delta of L2 norm ``norm`` (already shape- and
        finite-checked). The record learns the update's norm whatever the verdict."""
        record = self.records[region]
        notes: list[tuple[str, str]] = []
        weight = 1.0
        tensor_norms, tensor_scales = self._tensor_norms(delta), {}
        factor = self.s.robust_norm_factor
        for name, n in tensor_norms.items():
            if np.size(delta[name]) < MIN_TENSOR:
                continue  # a few values' norm varies too much between honest updates
            history = {r: rec.tensors.get(name, ()) for r, rec in self.records.items()}
            bound = robust.norm_bound(history, factor)
            if bound is not None and n > bound > 0:
                tensor_scales[name] = bound / n
        if tensor_scales:
            worst = sorted(tensor_scales, key=tensor_scales.get)[:3]
            named = ", ".join(
                f"{k} {tensor_norms[k]:.3g} > {tensor_norms[k] * tensor_scales[k]:.3g}"
                for k in worst
            )
            more = f" and {len(tensor_scales) - 3} more" if len(tensor_scales) > 3 else ""
            text = f"tensors {named}{more} ({factor:g} x the regions' median): scaled to them"
            notes.append(("norm", text))
        # the norm once the tensors were scaled (tensors too small to bound keep theirs)
        removed = sum(tensor_norms[k] ** 2 * (1.0 - f**2) for k, f in tensor_scales.items())
        after = math.sqrt(max(norm**2 - removed, 0.0))
        scale = 1.0
        history = {r: rec.norms for r, rec in self.records.items()}
        bound = robust.norm_bound(history, factor, self.quorum)
        if bound is None:  # warming up: nothing to judge by that one region cannot sway
            weight = 1.0 / len(self.regions)
            text = f"fewer than {self.quorum} regions heard from: weight x{weight:.2f}"
            notes.append(("warm-up", text))
        elif after > bound > 0:
            scale = bound / after
            text = f"{norm:.4g} > {bound:.4g} ({factor:g} x the regions' median): scaled to it"
            notes.append(("norm", text))
        cos = math.nan
        reference = self.reference()
        if reference is not None:
            cos = robust.cosine(delta, reference, norm)
            floor, full = self._direction_band(region, delta)
            f = robust.direction_factor(cos, floor, full)
            if f < 1.0:
                weight *= f
                text = (
                    f"cosine {cos:.3f} with the recent trajectory (full weight from {full:.3g}, "
                    f"none at {floor:.3g}): weight x{f:.2f}"
                )
                notes.append(("direction", text))
        judged = weight  # what norm and direction left of it: evidence against its region
        if weight > 0:
            share, target = self._share(region), self._target(region)
            if target is not None:
                f = robust.influence_factor(share, target, self.s.influence_slack)
                if f < 1.0:
                    weight *= f
                    notes.append(
                        (
                            "influence",
                            f"{share:.1%} of the recent weight, data share "
                            f"{target:.1%} (x{self.s.influence_slack:g} "
                            f"allowed): weight x{f:.2f}",
                        )
                    )
        kept = after * scale / norm if norm > 0 else 1.0
        trust = 1.0 - record.suspicion
        if weight > 0 and trust < 1.0 - TRUSTED:
            weight *= trust
            text = f"its region's suspicion {record.suspicion:.2f}: weight x{trust:.2f}"
            notes.append(("suspicion", text))
        verdict = Verdict(norm, scale, weight, cos, tuple(notes), tensor_scales, kept, judged)
        self._learn(record, verdict, tensor_norms)
        return verdict

    def _direction_band(self, region: str, delta: Weights) -> tuple[float, float]:
        """(floor, full) of the direction check for ``region``: the settings', lowered

        - below what chance gives a random direction (``-CHANCE / sqrt(values)``: in a model of
          a few values, an honest update near the optimum is noise and its cosine anything);
        - when the other regions' own recent cosines are lower than honest ones usually are (a
          trajectory bent by an early poisoned step, which a fixed band would turn against
          every honest region, with no step left to straighten it)."""
        floor, full = self.s.direction_floor, self.s.direction_full
        chance = -CHANCE / math.sqrt(max(1, sum(np.size(v) for v in delta.values())))
        if chance < floor:
            floor, full = chance, full + chance - floor
        others = [
            robust.median(rec.cosines)
            for r, rec in self.records.items()
            if r != region and rec.cosines
        ]
        if len(others) >= 2:
            typical = robust.median(others)
            if typical - DIRECTION_MARGIN < floor:
                shift = typical - DIRECTION_MARGIN - floor
                floor, full = floor + shift, full + shift
        return floor, full

    @staticmethod
    def _tensor_norms(delta: Weights) -> dict[str, float]:
        return {
            k: math.sqrt(float(np.vdot(v, v))) for k, v in delta.items() if np.size(v) >= MIN_TENSOR
        }

    def _learn(
        self, record: RegionRecord, verdict: Verdict, tensor_norms: dict[str, float]
    ) -> None:
        record.norms.append(verdict.norm)
        for name, n in tensor_norms.items():
            record.tensors.setdefault(name, deque(maxlen=HISTORY)).append(n)
        if math.isfinite(verdict.cosine):
            record.cosines.append(verdict.cosine)
        record.judged += 1
        for check, _ in verdict.notes:
            record.acted[check] = record.acted.get(check, 0) + 1
        record.refused += int(verdict.refused)
        if any(check == "warm-up" for check, _ in verdict.notes):
            return  # everyone's first updates are held back alike: no suspicion in that
        record.suspicion += SUSPICION_RATE * (verdict.penalty - record.suspicion)

    def _target(self, region: str) -> float | None:
        """The region's data share among the regions that took part lately (a region that is
        offline does not lower everyone else's cap)."""
        present = {r for r, _ in self.recent} | {region}
        total = sum(self.shares.get(r, 0.0) for r in present)
        mine = self.shares.get(region)
        return None if mine is None or total <= 0 else mine / total

    def _share(self, region: str) -> float:
        total = sum(w for _, w in self.recent)
        if total <= 0 or len(self.recent) < len(self.regions):
            return 0.0
        return sum(w for r, w in self.recent if r == region) / total

    # --- learning from what was applied ---

    def applied(self, weights: Mapping[str, float], old: Weights, new: Weights) -> None:
        """A version was committed: ``weights`` region -> its share of the step's weight."""
        for region, w in weights.items():
            self.recent.append((region, float(w)))
        if not self.warm:
            return  # steps of the warm-up do not shape the trajectory (one region's may)
        self.clock += 1
        step = robust.difference(new, old)
        total = sum(weights.values())
        for region, w in weights.items():
            part = step if len(weights) == 1 or total <= 0 else robust.scaled(step, w / total)
            if region in self.steps:
                mine, at, _ = self.steps[region]
                decay = TRAJECTORY_DECAY ** (self.clock - at)
                for k, v in part.items():
                    mine[k] *= decay
                    mine[k] += v
            else:
                mine = {k: np.array(v, dtype=np.float32) for k, v in part.items()}
            self.steps[region] = (mine, self.clock, math.sqrt(robust.dot(mine, mine)))

    def reference(self) -> dict[str, np.ndarray] | None:
        """The direction honest updates are judged against: the model's recent trajectory with
        each region's part of it held to the median part's length, so a region (or a minority
        of colluding ones) that pushes the model hardest, a hostile one, cannot make its own
        push the reference. None until three regions' steps are in it (after a restart, the
        model's path over its last versions serves until then)."""
        if len(self.steps) < self.quorum:
            return self.path
        lengths = {
            r: n * TRAJECTORY_DECAY ** (self.clock - at) for r, (_, at, n) in self.steps.items()
        }
        cap = robust.median(list(lengths.values()))
        out: dict[str, np.ndarray] | None = None
        for region, (mine, at, _) in self.steps.items():
            c = TRAJECTORY_DECAY ** (self.clock - at)
            if lengths[region] > cap > 0:
                c *= cap / lengths[region]
            if out is None:
                out = {k: v * c for k, v in mine.items()}
            else:
                for k, v in mine.items():
                    out[k] += c * v
        return out

    # --- what operators see ---

    def suspicion(self) -> dict[str, float]:
        return {r: rec.suspicion for r, rec in self.records.items()}

    def record_json(self, region: str) -> str:
        return self.records[region].to_json()


def region_view(raw: str | bytes | None) -> dict[str, object]:
    """A region's guard record as the views show it (``fedq status``/``audit``)."""
    rec = RegionRecord() if raw is None else RegionRecord.from_json(raw)
    return {
        "suspicion": round(rec.suspicion, 3),
        "flagged": rec.suspicion >= FLAGGED,
        "judged": rec.judged,
        "acted": dict(rec.acted),
        "refused": rec.refused,
        "median_norm": round(robust.median(list(rec.norms)), 4) if rec.norms else None,
        "median_cosine": round(robust.median(list(rec.cosines)), 3) if rec.cosines else None,
    }
