"""Ranking metrics: pure numpy, no model, no I/O.

Ranks are 0-based ("how many candidates beat the target"). Ties count against the target (a
candidate scoring exactly the target's score is ranked above it), so a scorer that gives every
item the same score gets no credit beyond what its ties earn; that is the honest choice for
popularity counts, where many items tie at zero.
"""

from __future__ import annotations

import numpy as np

K = 10


def ranks(scores: np.ndarray, target_col: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """Rank of each row's target among that row's candidates.

    ``scores`` (B, n); ``target_col`` (B,) column of the target; ``candidate`` (B, n) bool, which
    columns compete (the target's own column is ignored whatever it says).
    """
    rows = np.arange(len(scores))
    target_score = scores[rows, target_col][:, None]
    competes = candidate.copy()
    competes[rows, target_col] = False
    return ((scores >= target_score) & competes).sum(axis=1)


def hit_rate(rank: np.ndarray, k: int = K) -> float:
    return float(np.mean(rank < k)) if len(rank) else float("nan")


def ndcg(rank: np.ndarray, k: int = K) -> float:
    """One relevant item per row: DCG is 1/log2(rank+2) inside the top k, and the ideal DCG is 1."""
    if not len(rank):
        return float("nan")
    gain = np.where(rank < k, 1.0 / np.log2(rank.astype(np.float64) + 2.0), 0.0)
    return float(gain.mean())


def random_hit_rate(n_candidates: np.ndarray, k: int = K) -> float:
    """Expected hit rate of a uniformly random ranking of each row's candidates."""
    if not len(n_candidates):
        return float("nan")
    n = np.maximum(n_candidates.astype(np.float64), 1.0)
    return float(np.mean(np.minimum(k, n) / n))


def weighted_mean(values: dict[str, float], weights: dict[str, float]) -> float:
    """Mean of per-region figures weighted by (say) users; regions without a figure are left out."""
    keys = [r for r in values if np.isfinite(values[r]) and weights.get(r, 0) > 0]
    total = sum(weights[r] for r in keys)
    return float(sum(values[r] * weights[r] for r in keys) / total) if total else float("nan")
