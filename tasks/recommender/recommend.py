"""Ranking with the global model: a shopper's top-k, and how many shoppers a new item reaches.

A ``Ranker`` is one model version made ready to rank: the catalogue's item vectors are computed
once (by the evaluation's ``ModelScorer``, whose ``score`` is the one scoring path of the
federated evaluation, ``fedq recommend`` and the regional service), and the per-shopper k-th
best scores a reach question needs are computed once per k. Histories come from the region's
own data directory, on the machine that holds it; nothing here touches Redis.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from tasks.recommender.dataset import DataError
from tasks.recommender.evaluate import ModelScorer
from tasks.recommender.local_data import RegionData, Shared
from tasks.recommender.model import Recommender
from tasks.recommender.sequences import HISTORY

CHUNK = 2048
REACH_CACHE = 8  # k values whose per-shopper thresholds a ranker keeps


def history_row(items: np.ndarray) -> np.ndarray:
    """The model's input for a history (oldest first): its last ``HISTORY`` items, -1 padded."""
    recent = np.asarray(items, dtype=np.int64)[-HISTORY:]
    return np.concatenate([np.full(HISTORY - len(recent), -1, dtype=np.int64), recent])


def shopper_history(data: RegionData, user_id: int, at: int | None = None
                    ) -> tuple[np.ndarray, int]:  # fmt: skip
    """A shopper's items (oldest first) up to ``at`` (default: the region's latest event time,
    its "now"), and that time; DataError if the shopper has no events in the region."""
    seqs = data.split.sequences
    found = np.flatnonzero(seqs.users == user_id)
    if not len(found):
        raise DataError(f"user {user_id} has no events in region {data.region!r}")
    items, times = seqs.of(int(found[0]))
    now = region_now(data) if at is None else int(at)
    return items[times <= now], now


def region_now(data: RegionData) -> int:
    """The region's latest event time: "now" for a data set recorded in the past."""
    times = data.split.sequences.times
    return int(times.max()) if len(times) else 0


@dataclass(frozen=True)
class Query:
    """One ranking question: a shopper's items so far (oldest first), region, time, and for a
    top-k how many items and which never to show."""

    recent: np.ndarray
    region: int
    at: int
    k: int = 10
    exclude: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


