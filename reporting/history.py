"""What a federation did, as one JSON-ready dict: the body of a run's report.json.

``collect`` reads a federation's Redis once: settings, the learning curve (overall and per
region, from the federated evaluations), update counts, and a compact log of every applied
update (seconds since creation, version, region, staleness) for the plots. ``fedq run`` adds
its own figures (wall time, peak memory); ``fedq report`` collects from a live Redis too.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import redis

from reporting.curve import learning_curve
from shared.federation import Federation
from shared.keys import Keys
from shared.privacy import budget_view
from shared.streams import applied_updates, update_counts


def collect(
    connection: redis.Redis, keys: Keys, fed: Federation, regions: Iterable[str] | None = None
) -> dict[str, Any]:
    """The report's body; its curve's points need every one of ``regions`` (default: all)."""
    curve = learning_curve(connection, keys, fed, regions)
    log = [
        [round(u["at"] - fed.created_at, 3), u["version"], u["region"], u["staleness"]]
        for u in applied_updates(connection, keys)
        if u["at"] is not None
    ]
    return {
        "namespace": keys.namespace,
        "mode": fed.settings.mode,
        "task": fed.settings.task,
        "metric_schema": fed.metrics.to_json(),
        "data": fed.data_name,
        "regions": list(fed.regions),
        "settings": json.loads(fed.settings.to_json()),
        "curve": [
            {
                "version": p["version"],
                "seconds": p["seconds"],
                "metrics": p["overall"],
                "regions": p["regions"],
                "validation": p["validation"],
            }
            for p in curve
        ],
        "updates": update_counts(connection, keys, fed.regions),
        "privacy": privacy_spent(connection, keys, fed),
        "updates_log": log,  # [seconds since creation, version, region, staleness]
    }


def privacy_spent(connection: redis.Redis, keys: Keys, fed: Federation) -> dict[str, Any] | None:
    """Each region's privacy budget as its workers spent it (DP-SGD); None without DP."""
    s = fed.settings
    if not s.dp_clip:
        return None
    return {"clip": s.dp_clip, "epsilon_limit": s.dp_epsilon or None,
            "regions": {r: budget_view(connection, keys, r) for r in fed.regions}}  # fmt: skip


def privacy_line(privacy: dict[str, Any]) -> str:
    """One line of a DP run's report: each region's epsilon (and jobs) spent."""
    spent = ", ".join(f"{r} {v['epsilon']:.2f} ({v['jobs']} jobs)"
                      for r, v in privacy["regions"].items())  # fmt: skip
    limit = privacy["epsilon_limit"]
    return (f"DP-SGD (clip {privacy['clip']:g}" + (f", budget {limit:g}" if limit else "")
            + f"): epsilon per region: {spent}")  # fmt: skip
