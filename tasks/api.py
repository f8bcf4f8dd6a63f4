"""The task plug-in boundary: everything the federation knows of a model and its data.

fedq federates any model that can be written as a ``Task``: dispatch, aggregation, validation,
signing, the audit and the reports only ever see weights (a mapping of names to numpy arrays),
sample counts, losses and named metrics. A task is named in the federation record by a built-in
name (``recommender``, ``fraud``, ``toy``), a dotted path (``package.module:attr``) or a file
(``path/to/task.py:attr``); every worker imports it from its own host.

A task's metric schema travels in the federation record, so the aggregator and the views check
and combine evaluation results without importing the task (or torch).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import math
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from shared.codec import Weights
from shared.errors import FedqError
from shared.privacy import DPSGD

Metrics = dict[str, float]
Say = Callable[[str], None]

BUILT_IN = {
    "recommender": "tasks.recommender.task:TASK",
    "fraud": "tasks.fraud.task:TASK",
    "toy": "tasks.toy:TASK",
}
MAX_COUNT = 1e9


class TaskError(FedqError):
    """A task that cannot be loaded, settings it refuses, or data that is not the task's."""


@dataclass(frozen=True)
class Metric:
    """One evaluation figure. ``weight`` names the count that weighs it when regions are
    combined (None: it is a count, and counts add up)."""

    name: str
    label: str
    weight: str | None = None
    low: float = 0.0
    high: float = 1.0

    @property
    def is_count(self) -> bool:
        return self.weight is None


@dataclass(frozen=True)
class MetricSchema:
    """What a task's evaluation reports: the checks, the combination across regions and the
    report columns all come from here."""

    headline: str  # the figure runs are judged and stopped by (validation) and compared on
    metrics: tuple[Metric, ...]  # every figure of a test result
    validation: tuple[str, ...]  # the figures a validation result carries (headline included)
    size: str  # the count shown beside a region's figures ("users", "transactions")
    table: tuple[str, ...]  # report columns, most important first

    def __post_init__(self) -> None:
        names = {m.name for m in self.metrics}
        needed = {self.headline, self.size, *self.validation, *self.table}
        needed |= {m.weight for m in self.metrics if m.weight}
        if needed - names:
            raise TaskError(f"metric schema names unknown metrics: {sorted(needed - names)}")
        if self.headline not in self.validation:
            raise TaskError("the headline metric must be part of the validation metrics")
        for m in self.metrics:
            if m.weight and (m.weight not in self.validation) and m.name in self.validation:
                raise TaskError(f"validation metric {m.name!r} needs its weight {m.weight!r}")

    def metric(self, name: str) -> Metric:
        return next(m for m in self.metrics if m.name == name)

    def label(self, name: str) -> str:
        return self.metric(name).label

    def names(self, part: str) -> tuple[str, ...]:
        return tuple(m.name for m in self.metrics) if part == "test" else self.validation

    def check(self, raw: Any, part: str) -> Metrics:
        """The figures of a ``part`` ("test" or "validation") result, each a finite number in
        its range; ValueError naming the first problem. Every count must be there; any other
        figure may be absent: it is undefined for the region (a small region's test split with
        no example of what it measures), and an absent figure counts for nothing when regions
        are combined (``combine``), where a NaN would have made the whole result unsendable."""
        if not isinstance(raw, dict):
            raise ValueError(f"{part!r} is not an object")
        names = self.names(part)
        missing = [n for n in names if n not in raw and self.metric(n).is_count]
        if missing:
            raise ValueError(f"{part!r} lacks {missing[:4]}")
        out = {}
        for name in (n for n in names if n in raw):
            value, m = raw[name], self.metric(name)
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise ValueError(f"{part}.{name} is not a number")
            value = float(value)
            high = MAX_COUNT if m.is_count else m.high
            if not math.isfinite(value) or not m.low <= value <= high:
                raise ValueError(f"{part}.{name} = {value!r} is outside [{m.low:g}, {high:g}]")
            out[name] = value
        return out

    def combine(self, per_region: Mapping[str, Metrics]) -> Metrics:
        """Regions combined: counts add up, every other figure is the mean weighted by its
        count (regions without the figure, without a finite one or with weight 0 are left out;
        NaN if none has it: reports show it as "-")."""
        out: Metrics = {}
        for m in self.metrics:
            present = {r: v[m.name] for r, v in per_region.items() if m.name in v}
            if m.is_count:
                out[m.name] = float(sum(present.values()))
                continue
            weights = {r: per_region[r].get(m.weight, 0.0) for r in present}
            keep = [r for r in present if math.isfinite(present[r]) and weights[r] > 0]
            total = sum(weights[r] for r in keep)
            out[m.name] = (sum(present[r] * weights[r] for r in keep) / total if total
                           else float("nan"))  # fmt: skip
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "headline": self.headline,
            "metrics": [[m.name, m.label, m.weight, m.low, m.high] for m in self.metrics],
            "validation": list(self.validation),
            "size": self.size,
            "table": list(self.table),
        }

    @staticmethod
    def from_json(raw: Mapping[str, Any]) -> MetricSchema:
        return MetricSchema(
            headline=str(raw["headline"]),
            metrics=tuple(
                Metric(str(n), str(lb), None if w is None else str(w), float(lo), float(hi))
                for n, lb, w, lo, hi in raw["metrics"]
            ),  # fmt: skip
            validation=tuple(str(n) for n in raw["validation"]),
            size=str(raw["size"]),
            table=tuple(str(n) for n in raw["table"]),
        )


