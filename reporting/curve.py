"""The learning curve: federated evaluation results per version, combined across regions.

Each region scores a version on its own held-out users and publishes its metrics; a version's
point exists once every region has reported. Overall figures combine regions as the task's
metric schema says (``MetricSchema.combine``: each figure weighed by its count), exactly as the
baselines do.
"""

from __future__ import annotations

import redis

from shared.evaluations import accepted_results
from shared.federation import Federation
from shared.keys import Keys


def learning_curve(connection: redis.Redis, keys: Keys, fed: Federation) -> list[dict]:
    points, schema = [], fed.metrics
    for version, by_region in sorted(accepted_results(connection, keys, fed).items()):
        if set(fed.regions) - set(by_region):
            continue
        test = {r: by_region[r]["test"] for r in fed.regions}
        val = {r: by_region[r]["validation"] for r in fed.regions}
        info = connection.hget(keys.model_info(version), "created_at")
        seconds = float(info) - fed.created_at if info else None
        points.append(
            {
                "version": version,
                "seconds": None if seconds is None else round(seconds, 2),
                "overall": schema.combine(test),
                "regions": test,
                "validation": {
                    k: v for k, v in schema.combine(val).items() if k in schema.validation
                },  # fmt: skip
            }
        )
    return points
