"""Real fedq processes for system tests: spawned with a namespace, always stopped and reaped."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from shared.processes import stop_processes, wait_until  # noqa: F401 (tests import it here)

FEDQ = [sys.executable, "-m", "cli"]


class Fleet:
    """The fedq processes one test starts (stderr kept in files it can read)."""

    def __init__(self, redis_url: str, namespace: str, data: Path) -> None:
        self.env = {**os.environ, "FEDQ_REDIS_URL": redis_url, "FEDQ_NAMESPACE": namespace,
                    "PYTHONUNBUFFERED": "1"}  # fmt: skip
        self.data = data
        self.procs: list[subprocess.Popen] = []
        self._logs = tempfile.TemporaryDirectory(prefix="fedq-fleet-")
        self._log_of: dict[int, Path] = {}

    def spawn(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        log = Path(self._logs.name) / f"{len(self.procs)}-{args[0]}.log"
        with log.open("wb") as err:
            proc = subprocess.Popen([*FEDQ, *args], env={**self.env, **(env or {})},
                                    stdout=subprocess.DEVNULL, stderr=err)  # fmt: skip
        self.procs.append(proc)
        self._log_of[proc.pid] = log
        return proc

    def worker(self, region: str, *extra: str) -> subprocess.Popen:
        return self.spawn("worker", "--region", region, "--data", str(self.data), *extra)

    def aggregator(self, crash_at: str | None = None) -> subprocess.Popen:
        """An aggregator; ``crash_at`` arms a crash point (``shared.faults``)."""
        return self.spawn("aggregator", env={"FEDQ_CRASH_AT": crash_at} if crash_at else None)

    def coordinator(self, *extra: str) -> subprocess.Popen:
        return self.spawn("coordinator", "--data", str(self.data), *extra)

    def log(self, proc: subprocess.Popen) -> str:
        return self._log_of[proc.pid].read_text(errors="replace")

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        stop_processes(self.procs)
        self._logs.cleanup()


def started_job(r, keys, region: str = "cn") -> str | None:
    """A train job of ``region`` that a worker is running now (RQ's status), if any."""
    for job_id in r.hkeys(keys.inflight(region)):
        if r.hget(f"rq:job:{job_id.decode()}", "status") == b"started":
            return job_id.decode()
    return None
