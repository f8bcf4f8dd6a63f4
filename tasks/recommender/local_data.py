"""One region's view of a data set: what a regional worker loads, and nothing more.

``load_region`` opens the shared catalogue and that region's folder only; the split and the item
features derived from them are everything training and evaluation need.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasks.recommender.dataset import (
    Catalogue,
    DataError,
    Meta,
    read_catalogue,
    read_interactions,
    read_meta,
)
from tasks.recommender.features import ItemFeatures, item_features
from tasks.recommender.model import ModelConfig, model_config
from tasks.recommender.sequences import HISTORY, Split, split


@dataclass(frozen=True)
class Shared:
    """What every host derives from the public part of a data set."""

    meta: Meta
    catalogue: Catalogue
    features: ItemFeatures

    def model_config(self, **overrides) -> ModelConfig:
        return model_config(self.features, self.meta.regions, **overrides)

    def is_cold(self, items: np.ndarray) -> np.ndarray:
        """Cold-start items: launched at or after the training cut-off."""
        return self.catalogue.launch_time[items] >= self.meta.cutoff


@dataclass(frozen=True)
class RegionData:
    region: str
    shared: Shared
    split: Split

    @property
    def n_users(self) -> int:
        return len(self.split.test)


def load_shared(root: Path) -> Shared:
    meta = read_meta(root)
    catalogue = read_catalogue(root)
    return Shared(meta, catalogue, item_features(catalogue))


def load_region(root: Path, region: str, shared: Shared | None = None) -> RegionData:
    shared = shared or load_shared(root)
    if region not in shared.meta.regions:
        raise DataError(f"unknown region {region!r}; {root} has: {', '.join(shared.meta.regions)}")
    data = read_interactions(root, region, n_items=len(shared.catalogue))
    early = data.timestamp < shared.catalogue.launch_time[data.item_id]
    if early.any():
        raise DataError(
            f"{Path(root) / region}: {int(early.sum())} events happen before their item's "
            "launch_time in catalogue.csv (catalogue and interactions do not belong together)"
        )
    index = shared.meta.regions.index(region)
    return RegionData(region, shared, split(data, region=index, history=HISTORY))
