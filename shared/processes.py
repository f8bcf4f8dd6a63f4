"""Stopping child processes (SIGTERM, a grace period, SIGKILL for what is left, always reaped),
and waiting for what they should bring about."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterable


def stop_processes(processes: Iterable[subprocess.Popen], grace: float = 30.0) -> None:
    """Stop and reap exactly the given processes (the caller's own children)."""
    procs = list(processes)
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_until(predicate: Callable[[], object], timeout: float, poll: float = 0.2) -> bool:
    """True as soon as ``predicate()`` is truthy, False after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(poll)
    return False