@dataclass(frozen=True)
class DataDescription:
    """The public part of a data set, what every host of the federation must share."""

    name: str
    regions: tuple[str, ...]
    digest: str  # of the public files (a catalogue, a feature list): hosts compare it


@dataclass(frozen=True)
class Step:
    """What one call of ``Task.train`` is asked to do."""

    seed: int
    lr_scale: float = 1.0  # the federation's decay of the local learning rate (1: none)
    whole_data: bool = False  # one pass over all the data (baselines), not a job's share
    threads: int = 1
    # DP-SGD's mechanism for this job (shared/privacy.py), already spent from the region's
    # budget: a task that trains must run exactly it; None: no DP
    privacy: DPSGD | None = None


@dataclass(frozen=True)
class PrivateJob:
    """How a task's DP-SGD job samples one region's data (``Task.private_job``, optional: a
    task without it cannot run under DP): ``units`` privacy units (shoppers) in the region,
    each sampled per step at ``rate``, ``steps`` steps a job."""

    units: int
    rate: float
    steps: int


@dataclass(frozen=True)
class Trained:
    weights: Weights
    n_samples: int
    loss: float
    seconds: float
    state: Any = None  # carried into the worker's next job (e.g. optimizer moments)


@dataclass(frozen=True)
class Baselines:
    """How the local-only and centralized baselines train: the most epochs per mode and how
    many epochs without a better validation headline end the fit."""

    max_epochs: Mapping[str, int] = field(default_factory=lambda: {"local": 20, "centralized": 8})
    patience: int = 2


