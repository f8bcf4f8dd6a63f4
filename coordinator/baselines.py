"""Baselines from the same task code: popularity, local-only, centralized.

- popularity: items ranked by their interaction count over every region's training data;
- local: each region trains its own model on its own data only (what a silo can do alone);
- centralized: one model on all regions' pooled data, the upper bound a federation approaches.
Model baselines keep the epoch with the best validation HR@10 (full ranking) and stop after
``patience`` epochs without improvement, so local and centralized get the same model selection.
The epoch cap differs because an epoch does: a small region's epoch is a few dozen steps, the
pooled data's is hundreds, so local models may take up to 40 epochs and the centralized one 8
(where it has flattened out, and which keeps it within its time goal).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from shared.task.evaluate import (
    Metrics,
    ModelScorer,
    PopularityScorer,
    evaluate_region,
    overall,
    popularity_counts,
)
from shared.task.local_data import RegionData, load_region, load_shared
from shared.task.model import Recommender, build, load_numpy_state, state_to_numpy
from shared.task.sequences import Examples
from shared.task.train import StateDict, TrainConfig, Trainer

MODES = ("popularity", "local", "centralized")
Progress = Callable[[str], None]


DEFAULT_MAX_EPOCHS = {"local": 40, "centralized": 8}


@dataclass(frozen=True)
class FitSettings:
    train: TrainConfig = TrainConfig()
    max_epochs: int | None = None  # None: the mode's default cap
    patience: int = 2
    init_seed: int = 0


@dataclass(frozen=True)
class BaselineReport:
    mode: str
    data: str
    overall: Metrics
    regions: dict[str, Metrics]
    seconds: float
    epochs: dict[str, int]

    def to_json(self) -> dict:
        return {
            "mode": self.mode,
            "data": self.data,
            "overall": self.overall,
            "regions": self.regions,
            "seconds": round(self.seconds, 2),
            "epochs": self.epochs,
        }


def run_baseline(
    root: Path,
    mode: str,
    settings: FitSettings = FitSettings(),
    regions: list[str] | None = None,
    say: Progress | None = None,
    batches: Callable[[int, int], None] | None = None,
) -> BaselineReport:
    """``batches(done, total)`` is called as each epoch's batches go by (a progress bar)."""
    if mode not in MODES:
        raise ValueError(f"unknown baseline mode {mode!r}; choose one of {', '.join(MODES)}")
    say = say or (lambda _msg: None)
    started = time.perf_counter()
    shared = load_shared(root)
    names = list(regions or shared.meta.regions)
    data = {r: load_region(root, r, shared) for r in names}
    epochs: dict[str, int] = {}
    if mode == "popularity":
        counts = popularity_counts(
            (d.split.train_items() for d in data.values()), len(shared.catalogue)
        )
        scorer = PopularityScorer(counts, shared.catalogue.launch_time)
        per_region = {r: evaluate_region(scorer, d) for r, d in data.items()}
    elif mode == "centralized":
        settings = _capped(settings, mode)
        model, epochs["all"] = fit(list(data.values()), settings, say=say, batches=batches)
        per_region = {r: evaluate_region(ModelScorer(model), d) for r, d in data.items()}
    else:
        per_region = {}
        settings = _capped(settings, mode)
        for r, d in data.items():
            model, epochs[r] = fit([d], settings, say=lambda m, r=r: say(f"[{r}] {m}"),
                                   batches=batches)  # fmt: skip
            per_region[r] = evaluate_region(ModelScorer(model), d)
    return BaselineReport(
        mode,
        shared.meta.name,
        overall(per_region),
        per_region,
        time.perf_counter() - started,
        epochs,
    )


def fit(
    regions: list[RegionData],
    settings: FitSettings,
    say: Progress | None = None,
    batches: Callable[[int, int], None] | None = None,
) -> tuple[Recommender, int]:
    """Train on the pooled training examples of ``regions``; keep the best validation epoch."""
    shared = regions[0].shared
    config = shared.model_config()
    examples = Examples.concat([d.split.train for d in regions])
    weights: StateDict = state_to_numpy(build(config, shared.features, settings.init_seed))
    trainer = Trainer(config, shared.features, weights, settings.train)
    best, best_hr, best_epoch, since = weights, -1.0, 0, 0
    for epoch in range(1, (settings.max_epochs or DEFAULT_MAX_EPOCHS["centralized"]) + 1):
        loss = trainer.run_epoch(examples, batches)
        scorer = ModelScorer(trainer.model)
        per = {
            d.region: evaluate_region(scorer, d, which="validation", negatives=0) for d in regions
        }
        hr = overall(per)["hr@10"]
        if say:
            say(f"epoch {epoch}: loss {loss:.4f}, validation HR@10 {hr:.4f}")
        if hr > best_hr:
            best, best_hr, best_epoch, since = trainer.weights(), hr, epoch, 0
        else:
            since += 1
            if since >= settings.patience:
                break
    model = build(config, shared.features)
    load_numpy_state(model, best)
    return model.eval(), best_epoch


def _capped(settings: FitSettings, mode: str) -> FitSettings:
    if settings.max_epochs is not None:
        return settings
    return replace(settings, max_epochs=DEFAULT_MAX_EPOCHS[mode])
