"""Aggregation math: pure numpy on dicts of arrays. No Redis, no torch, no clocks.

- FedAsync (Xie et al. 2019): ``w <- (1 - a_t) w + a_t x``, ``a_t = alpha * s(staleness)``, where
  ``x = w_base + delta`` is the client's model (the update is sent as a delta from its base).
- FedBuff (Nguyen et al. 2022): buffer K deltas, each scaled by ``1 / sqrt(1 + staleness)``, then
  ``w <- w + eta_g * mean(scaled deltas)``.
- FedAvg (McMahan et al. 2017): ``w <- sum_k (n_k / n) x_k`` over one synchronous round.

Optional sample-count weighting in the async modes multiplies a client's mixing weight by
``n_k / n_ref`` (clipped), so a region with ten times the data is not drowned out by a small one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from shared.codec import Weights

STALENESS_FUNCTIONS = ("constant", "polynomial", "hinge")


@dataclass(frozen=True)
class Staleness:
    """A staleness function ``s`` with its parameters (defaults from the FedAsync paper)."""

    kind: str = "polynomial"
    a: float = 0.5  # polynomial exponent; for hinge, the slope
    b: float = 4.0  # hinge: staleness tolerated at full weight

    def __post_init__(self) -> None:
        if self.kind not in STALENESS_FUNCTIONS:
            raise ValueError(
                f"unknown staleness function {self.kind!r}; choose one of "
                + ", ".join(STALENESS_FUNCTIONS)
            )
        if self.a < 0 or self.b < 0:
            raise ValueError(f"staleness parameters must be >= 0, got a={self.a}, b={self.b}")

    def __call__(self, staleness: int) -> float:
        if staleness < 0:
            raise ValueError(f"negative staleness {staleness}: the base is newer than the model")
        if self.kind == "constant":
            return 1.0
        if self.kind == "polynomial":
            return float((staleness + 1) ** (-self.a))
        if staleness <= self.b:
            return 1.0
        return 1.0 / (self.a * (staleness - self.b) + 1.0)


def hinge(a: float = 10.0, b: float = 4.0) -> Staleness:
    return Staleness("hinge", a, b)


def mixing_weight(
    alpha: float,
    staleness: int,
    fn: Staleness,
    n_samples: int | None = None,
    n_reference: float | None = None,
    cap: float = 1.0,
) -> float:
    """``a_t = alpha * s(staleness)``, times ``n_k / n_ref`` when sample weighting is on.

    The result is capped at ``cap`` (at most 1: the new model is never pushed past the client's).
    """
    if not 0 < alpha <= 1:
        raise ValueError(f"alpha must be in (0, 1], got {alpha}")
    a = alpha * fn(staleness)
    if n_samples is not None and n_reference:
        a *= n_samples / n_reference
    return float(min(a, cap))


def fedasync_apply(w: Weights, base: Weights, delta: Weights, a: float) -> dict[str, np.ndarray]:
    """``(1 - a) w + a (base + delta)``, tensor by tensor, in float32."""
    _same_keys(w, base, delta)
    out = {}
    for name, current in w.items():
        client = base[name] + delta[name]
        out[name] = ((1.0 - a) * current + a * client).astype(np.float32, copy=False)
    return out


def fedbuff_scale(staleness: int) -> float:
    return 1.0 / math.sqrt(1.0 + staleness)


def fedbuff_apply(
    w: Weights, deltas: Sequence[Weights], staleness: Sequence[int], server_lr: float = 1.0
) -> dict[str, np.ndarray]:
    """``w + eta_g * mean_k(delta_k / sqrt(1 + s_k))``."""
    if not deltas or len(deltas) != len(staleness):
        raise ValueError("fedbuff needs one staleness per buffered delta, and at least one delta")
    for d in deltas:
        _same_keys(w, d)
    scales = [fedbuff_scale(s) for s in staleness]
    out = {}
    for name, current in w.items():
        total = sum(c * d[name] for c, d in zip(scales, deltas, strict=True))
        out[name] = (current + server_lr * total / len(deltas)).astype(np.float32, copy=False)
    return out


def fedavg(models: Sequence[Weights], n_samples: Sequence[int]) -> dict[str, np.ndarray]:
    """Sample-weighted average of client models."""
    if not models or len(models) != len(n_samples):
        raise ValueError("fedavg needs one sample count per model, and at least one model")
    total = float(sum(n_samples))
    if total <= 0:
        raise ValueError("fedavg needs a positive total sample count")
    for m in models[1:]:
        _same_keys(models[0], m)
    return {
        name: sum((n / total) * m[name] for m, n in zip(models, n_samples, strict=True)).astype(
            np.float32, copy=False
        )
        for name in models[0]
    }


def add(base: Weights, delta: Weights) -> dict[str, np.ndarray]:
    _same_keys(base, delta)
    return {k: (base[k] + delta[k]).astype(np.float32, copy=False) for k in base}


def subtract(new: Weights, base: Weights) -> dict[str, np.ndarray]:
    _same_keys(new, base)
    return {k: (new[k] - base[k]).astype(np.float32, copy=False) for k in new}


def l2_norm(tensors: Weights, wide: bool = False) -> float:
    """In the tensors' own precision (float32: fast, but squares above ~1.8e19 overflow to
    inf), or ``wide`` in float64 (a copy of each tensor: for the rare finite overflow)."""
    dtype = np.float64 if wide else None  # None: no copy
    squares = (float(np.vdot(a, a)) for a in (np.asarray(t, dtype=dtype) for t in tensors.values()))
    return float(math.sqrt(sum(squares)))


def clip_to_norm(
    tensors: Weights, bound: float, norm: float | None = None
) -> tuple[Weights, float]:
    """``tensors`` scaled down to L2 norm ``bound`` if above it; returns them and the old norm
    (``norm``: already measured)."""
    norm = l2_norm(tensors) if norm is None else norm
    if norm <= bound:
        return tensors, norm
    scale = bound / norm
    return {k: (t * scale).astype(t.dtype) for k, t in tensors.items()}, norm


def _same_keys(*dicts: Weights) -> None:
    first = dicts[0]
    for d in dicts[1:]:
        if d.keys() != first.keys():
            missing = sorted(set(first) - set(d))
            extra = sorted(set(d) - set(first))
            raise ValueError(f"tensor names differ: missing {missing}, unexpected {extra}")
        for name, t in first.items():
            if d[name].shape != t.shape:
                raise ValueError(f"{name}: shape {d[name].shape}, expected {t.shape}")


def tensor_problem(tensors: Weights, like: Weights, finite: bool = True) -> tuple[str, str] | None:
    """(kind, detail) if ``tensors`` lack or add a tensor of ``like``, differ in a shape, or
    (``finite``) hold NaN or infinities; None if they fit. kind is "shape" or "non_finite"."""
    if tensors.keys() != like.keys():
        missing = sorted(set(like) - set(tensors))
        extra = sorted(set(tensors) - set(like))
        return "shape", f"tensors missing {missing[:3]}, unexpected {extra[:3]}"
    for name, t in tensors.items():
        if np.shape(t) != np.shape(like[name]):
            return "shape", f"{name}: {np.shape(t)}, expected {np.shape(like[name])}"
        # one pass without a temporary: a NaN or inf makes the sum non-finite (a finite sum
        # that overflowed is re-checked element by element before rejecting)
        if finite and not np.isfinite(np.sum(t, dtype=np.float64)) and not np.isfinite(t).all():
            return "non_finite", f"{name} has non-finite values (NaN or infinite)"
    return None
