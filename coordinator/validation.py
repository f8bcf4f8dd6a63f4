"""What an update must be before a strategy sees it, and what signs it: pure checks.

The aggregator calls these on every decoded update (``delta_problem``) and, in a signed
federation, on every entry before a byte of it is decoded (``signature_problem``); each returns
the rejection reason and a detail, or None.
"""

from __future__ import annotations

import math

from shared import auth, streams
from shared.aggregation import clip_to_norm, l2_norm, tensor_problem
from shared.codec import RejectReason, Weights

MAX_UPDATE_BYTES = 64 * 1024 * 1024


def delta_problem(
    delta: Weights, weights: Weights, bound: float, norm_action: str
) -> tuple[tuple[RejectReason, str] | None, float | None, float]:
    """(problem, clipped norm, norm): the delta must have the model's tensors and shapes,
    finite values, and an L2 norm within ``bound`` (0: none); with ``norm_action`` "clip" a
    longer delta is scaled down to the bound in place, and its old norm returned. ``norm`` is
    the delta's L2 norm as it goes on (NaN if it has a problem)."""
    problem = tensor_problem(delta, weights, finite=False)
    # one pass for both: a NaN or an infinity makes the sum of squares non-finite, so only a
    # non-finite norm needs the element-wise look; finite values whose float32 squares
    # overflowed get their true norm in float64 (so a clip scales them, not zeroes them)
    norm = l2_norm(delta) if problem is None else math.nan
    if problem is None and not math.isfinite(norm):
        problem = tensor_problem(delta, weights)
        norm = l2_norm(delta, wide=True) if problem is None else norm
    if problem is not None:
        kind, detail = problem
        reason = RejectReason.SHAPE if kind == "shape" else RejectReason.NON_FINITE
        return (reason, detail), None, math.nan
    if bound:
        clipped, norm = clip_to_norm(delta, bound, norm)
        if clipped is not delta:
            if norm_action == "reject":
                return (RejectReason.NORM, f"L2 norm {norm:.4g} > bound {bound:g}"), None, norm
            delta.update(clipped)  # the update goes on at the bound's length
            return None, norm, bound
    return None, None, norm


def signature_problem(
    fields: dict[bytes, bytes], payload: bytes, region: str, region_keys: dict[str, bytes]
) -> tuple[RejectReason, str] | None:
    """The stream's region names the secret: only that region's workers hold it."""
    signature = streams.entry_text(fields, streams.SIG)
    if not signature:
        return RejectReason.UNSIGNED, f"the federation signs updates; no {streams.SIG!r} field"
    key = region_keys.get(region)
    if key is None:
        return RejectReason.UNKNOWN_REGION, f"no secret for region {region!r}"
    if not auth.verify(key, payload, signature):
        return RejectReason.BAD_SIGNATURE, f"HMAC does not match {region!r}'s secret"
    return None
