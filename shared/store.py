"""The versioned model store: read by workers, written only by the aggregator.

A version's blob never changes once written (``SET NX``); the version counter moves by one per
commit; the blobs of the last ``window`` versions are kept so an update trained on a recent base
can still be mixed, and older ones are deleted in the same atomic step that adds a new one (the
aggregator's commit script, which also records the applied ids and acknowledges them) unless
the version is pinned: an evaluation scheduled for it is not done yet (``unpin`` then drops it).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import redis

from shared.codec import Model, decode_model, encode_model
from shared.keys import Keys

DEFAULT_WINDOW = 32


class ModelStore:
    def __init__(self, connection: redis.Redis, keys: Keys, window: int = DEFAULT_WINDOW) -> None:
        if window < 1:
            raise ValueError(f"the version window must be at least 1, got {window}")
        self.r = connection
        self.keys = keys
        self.window = window

    def current_version(self) -> int | None:
        raw = self.r.get(self.keys.version)
        return None if raw is None else int(raw)

    def read_raw(self, version: int) -> bytes | None:
        return self.r.get(self.keys.model(version))

    def read(self, version: int) -> Model | None:
        raw = self.read_raw(version)
        return None if raw is None else decode_model(raw)

    def read_current(self) -> Model | None:
        """The newest model; retries if the version moves and its predecessor leaves the window."""
        for _ in range(5):
            version = self.current_version()
            if version is None:
                return None
            model = self.read(version)
            if model is not None:
                return model
        return None

    def info(self, version: int) -> dict[str, str]:
        raw = self.r.hgetall(self.keys.model_info(version))
        return {k.decode(): v.decode() for k, v in raw.items()}

    def unpin(self, version: int) -> None:
        """Its evaluations are done: drop the pin, and the blob if it left the window meanwhile
        (the commit that moved it out kept it for the pin)."""
        self.r.eval(_UNPIN, 3, self.keys.pinned, self.keys.version, self.keys.model(version),
                    version, self.window)  # fmt: skip

    def initialise(self, weights: Mapping[str, np.ndarray], info: dict[str, Any]) -> bool:
        """Write version 0 unless a model exists; True if this call wrote it."""
        blob = encode_model(Model(0, dict(weights), {}))
        with self.r.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(self.keys.version)
                    if pipe.get(self.keys.version) is not None:
                        pipe.unwatch()
                        return False
                    pipe.multi()
                    pipe.set(self.keys.model(0), blob, nx=True)
                    pipe.hset(self.keys.model_info(0), mapping=_info({"source": "init", **info}))
                    pipe.set(self.keys.version, 0)
                    pipe.execute()
                    return True
                except redis.WatchError:
                    continue


_UNPIN = """
redis.call('HDEL', KEYS[1], ARGV[1])
local current = tonumber(redis.call('GET', KEYS[2]) or '-1')
if tonumber(ARGV[1]) <= current - tonumber(ARGV[2]) then redis.call('DEL', KEYS[3]) end
return 1
"""


def _info(info: dict[str, Any]) -> dict[str, str]:
    out = {"created_at": f"{time.time():.3f}"}
    out.update({k: str(v) for k, v in info.items()})
    return out


class ModelCache:
    """A worker's copy of the newest model it fetched, so a version is downloaded once."""

    def __init__(self, store: ModelStore) -> None:
        self.store = store
        self.model: Model | None = None
        self.fetches = 0

    def current(self) -> Model:
        version = self.store.current_version()
        if version is None:
            raise LookupError("no global model in Redis yet (is the coordinator running?)")
        if self.model is None or self.model.version != version:
            model = self.store.read(version) or self.store.read_current()
            if model is None:
                raise LookupError(f"model version {version} is not in Redis")
            self.model = model
            self.fetches += 1
        return self.model
