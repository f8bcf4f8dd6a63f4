"""Catalogue attributes as integer codes: the item side of the model.

The vocabularies are derived from the public catalogue alone (sorted values; price bands by
catalogue quantiles), so every region derives the same codes without exchanging anything.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tasks.recommender.dataset import ATTRIBUTES, Catalogue

PRICE_BANDS = 8
FEATURES = (*ATTRIBUTES, "price_band")


@dataclass(frozen=True)
class ItemFeatures:
    codes: np.ndarray  # int64 (n_items, len(FEATURES))
    vocab: dict[str, tuple[str, ...]]
    launch_time: np.ndarray  # int64 (n_items,)

    @property
    def n_items(self) -> int:
        return len(self.codes)

    def sizes(self) -> tuple[int, ...]:
        return tuple(len(self.vocab[f]) for f in FEATURES)

    def encode(self, attrs: dict[str, str], price: float) -> np.ndarray:
        """Codes for an item described by hand (a new item not in the catalogue)."""
        row = []
        for name in ATTRIBUTES:
            value = attrs.get(name, "")
            if value not in self.vocab[name]:
                known = ", ".join(self.vocab[name])
                raise ValueError(f"unknown {name} {value!r}; the catalogue knows: {known}")
            row.append(self.vocab[name].index(value))
        row.append(_band(np.array([price]), self._edges)[0])
        return np.array(row, dtype=np.int64)

    @property
    def _edges(self) -> np.ndarray:
        return np.array([float(v) for v in self.vocab["price_band"][1:]])


def item_features(catalogue: Catalogue) -> ItemFeatures:
    vocab: dict[str, tuple[str, ...]] = {}
    columns = []
    for name in ATTRIBUTES:
        values = catalogue.attributes[name]
        vocab[name] = tuple(sorted({str(v) for v in values}))
        lookup = {v: i for i, v in enumerate(vocab[name])}
        columns.append(np.array([lookup[str(v)] for v in values], dtype=np.int64))
    qs = np.linspace(0, 1, PRICE_BANDS + 1)[1:-1]
    edges = np.unique(np.quantile(catalogue.price, qs)) if len(catalogue) else np.array([])
    # the band vocabulary records its lower edges, so a hand-described item can be banded too
    vocab["price_band"] = ("-inf", *(f"{e:.2f}" for e in edges))
    columns.append(_band(catalogue.price, np.round(edges, 2)))
    return ItemFeatures(np.stack(columns, axis=1), vocab, catalogue.launch_time.astype(np.int64))


def _band(price: np.ndarray, edges: np.ndarray) -> np.ndarray:
    return np.searchsorted(edges, price, side="right").astype(np.int64)
