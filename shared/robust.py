"""Robust aggregation math: pure numpy on dicts of arrays. No Redis, no clocks.

A region that holds valid credentials may still send a poisoned update that passes every
protocol check. These functions judge an update against what the federation has seen from
honest regions, without any server-side data:

- ``norm_bound``: an update's L2 norm may not exceed ``factor`` times the ``rank``-th largest,
  over regions, of each region's median recent norm (Sun et al., arXiv 1911.07963, with the
  bound learned from the federation instead of fixed). With ``rank`` half the federation,
  rounded up, that is about the median of the per-region medians once every region was heard,
  and no minority of colluding regions that always sends long deltas can raise it, however few
  regions were heard so far (a median of the regions heard was theirs while they were most of
  those: the first to send are the regions with the most jobs).
- ``row_magnitudes`` / ``row_bound`` / ``row_factors``: each row of a large table (one
  entity's embedding or bias) may not move by more than ``factor`` times what regions typically
  move that row by (the same ``rank``-th largest over regions): a norm budget spent on a few
  rows (chosen products' bias) is held to what honest regions move those rows by, while honest
  regions, whose row moves are alike under adaptive optimisers, lose almost nothing.
- ``cosine`` / ``direction_factor``: an update pointing against the recent global trajectory
  is down-weighted, to zero when it points further against it than honest updates ever do.
- ``influence_factor``: a region's share of the applied weight follows its data share, not its
  speed or its norm.
- ``centered_clip``: FedBuff and FedAvg combine one point per region by centered clipping
  (Karimireddy et al., arXiv 2012.10333): a point far from the others moves the result by at
  most ``tau``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from shared.codec import Weights


def median(values: Sequence[float]) -> float:
    return float(np.median(np.asarray(values, dtype=np.float64))) if values else math.nan


def norm_bound(
    history: Mapping[str, Sequence[float]], factor: float, rank: int = 1, min_regions: int = 2
) -> float | None:
    """``factor`` x the ``rank``-th largest of the regions' median recent norms; None while
    fewer than ``max(rank, min_regions)`` regions have a history (the fixed bound then holds
    alone). Fewer than ``rank`` regions, whatever they send, cannot raise it."""
    medians = sorted((median(h) for h in history.values() if len(h)), reverse=True)
    if len(medians) < max(rank, min_regions):
        return None
    return factor * medians[rank - 1]


def row_magnitudes(tensor: np.ndarray) -> np.ndarray:
    """The L2 norm of each row (first axis) of ``tensor``; of each value if it is 1-D."""
    rows = np.asarray(tensor, dtype=np.float32).reshape(len(tensor), -1)
    return np.sqrt(np.einsum("ij,ij->i", rows, rows))


def row_bound(
    typical: Mapping[str, np.ndarray], factor: float, rank: int = 1, min_regions: int = 2
) -> np.ndarray | None:
    """``factor`` x, row by row, the ``rank``-th largest of the regions' typical row
    magnitudes; None while fewer than ``max(rank, min_regions)`` regions have figures."""
    known = [np.asarray(v, dtype=np.float32) for v in typical.values()]
    if len(known) < max(rank, min_regions):
        return None
    return factor * np.sort(np.stack(known), axis=0)[len(known) - rank]


def row_factors(magnitudes: np.ndarray, bound: np.ndarray) -> np.ndarray:
    """What to multiply each row by so none exceeds its bound (1 where it does not)."""
    over = magnitudes > bound
    out = np.ones_like(magnitudes)
    out[over] = bound[over] / magnitudes[over]
    return out


def dot(a: Weights, b: Weights) -> float:
    return float(sum(np.vdot(a[k], b[k]) for k in a))


def cosine(a: Weights, b: Weights, norm_a: float | None = None) -> float:
    """Cosine similarity of two tensor dicts; NaN if either is zero."""
    na = math.sqrt(dot(a, a)) if norm_a is None else norm_a
    nb = math.sqrt(dot(b, b))
    if na == 0 or nb == 0 or not math.isfinite(na * nb):
        return math.nan
    return dot(a, b) / (na * nb)


def direction_factor(cos: float, floor: float, full: float) -> float:
    """1 at or above ``full``, 0 at or below ``floor``, linear between (NaN: no reference, 1).

    ``floor`` < ``full`` are learned from honest cosines: an update that agrees with the
    trajectory less than honest ones ever do loses its weight gradually, not at a cliff a
    patient attacker could sit just above."""
    if math.isnan(cos):
        return 1.0
    if cos >= full:
        return 1.0
    if cos <= floor or full <= floor:
        return 0.0
    return (cos - floor) / (full - floor)


def influence_factor(share: float, target: float, slack: float, floor: float = 0.05) -> float:
    """How much to scale a region's next weight: 1 while its share of the recent applied weight
    (``share``) is within ``slack`` x its ``target`` share (its data's), falling linearly to
    ``floor`` at 1.25 times that cap. However much faster a region is than its peers, its share
    settles below 1.25 x the cap; the floor keeps a region whose peers are all quiet training
    the model, slowly."""
    cap = slack * target
    if share <= cap or share <= 0:
        return 1.0
    return max(floor, 1.0 - (share - cap) / (0.25 * cap))


def data_shares(sizes: Mapping[str, float], max_share: float) -> dict[str, float]:
    """Each region's share of the announced data sizes, no region's size counting for more
    than ``max_share`` of the total: an announced size is the region's own word, and one
    region announcing a billion examples must not shrink every other region's share."""
    known = {r: float(v) for r, v in sizes.items() if v > 0 and math.isfinite(v)}
    if not known:
        return {}
    if len(known) == 1 or max_share >= 1:
        capped = known
    else:
        ratio = max_share / (1.0 - max_share)
        capped = {r: min(v, ratio * (sum(known.values()) - v)) for r, v in known.items()}
    total = sum(capped.values())
    return {r: v / total for r, v in capped.items()}


def difference(a: Weights, b: Weights) -> dict[str, np.ndarray]:
    """``a - b`` in float32, tensor by tensor (a fresh array each)."""
    return {k: np.subtract(a[k], b[k], dtype=np.float32) for k in a}


def scaled(tensors: Weights, c: float) -> dict[str, np.ndarray]:
    return {k: (np.asarray(t) * c).astype(np.float32, copy=False) for k, t in tensors.items()}


def centered_clip(
    points: Sequence[Weights],
    weights: Sequence[float],
    tau: float | None = None,
    center: Weights | None = None,
    iterations: int = 3,
    tau_factor: float = 1.0,
) -> tuple[dict[str, np.ndarray], list[float]]:
    """Centered clipping: ``v <- v + sum_i w_i clip(x_i - v, tau) / sum_i w_i``, iterated
    from ``center`` (the points' coordinate-wise median by default). ``tau`` None:
    ``tau_factor`` x the median of the points' distances from that center (each honest point
    then moves the result as an average would, an outlier by at most the typical distance).
    Returns the result and each point's distance from it."""
    if not points or len(points) != len(weights):
        raise ValueError("centered_clip needs one weight per point, and at least one point")
    total = float(sum(weights))
    if total <= 0:
        raise ValueError("centered_clip needs a positive total weight")
    names = list(points[0])
    if center is None:  # the coordinate-wise median: no single point can drag it far
        v = {
            k: np.median(np.stack([np.asarray(p[k], np.float64) for p in points]), axis=0)
            for k in names
        }
    else:
        v = {k: np.asarray(center[k], dtype=np.float64) for k in names}
    if tau is None:
        tau = tau_factor * median([_distance(p, v) for p in points])
    for _ in range(iterations):
        step = {k: np.zeros_like(v[k]) for k in names}
        for p, w in zip(points, weights, strict=True):
            d = _distance(p, v)
            c = 1.0 if d <= tau or d == 0 else tau / d
            for k in names:
                step[k] += (w * c / total) * (np.asarray(p[k], np.float64) - v[k])
        v = {k: v[k] + step[k] for k in names}
    out = {k: v[k].astype(np.float32) for k in names}
    return out, [_distance(p, out) for p in points]


def _distance(a: Weights, b: Weights) -> float:
    return math.sqrt(sum(float(np.sum((np.asarray(a[k], np.float64) - b[k]) ** 2)) for k in a))
