"""Evaluation figures no one region controls: pure functions over the accepted results.

Only region r can score the model on r's held-out shoppers, so a region that lies about its
own evaluation cannot be caught by re-checking its figure. What the federation can do is keep
any single region from deciding anything by itself:

- **a quorum**: a version counts as evaluated once two thirds of the voting regions reported it
  and ``grace`` seconds passed since its first result, or once every one did; a region that
  stays silent delays a decision by ``grace``, never forever, and one whose evaluation jobs
  fail again and again (``shared/failures.py``) or that an operator quarantined does not vote;
- **a trimmed combination**: the highest and the lowest region's figure of a version are left
  out before the task combines the others (weighted as the task weighs them), so a region
  reporting the top or the bottom of the range is not counted at all;
- **a vote on a fall**: a version fell from an earlier one only if the trimmed combination fell
  and more than half of the regions that scored both saw their own figure fall, so one region
  reporting a fall each time cannot keep a service from swapping, nor hide a real fall.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping

from tasks.api import Metrics, MetricSchema


def quorum(regions: int) -> int:
    """Regions that must report a version before it can count without the others."""
    return max(1, math.ceil(2 * regions / 3))


def settled(
    reported: Collection[str], voters: Collection[str], waited: float, grace: float
) -> bool:
    """Whether a version evaluated by ``reported`` counts: every voter reported, or a quorum of
    them did and ``waited`` (seconds since its first result) reached ``grace``."""
    present = set(reported) & set(voters)
    if not voters:
        return False
    if present >= set(voters):
        return True
    return len(present) >= quorum(len(voters)) and waited >= grace


def trimmed(figures: Mapping[str, float]) -> set[str]:
    """The regions whose figure is left out: the highest and the lowest (one each) of three or
    more finite figures. One region reporting the top or the bottom of the range is always
    among them, so its report does not enter the combination at all."""
    finite = {r: v for r, v in figures.items() if math.isfinite(v)}
    if len(finite) < 3:
        return set()
    ordered = sorted(finite, key=lambda r: (finite[r], r))
    return {ordered[0], ordered[-1]}


def robust_combine(schema: MetricSchema, per_region: Mapping[str, Metrics]) -> Metrics:
    """The task's combination of the regions' figures, each non-count figure without its
    highest and lowest region (counts, the weights of the combination, are the regions' own)."""
    out = {r: dict(m) for r, m in per_region.items()}
    for metric in schema.metrics:
        if metric.is_count:
            continue
        present = {r: float(m[metric.name]) for r, m in per_region.items() if metric.name in m}
        for region in trimmed(present):
            del out[region][metric.name]
    return schema.combine(out)


def fall(
    schema: MetricSchema, before: Mapping[str, Metrics], after: Mapping[str, Metrics]
) -> str | None:
    """Why ``after`` fell from ``before`` (headline, regions combined and by vote), or None."""
    name = schema.headline
    old = robust_combine(schema, before)[name]
    new = robust_combine(schema, after)[name]
    if not (math.isfinite(old) and math.isfinite(new)) or new >= old:
        return None
    both = [r for r in after if r in before and name in after[r] and name in before[r]]
    falling = [r for r in both if after[r][name] < before[r][name]]
    if 2 * len(falling) <= len(both):
        return None
    label = schema.label(name)
    where = f"in {len(falling)} of {len(both)} regions"
    return f"its validation {label} fell to {new:.4f} from {old:.4f} ({where})"
