"""Baselines from the same task code: local-only, centralized, and a task's own references.

- local: each region trains its own model on its own data only (what a silo can do alone);
- centralized: one model on all regions' pooled data, the upper bound a federation approaches;
- a task's references (the recommender's popularity ranking) need no training.
Both model baselines train with the task's own ``train`` (one call per epoch over the whole
data, the optimizer state carried), keep the epoch with the best validation headline and stop
after the task's ``patience`` epochs without improvement, so local and centralized get the same
model selection. The epoch caps are the task's: an epoch of a small region is far shorter than
one of the pooled data.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.api import Metrics, Step, Task, TaskError, Weights

MODEL_MODES = ("local", "centralized")
Progress = Callable[[str], None]


@dataclass(frozen=True)
class FitSettings:
    settings: dict[str, Any] | None = None  # the task's settings (None: its defaults)
    max_epochs: int | None = None  # None: the task's cap for the mode
    seed: int = 0
    threads: int = 1


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


def modes(task: Task) -> tuple[str, ...]:
    return (*MODEL_MODES, *getattr(task, "references", {}))


def run_baseline(
    task: Task,
    root: Path,
    mode: str,
    fit_settings: FitSettings = FitSettings(),
    regions: list[str] | None = None,
    say: Progress | None = None,
) -> BaselineReport:
    if mode not in modes(task):
        raise TaskError(f"unknown baseline {mode!r} for task {task.name!r}; "
                        f"choose one of {', '.join(modes(task))}")  # fmt: skip
    say = say or (lambda _msg: None)
    started = time.perf_counter()
    described = task.describe(root)
    names = list(regions or described.regions)
    data = {r: task.load_region(root, r) for r in names}
    settings = task.settings(fit_settings.settings or {})
    cap = (fit_settings.max_epochs or task.baselines.max_epochs[mode]) if mode in MODEL_MODES else 0
    epochs: dict[str, int] = {}
    if mode == "centralized":
        weights, epochs["all"] = fit(
            task, root, list(data.values()), settings, fit_settings, cap, say
        )
        per_region = {r: task.evaluate(weights, d, settings, "test", fit_settings.seed)
                      for r, d in data.items()}  # fmt: skip
    elif mode == "local":
        per_region = {}
        for r, d in data.items():
            weights, epochs[r] = fit(task, root, [d], settings, fit_settings, cap,
                                     lambda m, r=r: say(f"[{r}] {m}"))  # fmt: skip
            per_region[r] = task.evaluate(weights, d, settings, "test", fit_settings.seed)
    else:
        per_region = task.references[mode](data)
    return BaselineReport(mode, described.name, task.metrics.combine(per_region), per_region,
                          time.perf_counter() - started, epochs)  # fmt: skip


def fit(
    task: Task,
    root: Path,
    regions: list[Any],
    settings: dict[str, Any],
    fit_settings: FitSettings,
    max_epochs: int,
    say: Progress | None = None,
) -> tuple[Weights, int]:
    """Train on the pooled training data of ``regions``; keep the best validation epoch."""
    root_seed = fit_settings.seed
    pooled = regions[0] if len(regions) == 1 else task.pool(regions)
    schema = task.metrics
    weights = task.initial_weights(root, settings, root_seed)
    best, best_value, best_epoch, since, state = weights, float("-inf"), 0, 0, None
    for epoch in range(1, max_epochs + 1):
        step = Step(seed=root_seed * 1_000_003 + epoch, whole_data=True,
                    threads=fit_settings.threads)  # fmt: skip
        trained = task.train(weights, pooled, settings, step, state)
        weights, state = trained.weights, trained.state
        per = {str(i): task.evaluate(weights, d, settings, "validation", root_seed)
               for i, d in enumerate(regions)}  # fmt: skip
        value = schema.combine(per)[schema.headline]
        if say:
            say(f"epoch {epoch}: loss {trained.loss:.4f}, validation "
                f"{schema.label(schema.headline)} {value:.4f}")  # fmt: skip
        if value > best_value:
            best, best_value, best_epoch, since = weights, value, epoch, 0
        else:
            since += 1
            if since >= task.baselines.patience:
                break
    return best, best_epoch
