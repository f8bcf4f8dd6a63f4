"""The learning curve: federated evaluation results per version, combined across regions.

Each region scores a version on its own held-out users and publishes its metrics; a version's
point exists once every region has reported. Overall figures weigh regions by their users
(cold-start figures by their cold-start targets), exactly as the baselines do.
"""

from __future__ import annotations

import redis

from shared.federation import Federation
from shared.keys import Keys
from shared.task.evaluate import overall
from shared.task.metrics import weighted_mean
from shared.views import region_results


def learning_curve(connection: redis.Redis, keys: Keys, fed: Federation) -> list[dict]:
    points = []
    for version, by_region in sorted(region_results(connection, keys).items()):
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
                "overall": overall(test),
                "regions": test,
                "validation_hr@10": weighted_mean(
                    {r: m["hr@10"] for r, m in val.items()}, {r: m["users"] for r, m in val.items()}
                ),
            }
        )
    return points
