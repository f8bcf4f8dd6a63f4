"""What a federation did, as one JSON-ready dict: the body of a run's report.json.

``collect`` reads a federation's Redis once: settings, the learning curve (overall and per
region, from the federated evaluations), update counts, and a compact log of every applied
update (seconds since creation, version, region, staleness) for the plots. ``fedq run`` adds
its own figures (wall time, peak memory); ``fedq report`` collects from a live Redis too.
"""

from __future__ import annotations

import json
from typing import Any

import redis

from reporting.curve import learning_curve
from shared.federation import Federation
from shared.keys import Keys
from shared.privacy import epsilon
from shared.streams import applied_updates, published_copies, update_counts


def collect(connection: redis.Redis, keys: Keys, fed: Federation) -> dict[str, Any]:
    curve = learning_curve(connection, keys, fed)
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
    """(epsilon, delta) per region over the releases (published updates) so far; None without
    DP. Each region's published copies are its releases."""
    s = fed.settings
    if not s.dp_noise:
        return None
    published = published_copies(connection, keys, fed.regions)
    releases = {region: sum(by_id.values()) for region, by_id in published.items()}
    return {
        "clip": s.dp_clip, "noise": s.dp_noise, "delta": s.dp_delta,
        "regions": {r: {"releases": n, "epsilon": round(epsilon(n, s.dp_noise, s.dp_delta), 3)}
                    for r, n in releases.items()},
    }  # fmt: skip
