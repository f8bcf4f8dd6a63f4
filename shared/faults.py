"""Crash points: where a test or the chaos runner makes a process die as if killed with -9.

``FEDQ_CRASH_AT=<point>:<n>`` kills the process with SIGKILL the n-th time it reaches
``crash_point(<point>)`` (n defaults to 1). Unset (always, outside tests), a crash point costs
one dictionary look-up. They mark the moments a real crash would hurt most, e.g. just before and
just after the aggregator's atomic commit.
"""

from __future__ import annotations

import os
import signal

_ARMED: dict[str, int] = {}
for _spec in filter(None, os.environ.get("FEDQ_CRASH_AT", "").split(",")):
    _point, _, _n = _spec.partition(":")
    _ARMED[_point.strip()] = int(_n or 1)


def crash_point(name: str) -> None:
    left = _ARMED.get(name)
    if left is None:
        return
    _ARMED[name] = left - 1
    if left <= 1:
        os.kill(os.getpid(), signal.SIGKILL)
