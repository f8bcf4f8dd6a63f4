"""Tooling around ``fedq serve`` for benchmarks and tests: start one on a free port and know its
URL, and make the federation commit new versions on demand (synthetic updates through the real
aggregator) so a service has something to swap to."""

from __future__ import annotations

import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import redis

from shared import streams
from shared.codec import Update, UpdateHeader, encode_update
from shared.errors import FedqError
from shared.jobs import JobSpec, new_job_id, new_update_id, record_issued
from shared.keys import Keys
from shared.store import ModelStore

LISTENING = re.compile(r"on (http://\S+?) \(API at /docs\)")


def start_service(args: list[str], env: dict[str, str], log: Path,
                  timeout: float = 120.0) -> tuple[subprocess.Popen, str]:  # fmt: skip
    """``fedq serve ARGS --port 0`` with stderr in ``log``: (the process, its base URL) once it
    answers /healthz. The caller stops it (``shared.processes.stop_processes``)."""
    with log.open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "cli", "serve", *args, "--port", "0"],
                                env=env, stdout=subprocess.DEVNULL, stderr=err)  # fmt: skip
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = LISTENING.search(log.read_text(errors="replace"))
        if found and get(found.group(1) + "/healthz")[0] == 200:
            return proc, found.group(1)
        if proc.poll() is not None:
            raise FedqError(f"fedq serve exited with {proc.returncode}: {log.read_text()[-2000:]}")
        time.sleep(0.1)
    proc.terminate()
    proc.wait(10)
    raise FedqError(f"fedq serve did not start in {timeout:g}s: {log.read_text()[-2000:]}")


def get(url: str, timeout: float = 10.0) -> tuple[int, bytes]:
    """(status, body) of a GET; status 0 if nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


def commit_synthetic_update(r: redis.Redis, keys: Keys, region: str, scale: float = 1e-3,
                            seed: int | None = None) -> str:  # fmt: skip
    """Publish, as ``region``'s worker would, an update of small random steps on the current
    model for a train job issued for it; the running aggregator applies it (a new version).
    Returns the update id."""
    store = ModelStore(r, keys)
    model = store.read_current()
    if model is None:
        raise FedqError("no model in Redis to update")
    rng = np.random.default_rng(seed)
    delta = {k: (scale * rng.standard_normal(v.shape)).astype(np.float32)
             for k, v in model.weights.items()}  # fmt: skip
    job_id = new_job_id(region, "bench")
    record_issued(r, keys, job_id, JobSpec(kind="train", region=region))
    update_id = new_update_id(job_id)
    header = UpdateHeader(update_id, job_id, region, f"{region}.bench", model.version, 100, 1.0,
                          0.1, 0.1, created_at=time.time())  # fmt: skip
    payload = encode_update(Update(header, delta))
    with r.pipeline(transaction=True) as pipe:
        pipe.xadd(keys.update_stream(region), streams.update_entry(payload, update_id, region))
        pipe.hincrby(keys.published(region), update_id, 1)
        pipe.execute()
    return update_id
