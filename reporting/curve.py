"""The learning curve: federated evaluation results per version, combined across regions.

Each region scores a version on its own held-out users and publishes its metrics; a version's
point exists once every region has reported. Overall figures combine regions as the task's
metric schema says (``MetricSchema.combine``: each figure weighed by its count), exactly as the
baselines do.
"""

from __future__ import annotations

from collections.abc import Iterable

import redis

from shared.evaluations import accepted_results
from shared.federation import Federation
from shared.keys import Keys


def learning_curve(
    connection: redis.Redis,
    keys: Keys,
    fed: Federation,
    regions: Iterable[str] | None = None,
) -> list[dict]:
    """The points of every version all ``regions`` (default: the federation's) reported; a
    run that names a region whose results will not come (``fedq run``: its evaluations fail)
    passes the others, and its report names the one left out."""
    points, schema = [], fed.metrics
    regions = tuple(fed.regions if regions is None else regions)
    for version, by_region in sorted(accepted_results(connection, keys, fed).items()):
        if not regions or set(regions) - set(by_region):
            continue
        test = {r: by_region[r]["test"] for r in regions}
        val = {r: by_region[r]["validation"] for r in regions}
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
