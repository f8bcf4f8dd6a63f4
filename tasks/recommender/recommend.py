"""Serving the global model: a shopper's top-k, and which regions' shoppers a new item reaches.

Both read interaction histories from the region's own data directory, on the machine that holds
it; nothing here touches Redis (the caller hands in the model's weights).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from tasks.recommender.dataset import DataError
from tasks.recommender.local_data import RegionData, Shared
from tasks.recommender.model import Recommender
from tasks.recommender.sequences import HISTORY

CHUNK = 2048


def _history(items: np.ndarray) -> np.ndarray:
    recent = items[-HISTORY:]
    return np.concatenate([np.full(HISTORY - len(recent), -1, dtype=np.int64), recent])


def recommend(
    model: Recommender, shared: Shared, data: RegionData, user_id: int, k: int = 10
) -> dict[str, Any]:
    """The user's top ``k`` items now (the region's latest event time), seen items excluded."""
    seqs = data.split.sequences
    found = np.flatnonzero(seqs.users == user_id)
    if not len(found):
        raise DataError(f"user {user_id} has no events in region {data.region!r}")
    items, _times = seqs.of(int(found[0]))
    now = int(seqs.times.max())
    region = shared.meta.regions.index(data.region)
    with torch.no_grad():
        scores = model(
            torch.as_tensor(_history(items))[None], torch.tensor([region]), torch.tensor([now])
        )[0].numpy()
    scores[np.unique(items)] = -np.inf
    top = np.argsort(-scores, kind="stable")[:k]
    top = top[np.isfinite(scores[top])]  # seen and unsellable items are never recommended
    describe = shared.catalogue.describe
    return {
        "user": int(user_id),
        "region": data.region,
        "at": now,
        "recent_history": [describe(int(i)) for i in items[-5:][::-1]],
        "recommendations": [
            {"rank": rank, "score": round(float(scores[i]), 4), **describe(int(i))}
            for rank, i in enumerate(top, start=1)
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
    """For a new item: in each region, the share of its shoppers whose top ``k`` it enters.

    Shoppers are the region's evaluated users, each at their latest event, with their whole
    history; the item is launched at that moment (a brand-new item, scored by attributes).
    """
    codes = torch.as_tensor(shared.features.encode(attrs, price))
    out = {}
    for name, data in regions.items():
        test = data.split.test
        reached = 0
        with torch.no_grad():
            catalogue = model.item_vectors()
            for lo in range(0, len(test), CHUNK):  # (users x catalogue) scores, a chunk at a time
                part = test.take(np.arange(lo, min(lo + CHUNK, len(test))))
                time = torch.as_tensor(part.time)
                users = model.user_vectors(catalogue, torch.as_tensor(part.history),
                                           torch.as_tensor(part.region))  # fmt: skip
                logits = model.logits(catalogue, users, time)
                kth = torch.topk(logits, min(k, logits.shape[1]), dim=1).values[:, -1]
                reached += int((model.new_item_logits(users, codes, time, time) > kth).sum())
        out[name] = {"users": len(test), "shown_to": round(reached / max(len(test), 1), 4),
                     "shoppers_reached": reached}  # fmt: skip
    ranked = sorted(out, key=lambda r: -out[r]["shown_to"])
    return {"item": {**attrs, "price": price}, "k": k, "regions": out, "ranked": ranked}
