"""The federation record in Redis: settings, task, regions and the data digest every host shares.

Written once by the coordinator that initialises a federation (with the initial model), read by
the aggregator and every worker. A worker whose data's public part differs (another data set,
another version of its public files: the task's digest) refuses to start: its updates would not
fit the model. The task's metric schema travels here, so the aggregator and the views check and
combine evaluation results without importing the task.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from shared.errors import FedqError
from shared.keys import Keys
from shared.settings import FederationSettings
from tasks.api import MetricSchema, Task


class FederationMismatch(FedqError):
    pass


@dataclass(frozen=True)
class Federation:
    settings: FederationSettings
    regions: tuple[str, ...]
    data_digest: str
    data_name: str
    metrics: MetricSchema
    created_at: float = 0.0

    def to_redis(self) -> dict[str, str]:
        return {
            "settings": self.settings.to_json(),
            "regions": json.dumps(list(self.regions)),
            "data_digest": self.data_digest,
            "data_name": self.data_name,
            "metrics": json.dumps(self.metrics.to_json()),
            "created_at": f"{self.created_at or time.time():.3f}",
        }

    @staticmethod
    def from_redis(raw: dict[bytes, bytes]) -> Federation:
        d = {k.decode(): v.decode() for k, v in raw.items()}
        return Federation(
            settings=FederationSettings.from_json(d["settings"]),
            regions=tuple(json.loads(d["regions"])),
            data_digest=d["data_digest"],
            data_name=d["data_name"],
            metrics=MetricSchema.from_json(json.loads(d["metrics"])),
            created_at=float(d["created_at"]),
        )


def read(connection: redis.Redis, keys: Keys) -> Federation | None:
    raw = connection.hgetall(keys.config)
    return Federation.from_redis(raw) if raw else None


def create(connection: redis.Redis, keys: Keys, federation: Federation) -> Federation:
    """Write the record unless one exists; return the one in force (which may be older)."""
    with connection.pipeline(transaction=True) as pipe:
        while True:
            try:
                pipe.watch(keys.config)
                if pipe.exists(keys.config):
                    pipe.unwatch()
                    break
                pipe.multi()
                pipe.hset(keys.config, mapping=federation.to_redis())
                pipe.execute()
                break
            except redis.WatchError:
                continue
    existing = read(connection, keys)
    assert existing is not None
    return existing


def wait_for(connection: redis.Redis, keys: Keys, timeout: float, say=None) -> Federation:
    """Block until a coordinator has initialised the federation (or ``timeout`` passes)."""
    deadline = time.monotonic() + timeout
    told = False
    while True:
        fed = read(connection, keys)
        if fed is not None:
            return fed
        if time.monotonic() >= deadline:
            raise FedqError(
                f"no federation in Redis under namespace {keys.namespace!r} after {timeout:.0f}s "
                "(start `fedq coordinator` first)"
            )
        if say and not told:
            say("waiting for a coordinator to initialise the federation ...")
            told = True
        time.sleep(0.5)


def check_data(federation: Federation, task: Task, data_dir: Path) -> None:
    """The public part of ``data_dir`` must be the federation's (the task's digest of it)."""
    check_digest(task, data_dir, federation.data_digest,
                 f"the federation's (data set {federation.data_name!r}, task "
                 f"{federation.settings.task!r})")  # fmt: skip


def check_digest(task: Task, data_dir: Path, digest: str | None, whose: str) -> None:
    """``data_dir``'s public part must have ``digest``: a model or a federation of other data
    would not fit it."""
    described = task.describe(data_dir)
    if described.digest != digest:
        raise FederationMismatch(
            f"{data_dir}'s public data (digest {described.digest}, data set {described.name!r}) "
            f"is not {whose} (digest {digest})"
        )
