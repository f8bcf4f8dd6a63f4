"""What a worker process holds between jobs: its region's data, the model cache, its identity.

RQ calls task functions by name with only the job's arguments; the tasks find everything else
here. One context per process (fedq's workers run jobs in-process, see ``process.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import redis

from shared.federation import Federation
from shared.keys import Keys
from shared.store import ModelCache, ModelStore
from shared.task.local_data import RegionData
from shared.task.model import ModelConfig


@dataclass
class WorkerContext:
    connection: redis.Redis
    keys: Keys
    region: str
    worker_id: str
    data: RegionData
    federation: Federation
    model_config: ModelConfig
    store: ModelStore
    cache: ModelCache
    slowdown: float = 1.0
    optimizer_state: dict | None = None  # the worker's Adam moments, carried from job to job
    say: Callable[[str], None] = field(default=lambda _m: None)
    signing_key: bytes | None = None  # the region's secret, when the federation signs updates


_current: WorkerContext | None = None


def install(context: WorkerContext) -> None:
    global _current
    _current = context


def current() -> WorkerContext:
    if _current is None:
        raise RuntimeError("fedq tasks run only inside `fedq worker` (no worker context)")
    return _current
