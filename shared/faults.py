"""Crash points: where a test or the chaos runner makes a process die as if killed with -9.

``FEDQ_CRASH_AT=<point>:<n>`` kills the process with SIGKILL the n-th time it reaches
``crash_point(<point>)`` (n defaults to 1); ``<point>:<n>:raise`` raises ``InjectedFault``
there instead, standing for a bug that a message triggers. Unset (always, outside tests), a
crash point costs one dictionary look-up. They mark the moments a real crash would hurt most,
e.g. just before and just after the aggregator's atomic commit.
"""

from __future__ import annotations

import os
import signal


class InjectedFault(Exception):
    """Raised at an armed crash point in ``raise`` mode."""


_ARMED: dict[str, tuple[int, str]] = {}
for _spec in filter(None, os.environ.get("FEDQ_CRASH_AT", "").split(",")):
    _point, _, _rest = _spec.partition(":")
    _n, _, _mode = _rest.partition(":")
    _ARMED[_point.strip()] = (int(_n or 1), _mode.strip() or "kill")


def crash_point(name: str) -> None:
    armed = _ARMED.get(name)
    if armed is None:
        return
    left, mode = armed
    _ARMED[name] = (left - 1, mode)
    if left != 1:
        return
    if mode == "raise":
        raise InjectedFault(f"fault injected at {name}")
    os.kill(os.getpid(), signal.SIGKILL)
