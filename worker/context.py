"""What a worker process holds between jobs: its task and region's data, the model cache, its
identity.

RQ calls task functions by name with only the job's arguments; the tasks find everything else
here. One context per process (fedq's workers run jobs in-process, see ``process.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from shared.federation import Federation
from shared.keys import Keys
from shared.privacy import DPSGD, RegionPrivacy
from shared.store import ModelCache, ModelStore
from shared.telemetry import WorkerMetrics
from tasks.api import Task


@dataclass
class WorkerContext:
    connection: redis.Redis
    keys: Keys
    region: str
    worker_id: str
    task: Task
    data: Any  # the task's view of this region's data (never leaves the process)
    federation: Federation
    store: ModelStore
    cache: ModelCache
    slowdown: float = 1.0
    task_state: Any = None  # what the task carries from job to job (e.g. Adam's moments)
    say: Callable[[str], None] = field(default=lambda _m: None)
    signing_key: bytes | None = None  # the region's secret, when the federation signs updates
    privacy: RegionPrivacy | None = None  # DP-SGD's plan for this region (shared/privacy.py)
    privacy_job: DPSGD | None = None  # the mechanism the running job reserved from the budget
    metrics: WorkerMetrics | None = None  # its Prometheus series (shared/telemetry.py)


_current: WorkerContext | None = None


def install(context: WorkerContext) -> None:
    global _current
    _current = context


def current() -> WorkerContext:
    if _current is None:
        raise RuntimeError("fedq tasks run only inside `fedq worker` (no worker context)")
    return _current