@runtime_checkable
class Task(Protocol):
    name: str
    metrics: MetricSchema
    baselines: Baselines

    def settings(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        """The task's full settings from ``raw`` (defaults filled in); TaskError if any is
        unknown or out of range. The result is JSON and travels in the federation record."""
        ...

    def describe(self, data_dir: Path) -> DataDescription:
        """Read only the public part of ``data_dir``; TaskError if it is not this task's data."""
        ...

    def load_region(self, data_dir: Path, region: str) -> Any:
        """One region's data, read from the public files and ``data_dir/<region>`` only."""
        ...

    def data_size(self, data: Any) -> int:
        """Training examples: the dispatcher gives each region work in proportion to it."""
        ...

    def initial_weights(
        self, data_dir: Path, settings: Mapping[str, Any], seed: int
    ) -> Weights: ...

    def train(self, weights: Weights, data: Any, settings: Mapping[str, Any], step: Step,
              state: Any = None) -> Trained:  # fmt: skip
        ...

    def evaluate(self, weights: Weights, data: Any, settings: Mapping[str, Any], part: str,
                 seed: int) -> Metrics:  # fmt: skip
        """Figures of ``metrics`` on the region's ``part`` ("test": every metric; "validation":
        at least ``metrics.validation``), time-split so no future leaks into training."""
        ...

    def pool(self, regions: list[Any]) -> Any:
        """The training data of several regions as one (the centralized baseline)."""
        ...


class TaskService(Protocol):
    """What a task's online service adds to ``fedq serve`` (``Task.service(data_dir, region,
    settings)``, optional): ``build`` turns checked weights into what the routes rank with
    (called off to the side, once per version); ``router`` is a FastAPI ``APIRouter`` whose
    routes call ``current()`` once per request for the served ``serving.follower.Served``."""

    def build(self, weights: Weights) -> Any: ...

    def router(self, current: Callable[[], Any]) -> Any: ...


def require_service(task: Task, name: str) -> None:
    """TaskError unless ``task`` has an online service."""
    if not hasattr(task, "service"):
        raise TaskError(f"task {name!r} has no online service (Task.service): fedq serve "
                        "serves tasks that define one, like the recommender")  # fmt: skip


def load_task(name: str) -> Task:
    """The task named ``name`` (built-in name, ``module:attr`` or ``file.py[:attr]``)."""
    target = BUILT_IN.get(name, name)
    module_name, _, attr = target.partition(":")
    attr = attr or "TASK"
    try:
        if module_name.endswith(".py"):
            module = _module_from_file(Path(module_name))
        else:
            module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise TaskError(f"task {name!r}: no module {exc.name!r} "
                        f"(built-in tasks: {', '.join(BUILT_IN)})") from None  # fmt: skip
    except (ImportError, SyntaxError, OSError) as exc:
        raise TaskError(f"task {name!r}: cannot import {module_name} ({exc})") from None
    task = getattr(module, attr, None)
    if task is None:
        raise TaskError(f"task {name!r}: {module_name} has no attribute {attr!r}")
    if not isinstance(task, Task):
        missing = [a for a in ("name", "metrics", "baselines", "settings", "describe",
                               "load_region", "data_size", "initial_weights", "train",
                               "evaluate", "pool") if not hasattr(task, a)]  # fmt: skip
        raise TaskError(f"task {name!r} is not a fedq Task (lacks {', '.join(missing)})")
    if not isinstance(task.metrics, MetricSchema):
        raise TaskError(f"task {name!r}: metrics is not a MetricSchema")
    return task


def _module_from_file(path: Path):
    path = path.expanduser().resolve()
    if not path.is_file():
        raise OSError(f"{path} does not exist")
    module_name = "fedq_user_task_" + hashlib.sha256(str(path).encode()).hexdigest()[:12]
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise OSError(f"{path} is not a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def require_private(task: Task, name: str) -> None:
    """TaskError unless ``task`` can train with DP-SGD (a federation with ``dp_clip``)."""
    if not hasattr(task, "private_job"):
        raise TaskError(f"task {name!r} has no DP-SGD (Task.private_job): run it without "
                        "--dp-clip/--dp-epsilon")  # fmt: skip


def check_settings(raw: Mapping[str, Any], defaults: Mapping[str, Any], task: str) -> dict:
    """``defaults`` updated by ``raw``: unknown keys and values of another type are errors (an
    int is accepted where a float is expected). A helper for tasks' ``settings``."""
    unknown = sorted(set(raw) - set(defaults))
    if unknown:
        raise TaskError(f"task {task!r} has no settings {', '.join(unknown)} "
                        f"(it has: {', '.join(sorted(defaults))})")  # fmt: skip
    out = dict(defaults)
    for key, value in raw.items():
        want = type(defaults[key])
        ok = isinstance(value, want) and not (isinstance(value, bool) and want is not bool)
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if not ok:
            raise TaskError(f"task {task!r}: setting {key} = {value!r} is not a {want.__name__}")
        if want is float and not math.isfinite(value):  # NaN passes every bound a task checks
            raise TaskError(f"task {task!r}: setting {key} = {value!r} is not a finite number")
        out[key] = value
    return out


def read_meta_json(data_dir: Path, data_format: str, task: str) -> dict[str, Any]:
    """``data_dir/meta.json`` as a mapping whose ``format`` is ``data_format``; TaskError
    naming the file otherwise. A helper for tasks' ``describe``."""
    import json

    path = Path(data_dir) / "meta.json"
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise TaskError(f"{path}: not found (is this a {task} data directory?)") from None
    except (ValueError, OSError) as exc:
        raise TaskError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != data_format:
        raise TaskError(f"{path}: not a {task} data set (format {data_format!r} expected)")
    return meta