class Ranker:
    """One model version, ready to rank a catalogue for many requests (thread-safe)."""

    def __init__(self, model: Recommender, shared: Shared) -> None:
        self.model = model.eval()
        self.scorer = ModelScorer(model)
        self.launch_time = shared.catalogue.launch_time
        self.features = shared.features
        self._thresholds: dict[tuple[str, int], tuple[torch.Tensor, ...]] = {}
        self._lock = threading.Lock()

    def scores(self, recent: np.ndarray, region: int, at: int) -> np.ndarray:
        """(n_items,) scores for a shopper of ``region`` whose items so far are ``recent``."""
        return self.scores_of([Query(recent, region, at)])[0]

    def scores_of(self, queries: list[Query]) -> np.ndarray:
        """(len(queries), n_items) scores, all queries in one pass of the model."""
        history = np.stack([history_row(q.recent) for q in queries])
        region = np.array([q.region for q in queries], dtype=np.int64)
        at = np.array([q.at for q in queries], dtype=np.int64)
        return self.scorer.score(history, region, at)

    def top(self, recent: np.ndarray, region: int, at: int, k: int, exclude: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
        """The ``k`` best items on sale at ``at`` and not in ``exclude``: (ids, scores), best
        first, ties by item id."""
        return self.top_of([Query(recent, region, at, k, exclude)])[0]

    def top_of(self, queries: list[Query]) -> list[tuple[np.ndarray, np.ndarray]]:
        """``top`` for each query, scored together: a batch costs about what one query does
        (the model's per-call overhead dominates a single shopper's few products)."""
        out = []
        for q, scores in zip(queries, self.scores_of(queries), strict=True):
            allowed = self.launch_time <= q.at
            allowed[q.exclude] = False
            candidates = np.flatnonzero(allowed)
            if len(candidates) > q.k:
                candidates = candidates[np.argpartition(-scores[candidates], q.k - 1)[: q.k]]
            best = candidates[np.lexsort((candidates, -scores[candidates]))]
            out.append((best, scores[best]))
        return out

    def reach(self, data: RegionData, codes: np.ndarray, k: int) -> int:
        """How many of the region's evaluated shoppers (each at their latest event, with their
        whole history) would have a new item with attribute ``codes``, launched that moment,
        in their top ``k``."""
        users, time, kth = self._threshold(data, k)
        with torch.no_grad():
            scores = self.model.new_item_logits(users, torch.as_tensor(codes), time, time)
        return int((scores > kth).sum())

    def _threshold(self, data: RegionData, k: int) -> tuple[torch.Tensor, ...]:
        key = (data.region, k)
        with self._lock:  # computed once per (region, k), however many requests ask at once
            if key not in self._thresholds:
                if len(self._thresholds) >= REACH_CACHE:
                    self._thresholds.pop(next(iter(self._thresholds)))
                self._thresholds[key] = self._compute_threshold(data, k)
            return self._thresholds[key]

    def _compute_threshold(self, data: RegionData, k: int) -> tuple[torch.Tensor, ...]:
        test = data.split.test
        users, times, kths = [], [], []
        items = self.scorer.items
        with torch.no_grad():
            for lo in range(0, len(test), CHUNK):  # (users x catalogue) scores, a chunk at a time
                part = test.take(np.arange(lo, min(lo + CHUNK, len(test))))
                time = torch.as_tensor(part.time)
                vectors = self.model.user_vectors(items, torch.as_tensor(part.history),
                                                  torch.as_tensor(part.region))  # fmt: skip
                logits = self.model.logits(items, vectors, time)
                kths.append(torch.topk(logits, min(k, logits.shape[1]), dim=1).values[:, -1])
                users.append(vectors)
                times.append(time)
        d = self.model.config.dim
        if not users:
            return torch.zeros(0, d), torch.zeros(0, dtype=torch.int64), torch.zeros(0)
        return torch.cat(users), torch.cat(times), torch.cat(kths)


def recommend(
    model: Recommender, shared: Shared, data: RegionData, user_id: int, k: int = 10
) -> dict[str, Any]:
    """The user's top ``k`` items now (the region's latest event time), seen items excluded."""
    items, now = shopper_history(data, user_id)
    region = shared.meta.regions.index(data.region)
    best, scores = Ranker(model, shared).top(items, region, now, k, np.unique(items))
    describe = shared.catalogue.describe
    return {
        "user": int(user_id),
        "region": data.region,
        "at": now,
        "recent_history": [describe(int(i)) for i in items[-5:][::-1]],
        "recommendations": [
            {"rank": rank, "score": round(float(s), 4), **describe(int(i))}
            for rank, (i, s) in enumerate(zip(best, scores, strict=True), start=1)
        ],
    }


def audience(
    model: Recommender,
    shared: Shared,
    regions: dict[str, RegionData],
    attrs: dict[str, str],
    price: float,
    k: int = 10,
) -> dict[str, Any]:
    """For a new item: in each region, the share of its shoppers whose top ``k`` it enters."""
    codes = shared.features.encode(attrs, price)
    ranker = Ranker(model, shared)
    out = {}
    for name, data in regions.items():
        reached, n = ranker.reach(data, codes, k), len(data.split.test)
        out[name] = {"users": n, "shown_to": round(reached / max(n, 1), 4),
                     "shoppers_reached": reached}  # fmt: skip
    ranked = sorted(out, key=lambda r: -out[r]["shown_to"])
    return {"item": {**attrs, "price": price}, "k": k, "regions": out, "ranked": ranked}
