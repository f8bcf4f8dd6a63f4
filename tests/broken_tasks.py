"""Broken variants of the toy task, as a user's mistakes make them, for the failure tests:
``fedq run --task tests/broken_tasks.py:TRANSPOSED`` and so on (every worker imports them)."""

from __future__ import annotations

from typing import Any

import numpy as np

from tasks.api import Metrics, Trained
from tasks.toy import Points, ToyTask


class Transposed(ToyTask):
    """``train`` returns its weight vector as a column: a shape the global model cannot take."""

    def train(self, weights, data: Points, settings, step, state: Any = None) -> Trained:
        t = super().train(weights, data, settings, step, state)
        return Trained(
            {**t.weights, "w": t.weights["w"].reshape(-1, 1)}, t.n_samples, t.loss, t.seconds
        )


class NanTrain(ToyTask):
    """``train`` diverges: every weight NaN (in every region, or only in ``regions``)."""

    def __init__(self, regions: tuple[str, ...] = ()) -> None:
        self.regions = regions

    def train(self, weights, data: Points, settings, step, state: Any = None) -> Trained:
        t = super().train(weights, data, settings, step, state)
        if self.regions and data.region not in self.regions:
            return t
        nan = {k: np.full_like(v, np.nan) for k, v in t.weights.items()}
        return Trained(nan, t.n_samples, t.loss, t.seconds)


class OutOfRange(ToyTask):
    """``evaluate`` reports an accuracy above 1 (a percentage where a rate belongs)."""

    def evaluate(self, weights, data: Points, settings, part: str, seed: int) -> Metrics:
        out = super().evaluate(weights, data, settings, part, seed)
        return {**out, "accuracy": out["accuracy"] * 100}


class UnevenRegions(NanTrain):
    """A federation with three odd regions, each odd in its own way: ``in``'s training
    diverges, ``me``'s log loss is undefined (NaN, as a cold-start figure is for a region with
    no new item after the cut-off), ``jp`` reports its accuracy as a percentage."""

    def __init__(self) -> None:
        super().__init__(regions=("in",))

    def evaluate(self, weights, data: Points, settings, part: str, seed: int) -> Metrics:
        out = super().evaluate(weights, data, settings, part, seed)
        if data.region == "me":
            return {**out, "log_loss": float("nan")}
        if data.region == "jp":
            return {**out, "accuracy": 100 * out["accuracy"] + 1}
        return out


TRANSPOSED = Transposed()
NAN_TRAIN = NanTrain()
OUT_OF_RANGE = OutOfRange()
UNEVEN = UnevenRegions()
