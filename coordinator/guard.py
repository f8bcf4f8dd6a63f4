"""The aggregator's guard: what a region with valid credentials is allowed to move.

Every protocol check (signature, issued job, shape, finiteness, the fixed norm bound) can pass
and an update still be poisoned: the negation of an honest delta, an honest delta scaled up,
a norm budget spent on a few parameters. The guard judges each such update against what the
federation has seen from its regions lately, with the pure checks of ``shared.robust``:

- **rows**: each row of a large table (one entity's embedding or bias: matrices of at least
  ``MIN_ROWS`` rows) moved by more than ``robust_row_factor`` x what regions typically move
  that row by is scaled down to it (a norm budget spent on a few products' rows is held to
  what honest regions move them by; honest regions' row moves are alike, so they lose almost
  nothing); while too few regions were heard, x the update's own median row move. The typical
  moves are an exponential average kept in memory only;
- **norm**: each tensor of the delta above ``robust_norm_factor`` x the regions' figure for it
  (the ``rank``-th largest of each region's median recent norm: no minority of regions can
  raise it, however few were heard) is scaled down to that bound (tensors of at least
  ``MIN_TENSOR`` values), and then the whole delta likewise;
- **length**: an update cut to less than ``KEPT_FULL`` of its length loses weight, as the
  square of the share it kept (what is left of a negation at the fixed bound is no honest
  update);
- **direction**: the median over the other regions of the delta's cosine with each one's part
  of the model's recent steps (each region counts once, its own steps not at all) below
  ``direction_full`` lowers its weight, to zero at ``direction_floor``; the band moves down
  when the other regions' own cosines are low, and stays below what chance gives a random
  direction in a model of few values (at an optimum honest updates are mostly noise);
- **suspicion**: a region whose recent updates lost much of their length or weight weighs
  less, and nothing from ``DISTRUSTED`` (its updates are refused, ``suspected``);
- **influence**: a region whose share of the recently applied weight exceeds
  ``influence_slack`` x its data share (among the regions whose updates the guard lets
  through) has its weight scaled back to that cap.

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
MIN_ROWS = 64  # tables with fewer rows (one per region, say) are not bounded row by row
ROW_RATE = 0.2  # a region's typical row moves: an exponential average over ~5 updates
# the rows check is named (and counted against the region) when it took at least this share of
# the update's norm: one-value rows (a product's bias) of honest tables pass the bound now and
# then, by a little; what that takes is still taken, and shows in the applied norm
ROW_NOTICE = 0.01
DIRECTION_MARGIN = 0.4  # how far below the other regions' median cosine the band may sit
CHANCE = 1.5  # the floor stays this many standard deviations of a random cosine below zero
INFLUENCE_WINDOW = 200  # applied updates the influence shares are measured over
TRAJECTORY_DECAY = 0.9  # the trajectory averages the model's last ~10 steps
SUSPICION_RATE = 0.1  # the suspicion is an exponential average over ~10 updates
FLAGGED = 0.5  # suspicion from which a region is shown as flagged
TRUSTED = 0.2  # suspicion below this costs a region nothing; above, its weight falls with it
DISTRUSTED = 0.8  # ... to zero here: its updates are refused (``suspected``) until it mends
# an update the rows and norm checks cut to less than this share of its length also loses
# weight, as the square of the share kept over it: what is left of a negation at the fixed
# bound, or of a budget spent on a few rows, is not an honest update (honest ones scaled down
# keep far more than half); in proportion only, two colluders' remains still held a third of
# the applied weight over the first 50 versions
KEPT_FULL = 0.5


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
    # tensor -> each row's factor (shaped to broadcast over the row's values)
    row_scales: Mapping[str, np.ndarray] = field(default_factory=dict)

    @property
    def refused(self) -> bool:
        return self.weight <= 0.0

    @property
    def penalty(self) -> float:
        """How much of the update the norm and direction checks took away, 0..1 (not what the
        influence cap took, a fast region's, nor its region's suspicion, which would feed on
        itself)."""
        return 1.0 - max(0.0, min(1.0, self.kept * self.judged))

    def factors(self) -> dict[str, float | np.ndarray]:
        """Tensor name -> what to multiply it by (tensors not named: ``scale``)."""
        out: dict[str, float | np.ndarray] = {
            k: f * self.scale for k, f in self.tensor_scales.items()
        }
        for k, rows in self.row_scales.items():
            out[k] = rows * out.get(k, self.scale)
        return out

    def apply(self, delta: dict[str, np.ndarray]) -> None:
        """Scale ``delta`` in place as the row and norm checks said."""
        if self.kept >= 1.0:
            return
        factors = self.factors()
        for name, tensor in delta.items():
            f = factors.get(name, self.scale)
            if np.any(f != 1.0):
                delta[name] = (tensor * f).astype(tensor.dtype, copy=False)

    @property
    def reason(self) -> RejectReason:
        """The check that took the last of its weight."""
        if self.judged <= 0:
            return RejectReason.DIRECTION
        checks = [c for c, _ in self.notes]
        return RejectReason.SUSPECTED if "suspicion" in checks else RejectReason.INFLUENCE

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
    # tensor -> each row's typical move (not persisted: rebuilt from the next updates)
    rows: dict[str, np.ndarray] = field(default_factory=dict)

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
        # region -> the weight factor of its recent updates before the influence cap (what
        # the rows, norm, direction and suspicion left; 0 for a refusal): its presence
        self.accepted: dict[str, deque[float]] = {}
        self.shares: dict[str, float] = {}  # target influence shares (data shares, capped)

    @property
    def enabled(self) -> bool:
        return self.s.robust

    @property
    def rank(self) -> int:
        """The region figure the bounds are taken from: the rank-th largest, rank being half
        the federation rounded up, so that no minority of regions can raise a bound (about the
        median once every region was heard)."""
        return math.ceil(len(self.regions) / 2)

    @property
    def quorum(self) -> int:
        """Regions whose figures the guard needs before it judges by them: three (fewer in a
        federation of fewer), and at least ``rank``."""
        return max(self.rank, min(3, len(self.regions)))

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
        moves = {k: robust.row_magnitudes(v) for k, v in delta.items() if _rowed(v)}
        row_scales, clipped = self._row_scales(moves, {k: np.ndim(delta[k]) for k in moves})
        tensor_norms, tensor_scales = self._tensor_norms(delta), {}
        bounded = dict(tensor_norms)  # each tensor's norm once its rows were bounded
        for name, rows in row_scales.items():
            bounded[name] = float(np.linalg.norm(moves[name] * rows.reshape(-1)))
        taken = sum(tensor_norms[k] ** 2 - bounded[k] ** 2 for k in row_scales)
        if norm > 0 and 1.0 - math.sqrt(max(0.0, 1.0 - taken / norm**2)) >= ROW_NOTICE:
            worst = sorted(clipped, key=clipped.get, reverse=True)
            named = ", ".join(f"{clipped[k]} rows of {k}" for k in worst[:3])
            more = f" and {len(worst) - 3} more tables" if len(worst) > 3 else ""
            text = (
                f"{named}{more} above {self.s.robust_row_factor:g} x the typical move of "
                "their rows: scaled to it"
            )
            notes.append(("rows", text))
        factor = self.s.robust_norm_factor
        for name, n in bounded.items():
            if np.size(delta[name]) < MIN_TENSOR:
                continue  # a few values' norm varies too much between honest updates
            history = {r: rec.tensors.get(name, ()) for r, rec in self.records.items()}
            bound = robust.norm_bound(history, factor, self.rank, self.quorum)
            if bound is not None and n > bound > 0:
                tensor_scales[name] = bound / n
        if tensor_scales:
            worst = sorted(tensor_scales, key=tensor_scales.get)[:3]
            named = ", ".join(
                f"{k} {bounded[k]:.3g} > {bounded[k] * tensor_scales[k]:.3g}" for k in worst
            )
            more = f" and {len(tensor_scales) - 3} more" if len(tensor_scales) > 3 else ""
            text = f"tensors {named}{more} ({factor:g} x the regions' median): scaled to them"
            notes.append(("norm", text))
        # the norm once rows and tensors were scaled (tensors too small to bound keep theirs)
        removed = sum(
            tensor_norms[k] ** 2 - (bounded[k] * tensor_scales.get(k, 1.0)) ** 2
            for k in set(tensor_scales) | set(row_scales)
        )
        after = math.sqrt(max(norm**2 - removed, 0.0))
        scale = 1.0
        history = {r: rec.norms for r, rec in self.records.items()}
        bound = robust.norm_bound(history, factor, self.rank, self.quorum)
        if bound is None:  # warming up: nothing to judge by that one region cannot sway
            weight = 1.0 / len(self.regions)
            text = f"fewer than {self.quorum} regions heard from: weight x{weight:.2f}"
            notes.append(("warm-up", text))
        elif after > bound > 0:
            scale = bound / after
            text = f"{norm:.4g} > {bound:.4g} ({factor:g} x the regions' median): scaled to it"
            notes.append(("norm", text))
        cos = self.direction(region, delta, norm)
        if math.isfinite(cos):
            floor, full = self._direction_band(region, delta)
            f = robust.direction_factor(cos, floor, full)
            if f < 1.0:
                weight *= f
                text = (
                    f"cosine {cos:.3f} with the other regions' recent steps (full weight from "
                    f"{full:.3g}, none at {floor:.3g}): weight x{f:.2f}"
                )
                notes.append(("direction", text))
        judged = weight  # what norm and direction left of it: evidence against its region
        kept = after * scale / norm if norm > 0 else 1.0
        if weight > 0 and kept < KEPT_FULL:
            f = (kept / KEPT_FULL) ** 2
            weight *= f
            notes.append(("length", f"{kept:.0%} of its length kept: weight x{f:.2f}"))
        if weight > 0 and record.suspicion > TRUSTED:
            trust = max(0.0, 1.0 - record.suspicion / DISTRUSTED)
            weight *= trust
            text = f"its region's suspicion {record.suspicion:.2f}: weight x{trust:.2f}"
            notes.append(("suspicion", text))
        self.accepted.setdefault(region, deque(maxlen=HISTORY)).append(weight)
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
        verdict = Verdict(
            norm, scale, weight, cos, tuple(notes), tensor_scales, kept, judged, row_scales
        )
        self._learn(record, verdict, tensor_norms, moves)
        return verdict

    def _row_scales(
        self, moves: dict[str, np.ndarray], ndims: dict[str, int]
    ) -> tuple[dict[str, np.ndarray], dict[str, int]]:
        """Each large table's per-row factors (shaped to broadcast) and how many rows they
        scale down, for tables where a row moved by more than ``robust_row_factor`` x the
        regions' typical move of it; while too few regions were heard to say what is typical,
        by more than that x the update's own median row move (the first update may spend the
        fixed bound on a few rows, and at the warm-up's weight of 1/n a promoted product's bias
        took hundreds of honest updates to come back down)."""
        factor = self.s.robust_row_factor
        if factor <= 0:
            return {}, {}
        out: dict[str, np.ndarray] = {}
        clipped: dict[str, int] = {}
        for name, m in moves.items():
            typical = {
                r: rec.rows[name]
                for r, rec in self.records.items()
                if name in rec.rows and rec.rows[name].shape == m.shape
            }
            bound = robust.row_bound(typical, factor, self.rank, self.quorum)
            if bound is None:  # warming up: no row may stand out of the update's own table
                own = float(np.median(m))
                if own <= 0:
                    continue
                bound = np.full_like(m, factor * own)
            rows = robust.row_factors(m, bound)
            if (rows < 1.0).any():
                out[name] = rows.reshape((-1,) + (1,) * (ndims[name] - 1))
                clipped[name] = int((rows < 1.0).sum())
        return out, clipped

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
        self,
        record: RegionRecord,
        verdict: Verdict,
        tensor_norms: dict[str, float],
        moves: dict[str, np.ndarray],
    ) -> None:
        record.norms.append(verdict.norm)
        for name, m in moves.items():
            old = record.rows.get(name)
            if old is None or old.shape != m.shape:
                record.rows[name] = m.astype(np.float32)
            else:
                old += ROW_RATE * (m - old)
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
        """The region's data share among the regions that took part lately, each other region
        counted by how much of its recent updates' weight the guard let through (a region
        that is offline, or whose updates the guard cuts, does not lower everyone else's cap:
        the honest regions' shares rise when a hostile one's weight is taken away)."""
        present = {r for r, _ in self.recent} - {region}
        total = sum(self.shares.get(r, 0.0) * self._acceptance(r) for r in present)
        mine = self.shares.get(region)
        return None if mine is None or total + mine <= 0 else mine / (total + mine)

    def _acceptance(self, region: str) -> float:
        """The mean weight factor the guard gave ``region``'s recent updates (1: untouched)."""
        accepted = self.accepted.get(region)
        return sum(accepted) / len(accepted) if accepted else 1.0

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

    def direction(self, region: str, delta: Weights, norm: float) -> float:
        """How far ``delta`` goes the other regions' way: the median over the other regions of
        its cosine with that region's part of the model's recent steps (NaN until two other
        regions' steps are in; after a restart, its cosine with the model's own recent path).

        Each region counts once, however hard it pushed the model or however much data it
        claims, so a minority of colluding regions cannot make its push the direction; and the
        judged region's own steps are left out, so they cannot vouch for it (a negating region,
        once applied, looked aligned with a trajectory holding its own negations; two colluding
        regions with one holding both)."""
        parts = [(mine, n) for r, (mine, _, n) in self.steps.items() if r != region and n > 0]
        if len(parts) < max(1, self.quorum - 1) or norm <= 0:
            return robust.cosine(delta, self.path, norm) if self.path is not None else math.nan
        return robust.median([robust.dot(delta, mine) / (norm * n) for mine, n in parts])

    # --- what operators see ---

    def suspicion(self) -> dict[str, float]:
        return {r: rec.suspicion for r, rec in self.records.items()}

    def record_json(self, region: str) -> str:
        return self.records[region].to_json()


def _rowed(tensor: np.ndarray) -> bool:
    """A table bounded row by row: at least ``MIN_ROWS`` rows of one or more values each (the
    values of a vector are not rows: one value's move is noise, its tail heavy)."""
    return np.ndim(tensor) >= 2 and len(tensor) >= MIN_ROWS


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
