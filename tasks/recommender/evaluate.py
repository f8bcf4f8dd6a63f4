"""Evaluation of a scorer on one region's held-out events (leave-last-out).

Two protocols on the same scores:
- full ranking: the target against every catalogue item on sale at the target's time, less the
  items the user already interacted with before it (the target itself always competes);
- sampled (NCF): the target against 99 items drawn uniformly from those on sale at that time that
  the user never interacted with, drawn from a seed so every scorer meets the same negatives.
Cold start: the full-ranking hit rate over targets that launched at or after the cut-off, beside
the hit rate a uniformly random ranking would get on the same rows.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

import numpy as np
import torch

from tasks.recommender import metrics
from tasks.recommender.local_data import RegionData
from tasks.recommender.model import NOT_ON_SALE, Recommender
from tasks.recommender.sequences import Examples

NEGATIVES = 99
METRIC_KEYS = ("hr@10", "ndcg@10", "hr@10_sampled", "ndcg@10_sampled", "cold_start.hr@10")
Metrics = dict[str, float]


class Scorer(Protocol):
    def scores(self, examples: Examples) -> np.ndarray:
        """(B, n_items) scores at each example's time; items not on sale score NOT_ON_SALE."""
        ...


class ModelScorer:
    def __init__(self, model: Recommender) -> None:
        self.model = model.eval()
        with torch.no_grad():
            self.items = self.model.item_vectors()

    def scores(self, examples: Examples) -> np.ndarray:
        return self.score(examples.history, examples.region, examples.time)

    def score(self, history: np.ndarray, region: np.ndarray, time: np.ndarray) -> np.ndarray:
        """(B, n_items) scores of users (right-aligned histories, -1 padded) at their times:
        the one scoring path of evaluation, ``fedq recommend`` and the regional service."""
        with torch.no_grad():
            users = self.model.user_vectors(
                self.items, torch.as_tensor(history), torch.as_tensor(region)
            )
            return self.model.logits(self.items, users, torch.as_tensor(time)).numpy()


class PopularityScorer:
    """Training-interaction counts; the same ranking for everyone."""

    def __init__(self, counts: np.ndarray, launch_time: np.ndarray) -> None:
        self.counts = counts.astype(np.float64)
        self.launch_time = launch_time

    def scores(self, examples: Examples) -> np.ndarray:
        on_sale = self.launch_time[None, :] <= examples.time[:, None]
        return np.where(on_sale, self.counts[None, :], NOT_ON_SALE)


def popularity_counts(train_items: Iterable[np.ndarray], n_items: int) -> np.ndarray:
    """Interaction counts over the training parts of the given regions."""
    counts = np.zeros(n_items, dtype=np.int64)
    for items in train_items:
        counts += np.bincount(items, minlength=n_items)
    return counts


def evaluate_region(
    scorer: Scorer,
    data: RegionData,
    which: str = "test",
    negatives: int = NEGATIVES,
    seed: int = 0,
    batch_size: int = 256,
) -> Metrics:
    examples: Examples = getattr(data.split, which)
    launch = data.shared.catalogue.launch_time
    rng = np.random.default_rng([seed, data.shared.meta.regions.index(data.region)])
    full, sampled, n_candidates = [], [], []
    seqs = data.split.sequences
    for lo in range(0, len(examples), batch_size):
        batch = examples.take(np.arange(lo, min(lo + batch_size, len(examples))))
        scores = scorer.scores(batch)
        rows = np.arange(len(batch))
        on_sale = launch[None, :] <= batch.time[:, None]
        candidate = on_sale.copy()
        for r, seen in enumerate(data.split.seen_before(batch)):
            candidate[r, seen] = False
        candidate[rows, batch.target] = True
        full.append(metrics.ranks(scores, batch.target, candidate))
        n_candidates.append(candidate.sum(axis=1))
        if negatives <= 0:
            continue
        # sampled protocol: target in column 0, negatives after it
        cols = np.empty((len(batch), negatives + 1), dtype=np.int64)
        valid = np.zeros((len(batch), negatives + 1), dtype=bool)
        for r in rows:
            items, _ = seqs.of(int(batch.user[r]))
            pool = on_sale[r].copy()
            pool[items] = False
            choice = np.flatnonzero(pool)
            take = min(negatives, len(choice))
            picked = rng.choice(choice, take, replace=False) if take else choice
            cols[r, 0] = batch.target[r]
            cols[r, 1 : 1 + take] = picked
            cols[r, 1 + take :] = batch.target[r]
            valid[r, 1 : 1 + take] = True
        sub = np.take_along_axis(scores, cols, axis=1)
        sampled.append(metrics.ranks(sub, np.zeros(len(batch), dtype=np.int64), valid))
    full_r, samp_r, n_cand = (_joined(parts) for parts in (full, sampled, n_candidates))
    cold = data.shared.is_cold(examples.target) if len(examples) else np.zeros(0, dtype=bool)
    return {
        "users": float(len(examples)),
        "hr@10": metrics.hit_rate(full_r),
        "ndcg@10": metrics.ndcg(full_r),
        "hr@10_sampled": metrics.hit_rate(samp_r),
        "ndcg@10_sampled": metrics.ndcg(samp_r),
        "cold_start.hr@10": metrics.hit_rate(full_r[cold]),
        "cold_start.n": float(cold.sum()),
        "cold_start.random_hr@10": metrics.random_hit_rate(n_cand[cold]),
    }


def overall(per_region: dict[str, Metrics]) -> Metrics:
    """Combine regions: user-weighted for the main metrics, cold-start-target-weighted for those."""
    users = {r: m["users"] for r, m in per_region.items()}
    cold_n = {r: m["cold_start.n"] for r, m in per_region.items()}
    out: Metrics = {"users": float(sum(users.values()))}
    for key in ("hr@10", "ndcg@10", "hr@10_sampled", "ndcg@10_sampled"):
        out[key] = metrics.weighted_mean({r: m[key] for r, m in per_region.items()}, users)
    for key in ("cold_start.hr@10", "cold_start.random_hr@10"):
        out[key] = metrics.weighted_mean({r: m[key] for r, m in per_region.items()}, cold_n)
    out["cold_start.n"] = float(sum(cold_n.values()))
    return out


def _joined(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
