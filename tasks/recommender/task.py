"""The built-in jewelry recommender as a fedq ``Task``.

Everything fedq's roles know of the recommender goes through here: the catalogue digest, one
region's interactions, the model's weights, local training (with the worker's Adam moments
carried between jobs), leave-last-out evaluation and the popularity reference. torch is
imported only when a model is built, so a coordinator that joins a federation stays small.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from tasks.api import (
    Baselines,
    DataDescription,
    Metric,
    Metrics,
    MetricSchema,
    PrivateJob,
    Step,
    TaskError,
    Trained,
    Weights,
    check_settings,
)

DEFAULTS: dict[str, Any] = {
    "dim": 64,  # embedding size
    "lr": 3e-3,
    "batch_size": 128,
    "examples_per_job": 1024,  # a random subset of the region's training examples per job
    "epochs": 1,
    "prox_mu": 0.0,  # FedProx: mu/2 * ||w - w_start||^2
    "baseline_batch_size": 1024,  # the baselines' epochs over whole data sets
    # DP-SGD (a federation with dp_clip): shoppers expected per step, and steps per job
    "dp_batch_size": 256,
    "dp_steps_per_job": 4,
    "dp_examples_per_shopper": 1,  # each sampled shopper's gradient is of this many examples' mean
}
WARMUP_JOBS = 8  # a worker's first job gathers Adam's moments over this many jobs' batches

METRICS = MetricSchema(
    headline="hr@10",
    metrics=(
        Metric("users", "users"),
        Metric("hr@10", "HR@10", "users"),
        Metric("ndcg@10", "NDCG@10", "users"),
        Metric("hr@10_sampled", "HR@10 (99 neg)", "users"),
        Metric("ndcg@10_sampled", "NDCG@10 (99 neg)", "users"),
        Metric("cold_start.n", "cold-start targets"),
        Metric("cold_start.hr@10", "cold HR@10", "cold_start.n"),
        Metric("cold_start.random_hr@10", "cold HR@10 (random)", "cold_start.n"),
    ),
    validation=("users", "hr@10", "ndcg@10"),
    size="users",
    table=("hr@10", "ndcg@10", "hr@10_sampled", "ndcg@10_sampled", "cold_start.hr@10"),
)


class RecommenderTask:
    """Next-item recommendation from a shopper's last 20 items, her region and item attributes."""

    name = "recommender"
    metrics = METRICS
    # a small region's epoch is a few dozen steps, the pooled data's hundreds: local models may
    # take up to 40 epochs, the centralized one 8 (where it has flattened out)
    baselines = Baselines(max_epochs={"local": 40, "centralized": 8}, patience=2)
    scales = ("small", "default", "large")

    def settings(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        s = check_settings(raw, DEFAULTS, self.name)
        if min(s["dim"], s["batch_size"], s["examples_per_job"], s["epochs"],
               s["baseline_batch_size"], s["dp_batch_size"], s["dp_steps_per_job"],
               s["dp_examples_per_shopper"]) < 1 \
                or s["lr"] <= 0 or s["prox_mu"] < 0:  # fmt: skip
            raise TaskError("recommender: dim, batch sizes, examples_per_job, epochs, "
                            "dp_steps_per_job, dp_examples_per_shopper and lr must be positive, "
                            "prox_mu >= 0")  # fmt: skip
        return s

    def describe(self, data_dir: Path) -> DataDescription:
        from tasks.recommender.dataset import read_meta

        meta = read_meta(data_dir)
        try:
            digest = hashlib.sha256((Path(data_dir) / "catalogue.csv").read_bytes()).hexdigest()
        except FileNotFoundError:
            raise TaskError(f"{Path(data_dir) / 'catalogue.csv'}: not found") from None
        return DataDescription(meta.name, meta.regions, digest[:16])

    def load_region(self, data_dir: Path, region: str):
        from tasks.recommender.local_data import load_region

        return load_region(data_dir, region)

    def data_size(self, data) -> int:
        return len(data.split.train)

    def initial_weights(self, data_dir: Path, settings: Mapping[str, Any], seed: int) -> Weights:
        from tasks.recommender.local_data import load_shared
        from tasks.recommender.model import build, state_to_numpy

        shared = load_shared(data_dir)
        return state_to_numpy(build(shared.model_config(dim=settings["dim"]), shared.features,
                                    seed=seed))  # fmt: skip

    def train(self, weights: Weights, data, settings: Mapping[str, Any], step: Step,
              state: Any = None) -> Trained:  # fmt: skip
        from tasks.recommender.train import TrainConfig, train_local

        batch = settings["baseline_batch_size"] if step.whole_data else settings["batch_size"]
        per_job = settings["examples_per_job"]
        result = train_local(
            data.shared.model_config(dim=settings["dim"]),
            data.shared.features,
            weights,
            data.split.train,
            TrainConfig(
                epochs=1 if step.whole_data else settings["epochs"],
                batch_size=batch,
                lr=settings["lr"] * step.lr_scale,
                prox_mu=0.0 if step.whole_data else settings["prox_mu"],
                max_examples=None if step.whole_data else per_job,
                seed=step.seed,
                threads=step.threads,
                # a worker's first job: gather Adam's moments over eight jobs' worth of batches
                moment_warmup=0 if step.whole_data else WARMUP_JOBS * -(-per_job // batch),
                privacy=step.privacy,
                dp_examples_per_shopper=settings["dp_examples_per_shopper"],
            ),
            carried=state,
        )
        return Trained(result.weights, result.n_samples, result.loss, result.seconds,
                       result.trainer)  # fmt: skip

    def private_job(self, data, settings: Mapping[str, Any]) -> PrivateJob:
        """The unit is one shopper: a step samples shoppers, then one example of each."""
        shoppers = len(np.unique(data.split.train.user))
        if shoppers == 0:
            raise TaskError(f"region {data.region}: no shopper with a training example")
        return PrivateJob(shoppers, min(1.0, settings["dp_batch_size"] / shoppers),
                          settings["dp_steps_per_job"])  # fmt: skip

    def evaluate(self, weights: Weights, data, settings: Mapping[str, Any], part: str,
                 seed: int) -> Metrics:  # fmt: skip
        from tasks.recommender.evaluate import ModelScorer, evaluate_region

        scorer = ModelScorer(self.model(weights, data.shared, settings))
        negatives = {} if part == "test" else {"negatives": 0}  # validation: full ranking only
        return evaluate_region(scorer, data, part, seed=seed, **negatives)

    def pool(self, regions: list) -> Any:
        from tasks.recommender.sequences import Examples

        first = regions[0]
        train = Examples.concat([d.split.train for d in regions])
        return replace(first, region="pooled", split=replace(first.split, train=train))

    @property
    def references(self) -> dict[str, Callable[[dict[str, Any]], dict[str, Metrics]]]:
        """Baselines without a model: items by their interaction count over all regions."""
        return {"popularity": _popularity}

    def generate(self, out: Path, seed: int = 0, scale: str = "default",
                 progress: Callable[[int, int], None] | None = None) -> list[str]:  # fmt: skip
        from tasks.recommender import generate as gen

        generated = gen.generate(seed=seed, scale=scale, progress=progress)
        gen.write(generated, out)
        events = sum(len(d) for d in generated.regions.values())
        lines = [f"{len(generated.catalogue)} items, {events} events, "
                 f"{len(generated.regions)} regions"]  # fmt: skip
        for code, d in generated.regions.items():
            lines.append(f"  {code}: {len(set(d.user_id.tolist()))} users, {len(d)} events")
        return lines

    def service(self, data_dir: Path, region: str, settings: Mapping[str, Any]):
        """The region's online service (``fedq serve``): /recommend and /reach."""
        from tasks.recommender.service import RecommenderService

        return RecommenderService(data_dir, region, settings)

    def model(self, weights: Weights, shared, settings: Mapping[str, Any]):
        from tasks.recommender.model import build, load_numpy_state

        model = build(shared.model_config(dim=settings["dim"]), shared.features)
        load_numpy_state(model, weights)
        return model.eval()


def _popularity(data: dict[str, Any]) -> dict[str, Metrics]:
    from tasks.recommender.evaluate import PopularityScorer, evaluate_region, popularity_counts

    shared = next(iter(data.values())).shared
    counts = popularity_counts((d.split.train_items() for d in data.values()),
                               len(shared.catalogue))  # fmt: skip
    scorer = PopularityScorer(counts, shared.catalogue.launch_time)
    return {r: evaluate_region(scorer, d) for r, d in data.items()}


TASK = RecommenderTask()
