"""The built-in card-payment fraud detector as a fedq ``Task``: a small MLP on tabular payments.

Inputs are fixed transforms of each payment (no statistics of any region's data, so every host
computes the same features): log amount, log account age, payments in 24 h, log distance, new
device, foreign merchant, the local hour, the category, the channel and the region (one-hot).
Training is plain binary cross-entropy with Adam (the worker's moments carried between jobs, as
the recommender's); the headline is PR-AUC on the test period.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping
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
)
from tasks.fraud import data as fraud_data
from tasks.fraud import metrics as fraud_metrics

DEFAULTS: dict[str, Any] = {
    "hidden": 64,
    "lr": 2e-3,
    "batch_size": 256,
    "examples_per_job": 2048,  # a random subset of the region's training payments per job
    "epochs": 1,
    "baseline_batch_size": 256,
}
METRICS = MetricSchema(
    headline="pr_auc",
    metrics=(
        Metric("payments", "payments"),
        Metric("frauds", "frauds"),
        Metric("pr_auc", "PR-AUC", "frauds"),
        Metric("roc_auc", "ROC-AUC", "payments"),
        Metric("recall@1%fpr", "recall @1% FPR", "frauds"),
    ),
    validation=("payments", "frauds", "pr_auc"),
    size="payments",
    table=("pr_auc", "roc_auc", "recall@1%fpr"),
)
N_FEATURES = 6 + 24 + len(fraud_data.CATEGORIES) + len(fraud_data.CHANNELS)


@dataclass(frozen=True)
class RegionPayments:
    region: str
    index: int  # the region's position in the federation's list (its one-hot input)
    n_regions: int
    parts: dict[str, tuple[np.ndarray, np.ndarray]]  # train/validation/test -> (features, label)


def features(p: fraud_data.Payments, region: int, n_regions: int) -> np.ndarray:
    """(n, N_FEATURES + n_regions) float32 from fixed transforms of each payment."""
    n = len(p)
    numeric = np.stack([np.log1p(p.amount) / 4, np.log1p(p.account_age_days) / 7,
                        p.txn_24h / 5, np.log1p(p.distance_km) / 6, p.new_device.astype(float),
                        p.foreign.astype(float)], axis=1)  # fmt: skip
    out = np.zeros((n, N_FEATURES + n_regions), dtype=np.float32)
    out[:, :6] = numeric
    rows = np.arange(n)
    out[rows, 6 + p.hour] = 1
    out[rows, 30 + p.category] = 1
    out[rows, 30 + len(fraud_data.CATEGORIES) + p.channel] = 1
    out[:, N_FEATURES + region] = 1
    return out


class FraudTask:
    """Is this card payment fraud? One classifier for every region, trained where the data is."""

    name = "fraud"
    metrics = METRICS
    baselines = Baselines(max_epochs={"local": 30, "centralized": 12}, patience=3)
    scales = tuple(fraud_data.SCALES)
    # what `fedq run --task fraud` uses unless told otherwise: measured on the default data
    # (README), PR-AUC federated / centralized was 0.80 at 900 versions, 0.94 at 3000, 0.96 at
    # 6000 (175 s on 2 cores)
    run_defaults = {"target_versions": 6000, "eval_every": 2000}

    def settings(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        s = check_settings(raw, DEFAULTS, self.name)
        if min(s["hidden"], s["batch_size"], s["examples_per_job"], s["epochs"],
               s["baseline_batch_size"]) < 1 or s["lr"] <= 0:  # fmt: skip
            raise TaskError("fraud: hidden, batch sizes, examples_per_job, epochs and lr must be "
                            "positive")  # fmt: skip
        return s

    def describe(self, data_dir: Path) -> DataDescription:
        meta = fraud_data.read_meta(data_dir)
        digest = hashlib.sha256((Path(data_dir) / "meta.json").read_bytes()).hexdigest()[:16]
        return DataDescription(meta.name, meta.regions, digest)

    def load_region(self, data_dir: Path, region: str) -> RegionPayments:
        meta = fraud_data.read_meta(data_dir)
        if region not in meta.regions:
            raise TaskError(f"unknown region {region!r}; {data_dir} has: {', '.join(meta.regions)}")
        payments = fraud_data.read_payments(data_dir, region)
        x = features(payments, meta.regions.index(region), len(meta.regions))
        y = payments.label.astype(np.float32)
        cuts = {"train": payments.time < meta.validation_from,
                "validation": (payments.time >= meta.validation_from)
                & (payments.time < meta.test_from),
                "test": payments.time >= meta.test_from}  # fmt: skip
        return RegionPayments(region, meta.regions.index(region), len(meta.regions),
                              {k: (x[m], y[m]) for k, m in cuts.items()})  # fmt: skip

    def data_size(self, data: RegionPayments) -> int:
        return len(data.parts["train"][1])

    def initial_weights(self, data_dir: Path, settings: Mapping[str, Any], seed: int) -> Weights:
        n_regions = len(fraud_data.read_meta(data_dir).regions)
        return _state(_model(N_FEATURES + n_regions, settings["hidden"], seed))

    def train(self, weights: Weights, data: RegionPayments, settings: Mapping[str, Any],
              step: Step, state: Any = None) -> Trained:  # fmt: skip
        import torch
        from torch.nn import functional as F

        torch.set_num_threads(step.threads)
        started = time.perf_counter()
        rng = np.random.default_rng(step.seed)
        x, y = data.parts["train"]
        if not len(y):
            raise ValueError(f"region {data.region} has no training payments")
        if not step.whole_data and len(y) > settings["examples_per_job"]:
            pick = rng.choice(len(y), settings["examples_per_job"], replace=False)
            x, y = x[pick], y[pick]
        model = _model(x.shape[1], settings["hidden"], 0)
        _load(model, weights)
        optimizer = torch.optim.Adam(model.parameters(), lr=settings["lr"] * step.lr_scale)
        if state is not None:
            optimizer.load_state_dict(state)
            for group in optimizer.param_groups:
                group["lr"] = settings["lr"] * step.lr_scale
        size = settings["baseline_batch_size"] if step.whole_data else settings["batch_size"]
        xt, yt, total = torch.from_numpy(x), torch.from_numpy(y), 0.0
        model.train()
        for _ in range(1 if step.whole_data else settings["epochs"]):
            order = torch.from_numpy(rng.permutation(len(y)))
            for lo in range(0, len(y), size):
                idx = order[lo : lo + size]
                loss = F.binary_cross_entropy_with_logits(model(xt[idx]).squeeze(1), yt[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(idx)
        mean = total / len(y) / (1 if step.whole_data else settings["epochs"])
        if not np.isfinite(mean):
            raise FloatingPointError(f"training diverged (mean loss {mean}); lower the lr")
        return Trained(_state(model), len(y), mean, time.perf_counter() - started,
                       optimizer.state_dict())  # fmt: skip

    def evaluate(self, weights: Weights, data: RegionPayments, settings: Mapping[str, Any],
                 part: str, seed: int) -> Metrics:  # fmt: skip
        x, y = data.parts[part]
        scores = self.scores(weights, x, settings)
        return {
            "payments": float(len(y)),
            "frauds": float(y.sum()),
            "pr_auc": fraud_metrics.average_precision(scores, y),
            "roc_auc": fraud_metrics.roc_auc(scores, y),
            "recall@1%fpr": fraud_metrics.recall_at_fpr(scores, y, 0.01),
        }

    def scores(self, weights: Weights, x: np.ndarray, settings: Mapping[str, Any]) -> np.ndarray:
        import torch

        model = _model(x.shape[1], settings["hidden"], 0)
        _load(model, weights)
        with torch.no_grad():
            return model.eval()(torch.from_numpy(x)).squeeze(1).numpy()

    def pool(self, regions: list[RegionPayments]) -> RegionPayments:
        parts = [d.parts["train"] for d in regions]
        train = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
        return RegionPayments("pooled", -1, regions[0].n_regions, {"train": train})

    def generate(self, out: Path, seed: int = 0, scale: str = "default",
                 progress: Callable[[int, int], None] | None = None) -> list[str]:  # fmt: skip
        meta, regions = fraud_data.generate(seed, scale, progress)
        fraud_data.write(out, meta, regions)
        total = sum(len(p) for p in regions.values())
        frauds = sum(int(p.label.sum()) for p in regions.values())
        lines = [f"{total} payments ({frauds} frauds), {len(regions)} regions"]
        lines += [f"  {r}: {len(p)} payments, {int(p.label.sum())} frauds"
                  for r, p in regions.items()]  # fmt: skip
        return lines


def _model(inputs: int, hidden: int, seed: int):
    import torch
    from torch import nn

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, hidden // 2),
                             nn.ReLU(), nn.Linear(hidden // 2, 1))  # fmt: skip


def _state(model) -> Weights:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def _load(model, weights: Weights) -> None:
    import torch

    model.load_state_dict({k: torch.from_numpy(np.asarray(v).copy()) for k, v in weights.items()})


TASK = FraudTask()
