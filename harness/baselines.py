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

import multiprocessing
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.api import BUILT_IN, Metrics, Step, Task, TaskError, Weights, load_task

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
    task: Task | str,
    root: Path,
    mode: str,
    fit_settings: FitSettings = FitSettings(),
    regions: list[str] | None = None,
    say: Progress | None = None,
) -> BaselineReport:
    return run_baselines(task, root, (mode,), fit_settings, regions, say)[mode]


def run_baselines(
    task: Task | str,
    root: Path,
    wanted: tuple[str, ...],
    fit_settings: FitSettings = FitSettings(),
    regions: list[str] | None = None,
    say: Progress | None = None,
    processes: int = 1,
) -> dict[str, BaselineReport]:
    """Several baselines at once: every model to train (the centralized one, each region's
    local one) is one fit, and with ``processes`` > 1 the fits run in processes of
    their own, the largest first (a fit is single-threaded work that one process cannot spread
    over two cores; a built-in task, or one named by reference, is loaded in each).

    A report's ``seconds`` is the time its fits took, summed."""
    loaded = load_task(task) if isinstance(task, str) else task
    for mode in wanted:
        if mode not in modes(loaded):
            raise TaskError(f"unknown baseline {mode!r} for task {loaded.name!r}; "
                            f"choose one of {', '.join(modes(loaded))}")  # fmt: skip
    say = say or (lambda _msg: None)
    loaded.settings(fit_settings.settings or {})  # a bad setting fails here, before any fit
    described = loaded.describe(root)
    names = list(regions or described.regions)
    data = {r: loaded.load_region(root, r) for r in names}
    fits = [Fit("centralized", tuple(names))] if "centralized" in wanted else []
    fits += [Fit("local", (r,)) for r in names] if "local" in wanted else []
    # the largest data first (the centralized fit): the small ones fill in around it
    fits.sort(key=lambda f: -sum(loaded.data_size(data[r]) for r in f.regions))
    reference = task if isinstance(task, str) else _reference(loaded)
    if processes > 1 and len(fits) > 1 and reference is not None:
        done = _fit_in_processes(reference, root, fits, fit_settings, processes)
    else:
        done = [_fit_and_score(loaded, root, f, fit_settings, _prefixed(say, f), data)
                for f in fits]  # fmt: skip
    out: dict[str, BaselineReport] = {}
    for mode in wanted:
        if mode in MODEL_MODES:
            mine = [d for d in done if d.fit.mode == mode]
            per_region = {r: m for d in mine for r, m in d.regions.items()}
            epochs = {d.key: d.epochs for d in mine}
            seconds = sum(d.seconds for d in mine)
        else:
            started = time.perf_counter()
            per_region, epochs = loaded.references[mode](data), {}
            seconds = time.perf_counter() - started
        per_region = {r: per_region[r] for r in names}  # in the data set's order
        out[mode] = BaselineReport(mode, described.name, loaded.metrics.combine(per_region),
                                   per_region, seconds, epochs)  # fmt: skip
    return out


@dataclass(frozen=True)
class Fit:
    """One model to train: the centralized one (every region) or one region's local one."""

    mode: str
    regions: tuple[str, ...]

    @property
    def key(self) -> str:
        return "all" if self.mode == "centralized" else self.regions[0]


@dataclass(frozen=True)
class FitResult:
    fit: Fit
    regions: dict[str, Metrics]  # test figures per region
    epochs: int  # the epoch kept
    seconds: float

    @property
    def key(self) -> str:
        return self.fit.key


def _fit_and_score(task: Task, root: Path, job: Fit, fit_settings: FitSettings,
                   say: Progress, data: dict[str, Any] | None = None) -> FitResult:  # fmt: skip
    started = time.perf_counter()
    data = data or {r: task.load_region(root, r) for r in job.regions}
    settings = task.settings(fit_settings.settings or {})
    cap = fit_settings.max_epochs or task.baselines.max_epochs[job.mode]
    weights, epoch = fit(task, root, [data[r] for r in job.regions], settings, fit_settings,
                         cap, say)  # fmt: skip
    scores = {r: task.evaluate(weights, data[r], settings, "test", fit_settings.seed)
              for r in job.regions}  # fmt: skip
    return FitResult(job, scores, epoch, time.perf_counter() - started)


def _fit_in_processes(reference: str, root: Path, fits: list[Fit], fit_settings: FitSettings,
                      processes: int) -> list[FitResult]:  # fmt: skip
    # spawned, not forked: a fork of a process that ran torch's thread pool can hang
    pool = multiprocessing.get_context("spawn").Pool(min(processes, len(fits)))
    try:
        pending = [pool.apply_async(_fit_in_child, (reference, root, f, fit_settings))
                   for f in fits]  # fmt: skip
        results = [p.get() for p in pending]
        pool.close()
        return results
    except BaseException:
        pool.terminate()  # an error or an interrupt: the other fits stop now, not when done
        raise
    finally:
        pool.join()


def _fit_in_child(reference: str, root: Path, job: Fit, fit_settings: FitSettings) -> FitResult:
    task = load_task(reference)
    return _fit_and_score(task, root, job, fit_settings, _prefixed(_to_stderr, job))


def _to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _prefixed(say: Progress, job: Fit) -> Progress:
    label = "centralized" if job.mode == "centralized" else f"local [{job.regions[0]}]"
    return lambda message: say(f"{label} {message}")


def _reference(task: Task) -> str | None:
    """How a process of its own loads ``task``: its built-in name, or None (in-process only)."""
    try:
        return task.name if task.name in BUILT_IN and load_task(task.name) is task else None
    except TaskError:
        return None


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
