"""A module a hostile job names as its callback: importing it, or calling ``callback``, leaves a
file behind, so a test can prove a refused job imported and ran nothing."""

from __future__ import annotations

import os
from pathlib import Path

_DIR = os.environ.get("FEDQ_PLANTED_DIR")
if _DIR:
    Path(_DIR, "imported").touch()


def callback(*_args: object) -> None:
    if _DIR:
        Path(_DIR, "called").touch()
