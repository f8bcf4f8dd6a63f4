"""The recommender's side of the robustness runs (``scripts/attack.py --suite regions``).

A hostile region promotes its merchant's items by spending its norm budget on their item bias
(``promotion_targets``: tensor name -> rows, what ``harness.hostile`` adds to); the runner
scores the final model here, on every region's test shoppers, from the model itself rather than
from the regions' own reports (a lying region's are lies), and measures how far the promotion
got: the share of a region's test shoppers with one of the promoted items in their top 10.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tasks.api import Metrics, Weights

ITEM_BIAS = "item_bias.weight"
PROMOTED_RANK = 100


def promoted_items(data_dir: Path, region: str = "cn", count: int = 3) -> np.ndarray:
    """The merchant's items: ``count`` items on sale from the very start that ``region``'s
    shoppers buy now and then (ranks 100 onwards by purchases there): items the others'
    shoppers see in their top 10 a little, which a promotion would push into many more."""
    from tasks.recommender.local_data import load_region

    data = load_region(data_dir, region)
    launch = data.shared.catalogue.launch_time
    counts = np.bincount(data.split.train.target, minlength=len(launch)).astype(np.float64)
    counts[launch > np.min(launch)] = -1.0
    ranked = np.argsort(-counts, kind="stable")
    return ranked[PROMOTED_RANK : PROMOTED_RANK + count]


def promotion_targets(data_dir: Path) -> dict[str, np.ndarray]:
    """Tensor name -> the rows a promoting region adds to: the promoted items' bias."""
    return {ITEM_BIAS: promoted_items(data_dir)}


def final_scores(
    weights: Weights, data_dir: Path, settings: dict[str, Any]
) -> tuple[dict[str, Metrics], dict[str, float]]:
    """Each region's test figures of the final model (HR@10 and NDCG@10 of the full ranking)
    and its promoted share."""
    from tasks.recommender.evaluate import ModelScorer, evaluate_region
    from tasks.recommender.task import TASK

    items = promoted_items(data_dir)
    scorer = None
    scores: dict[str, Metrics] = {}
    promoted: dict[str, float] = {}
    for region in TASK.describe(data_dir).regions:
        data = TASK.load_region(data_dir, region)
        if scorer is None:
            scorer = ModelScorer(TASK.model(weights, data.shared, settings))
        scores[region] = evaluate_region(scorer, data, "test", negatives=0)
        promoted[region] = promoted_share(scorer, data, items)
    return scores, promoted


def promoted_share(scorer: Any, data: Any, items: np.ndarray, k: int = 10) -> float:
    """The share of the region's test shoppers with one of ``items`` in their top ``k`` (items
    on sale at the time, not bought before)."""
    examples = data.split.test
    launch = data.shared.catalogue.launch_time
    hits = 0
    for lo in range(0, len(examples), 256):
        batch = examples.take(np.arange(lo, min(lo + 256, len(examples))))
        scores = scorer.scores(batch).astype(np.float64)
        scores[launch[None, :] > batch.time[:, None]] = -np.inf
        for row, seen in enumerate(data.split.seen_before(batch)):
            scores[row, seen] = -np.inf
        top = np.argpartition(-scores, k, axis=1)[:, :k]
        hits += int(np.isin(top, items).any(axis=1).sum())
    return hits / max(1, len(examples))
