"""``toy``: a tiny built-in task for fedq's own tests and demos, numpy only (no torch).

Logistic regression on a few features: two tensors (``w``, ``b``). Each region's points come
from one shared rule plus a regional shift, so federating helps the small regions. The system
tests of the aggregator, the dispatcher and exactly-once run on it: they exercise fedq, not a
model, and start in a fraction of a second.

Data directory: ``meta.json`` (format ``fedq-toy/1``, name, regions, features) and
``<region>/points.csv`` (the features, then ``label``, in time order: the last fifth is the
test set, the fifth before it validation).
"""

from __future__ import annotations

import csv
import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tasks.api import (
    Baselines,
    DataDescription,
    Metric,
    Metrics,
    MetricSchema,
    Step,
    TaskError,
    Trained,
    Weights,
    check_settings,
    read_meta_json,
)

FORMAT = "fedq-toy/1"
REGIONS = {"cn": 1200, "us": 900, "eu": 700, "in": 500, "jp": 300, "me": 120}
DEFAULTS: dict[str, Any] = {
    "lr": 0.5,
    "batch_size": 32,
    "examples_per_job": 128,
    "epochs": 1,
    "job_seconds": 0.0,  # a train job takes at least this long: stands for a real model's work
}


@dataclass(frozen=True)
class Points:
    region: str
    parts: dict[str, tuple[np.ndarray, np.ndarray]]  # train/validation/test -> (x, y in {0, 1})

    def part(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        return self.parts[name]


def time_split(region: str, x: np.ndarray, y: np.ndarray) -> Points:
    n = len(y)
    cuts = {
        "train": (0, n * 3 // 5),
        "validation": (n * 3 // 5, n * 4 // 5),
        "test": (n * 4 // 5, n),
    }
    return Points(region, {k: (x[lo:hi], y[lo:hi]) for k, (lo, hi) in cuts.items()})


class ToyTask:
    name = "toy"
    metrics = MetricSchema(
        headline="accuracy",
        metrics=(
            Metric("n", "points"),
            Metric("accuracy", "accuracy", "n"),
            Metric("log_loss", "log loss", "n", high=1e3),
        ),  # fmt: skip
        validation=("n", "accuracy", "log_loss"),
        size="n",
        table=("accuracy", "log_loss"),
    )
    baselines = Baselines(max_epochs={"local": 10, "centralized": 10}, patience=2)
    # "wide": 200 features, a model whose update directions mean something (the guard's tests)
    scales = ("default", "wide")

    def settings(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        s = check_settings(raw, DEFAULTS, self.name)
        if s["lr"] <= 0 or min(s["batch_size"], s["examples_per_job"], s["epochs"]) < 1:
            raise TaskError("toy: lr, batch_size, examples_per_job and epochs must be positive")
        if not 0 <= s["job_seconds"] <= 600:
            raise TaskError("toy: job_seconds must be in [0, 600]")
        return s

    def describe(self, data_dir: Path) -> DataDescription:
        meta = _meta(data_dir)
        digest = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:16]
        return DataDescription(meta["name"], tuple(meta["regions"]), digest)

    def load_region(self, data_dir: Path, region: str) -> Points:
        meta = _meta(data_dir)
        if region not in meta["regions"]:
            raise TaskError(f"unknown region {region!r}; {data_dir} has {meta['regions']}")
        path = Path(data_dir) / region / "points.csv"
        try:
            rows = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float32, ndmin=2)
        except (OSError, ValueError) as exc:
            raise TaskError(f"{path}: {exc}") from None
        if rows.shape[1] != meta["features"] + 1 or not np.isfinite(rows).all():
            raise TaskError(f"{path}: expected {meta['features']} features and a label per row")
        return time_split(region, rows[:, :-1], rows[:, -1])

    def data_size(self, data: Points) -> int:
        return len(data.part("train")[1])

    def initial_weights(self, data_dir: Path, settings: Mapping[str, Any], seed: int) -> Weights:
        rng = np.random.default_rng(seed)
        features = _meta(data_dir)["features"]
        return {"w": rng.normal(0, 0.01, (features,)).astype(np.float32),
                "b": np.zeros(1, dtype=np.float32)}  # fmt: skip

    def train(self, weights: Weights, data: Points, settings: Mapping[str, Any], step: Step,
              state: Any = None) -> Trained:  # fmt: skip
        started = time.perf_counter()
        rng = np.random.default_rng(step.seed)
        x, y = data.part("train")
        if not step.whole_data and len(y) > settings["examples_per_job"]:
            pick = rng.choice(len(y), settings["examples_per_job"], replace=False)
            x, y = x[pick], y[pick]
        w, b = weights["w"].astype(np.float64), weights["b"].astype(np.float64)
        lr, size, losses = settings["lr"] * step.lr_scale, settings["batch_size"], []
        for _ in range(1 if step.whole_data else settings["epochs"]):
            order = rng.permutation(len(y))
            for lo in range(0, len(y), size):
                xb, yb = x[order[lo : lo + size]], y[order[lo : lo + size]]
                p = _sigmoid(xb @ w + b[0])
                losses.append(_log_loss(p, yb))
                w -= lr * xb.T @ (p - yb) / len(yb)
                b -= lr * np.array([np.mean(p - yb)])
        if not step.whole_data:
            time.sleep(max(0.0, settings["job_seconds"] - (time.perf_counter() - started)))
        return Trained(
            {"w": w.astype(np.float32), "b": b.astype(np.float32)},
            len(y),
            float(np.mean(losses)) if losses else 0.0,
            time.perf_counter() - started,
        )

    def evaluate(self, weights: Weights, data: Points, settings: Mapping[str, Any], part: str,
                 seed: int) -> Metrics:  # fmt: skip
        x, y = data.part(part)
        p = _sigmoid(x @ weights["w"].astype(np.float64) + float(weights["b"][0]))
        accuracy = float(np.mean((p >= 0.5) == (y == 1))) if len(y) else float("nan")
        return {"n": float(len(y)), "accuracy": accuracy, "log_loss": _log_loss(p, y)}

    def pool(self, regions: list[Points]) -> Points:
        parts = [d.part("train") for d in regions]
        train = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
        return Points("pooled", {"train": train})

    def generate(self, out: Path, seed: int = 0, scale: str = "default",
                 progress=None) -> list[str]:  # fmt: skip
        rng = np.random.default_rng(seed)
        features = 200 if scale == "wide" else 4
        shared = rng.normal(0, 1.5, features)
        out = Path(out)
        for region, n in REGIONS.items():
            own = shared + rng.normal(0, 0.5, features)
            x = rng.normal(0, 1, (n, features))
            y = (rng.random(n) < _sigmoid(x @ own + rng.normal(0, 0.3))).astype(int)
            (out / region).mkdir(parents=True, exist_ok=True)
            with (out / region / "points.csv").open("w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow([*(f"x{i}" for i in range(features)), "label"])
                writer.writerows([*(f"{v:.5f}" for v in row), int(label)]
                                 for row, label in zip(x, y, strict=True))  # fmt: skip
        meta = {"format": FORMAT, "name": f"toy-seed{seed}", "regions": list(REGIONS),
                "features": features}  # fmt: skip
        (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        return [f"{sum(REGIONS.values())} points, {len(REGIONS)} regions"]


def _meta(data_dir: Path) -> dict[str, Any]:
    return read_meta_json(data_dir, FORMAT, "toy")


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))


def _log_loss(p: np.ndarray, y: np.ndarray) -> float:
    if not len(y):
        return float("nan")
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


TASK = ToyTask()
