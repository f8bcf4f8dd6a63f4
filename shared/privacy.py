"""Differential privacy for updates: clipping plus Gaussian noise, and an RDP accountant.

Pure numpy and math. A worker clips its update (the delta from its base version) to L2 norm
``clip`` and adds N(0, (noise * clip)^2) to every coordinate before publishing it, so however a
single shopper's events changed the update, the released update moves by at most ``clip``
(the Gaussian mechanism with sensitivity ``clip``). The accountant composes one such release
per published update of a region with Rényi DP: a Gaussian release with noise multiplier
``noise`` is (alpha, alpha / (2 noise^2))-RDP for every alpha > 1; T releases add up; converted
to (epsilon, delta) by epsilon = min over alpha of T alpha / (2 noise^2) + log(1/delta)/(alpha-1).
It takes no credit for subsampling (each job draws 1,024 of the region's examples), so the
figures are upper bounds.
"""

from __future__ import annotations

import math

import numpy as np

from shared.aggregation import clip_to_norm
from shared.codec import Weights

ALPHAS = tuple([1 + x / 10 for x in range(1, 100)] + list(range(11, 64)) + [128, 256, 512])


def privatize(delta: Weights, clip: float, noise: float, rng: np.random.Generator) -> Weights:
    """Clip to ``clip`` and add Gaussian noise of standard deviation ``noise * clip``."""
    clipped, _norm = clip_to_norm(delta, clip)
    sd = noise * clip
    return {k: (t + rng.normal(0.0, sd, t.shape)).astype(np.float32) for k, t in clipped.items()}


def epsilon(releases: int, noise: float, delta: float) -> float:
    """(epsilon, delta)-DP of ``releases`` Gaussian releases with multiplier ``noise``."""
    if releases <= 0:
        return 0.0
    if noise <= 0:
        return math.inf
    rdp = releases / (2 * noise**2)
    return min(a * rdp + math.log(1 / delta) / (a - 1) for a in ALPHAS)


def noise_for(target_epsilon: float, releases: int, delta: float) -> float:
    """The smallest noise multiplier whose ``releases`` releases stay within ``target_epsilon``
    (bisection: epsilon falls as the noise grows)."""
    if target_epsilon <= 0:
        raise ValueError("target epsilon must be positive")
    lo, hi = 1e-3, 1e4
    for _ in range(100):
        mid = math.sqrt(lo * hi)
        if epsilon(releases, mid, delta) > target_epsilon:
            lo = mid
        else:
            hi = mid
    return hi
