"""JSON that every parser reads: what ``--json`` prints.

Python's ``json`` writes ``NaN`` and ``Infinity`` for non-finite floats, which is not JSON; a
value that made it into Redis from a hostile or broken writer must not make an operator's
``--json`` output unparseable. Non-finite numbers become ``null``.
"""

from __future__ import annotations

import json
import math
from typing import Any


def finite(data: Any) -> Any:
    """``data`` with every non-finite float replaced by None (containers copied)."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: finite(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [finite(v) for v in data]
    return data


def json_text(data: Any, indent: int | None = 2, sort_keys: bool = True) -> str:
    return json.dumps(finite(data), indent=indent, sort_keys=sort_keys, allow_nan=False)
