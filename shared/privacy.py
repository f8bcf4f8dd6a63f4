"""Differential privacy's bookkeeping: DP-SGD's mechanism per job and each region's budget.

The mechanism runs inside a task's local training (DP-SGD: each step samples the region's
privacy units, a shopper for the recommender, clips each one's gradient and adds Gaussian
noise to the sum; ``tasks/recommender/private.py``). This module decides its parameters and
keeps the account: every job of every worker of a region spends from one budget, a hash in
Redis that only the region's ACL user may write (``Keys.privacy``), composed with Opacus's
RDP accountant. A worker reserves a job's steps before it trains and refuses the job if the
region's epsilon would pass its limit; the coordinator stops dispatching to a region whose
budget cannot take another job.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import redis

from shared.errors import FedqError
from shared.keys import Keys


@dataclass(frozen=True)
class DPSGD:
    """The mechanism one train job runs: ``steps`` steps, each sampling the region's privacy
    units (shoppers) at ``rate`` (Poisson), clipping each unit's gradient to ``clip`` and adding
    Gaussian noise of ``noise * clip`` to the sum: the sampled Gaussian mechanism per step."""

    noise: float
    clip: float
    rate: float
    steps: int

    def __post_init__(self) -> None:
        if not (self.noise > 0 and self.clip > 0 and 0 < self.rate <= 1 and self.steps >= 1):
            raise ValueError(f"DP-SGD needs noise > 0, clip > 0, rate in (0, 1], steps >= 1: "
                             f"{self}")  # fmt: skip

    @property
    def entry(self) -> tuple[float, float, int]:
        """(noise multiplier, sample rate, steps): an entry of the accountant's history."""
        return (self.noise, self.rate, self.steps)


History = list[tuple[float, float, int]]
# Opacus's default orders and larger ones: a small epsilon's best order lies past 63
RDP_ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)) + [80, 128, 256, 512]


def spent_epsilon(history: History, delta: float) -> float:
    """Epsilon at ``delta`` of every entry of ``history`` composed (Opacus's RDP accountant)."""
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    accountant.history = [(float(n), float(q), int(s)) for n, q, s in history if s > 0]
    if not accountant.history:
        return 0.0
    return float(accountant.get_epsilon(delta, alphas=RDP_ORDERS))


def merged(history: History) -> History:
    """Entries of one mechanism summed (RDP composes steps linearly: the same epsilon)."""
    steps: dict[tuple[float, float], int] = {}
    for noise, rate, n in history:
        steps[(noise, rate)] = steps.get((noise, rate), 0) + n
    return [(noise, rate, n) for (noise, rate), n in steps.items()]


def planned_noise(target_epsilon: float, delta: float, rate: float, steps: int) -> float:
    """The noise multiplier whose ``steps`` steps at ``rate`` spend at most ``target_epsilon``
    (Opacus's search, which returns the end of its interval that stays within the target)."""
    from opacus.accountants.utils import get_noise_multiplier

    if target_epsilon <= 0 or steps < 1:
        raise ValueError("a privacy plan needs a positive epsilon and at least one step")
    return float(get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta,
                                      sample_rate=rate, steps=steps, accountant="rdp",
                                      alphas=RDP_ORDERS))  # fmt: skip


class BudgetSpent(FedqError):
    """A job would take its region past its privacy budget: refused, nothing trained."""


# the fields of a region's budget hash (Keys.privacy), written here and read by ``read_budget``
DELTA, EPSILON, LIMIT, EXHAUSTED, JOBS = "delta", "epsilon", "limit", "exhausted", "jobs"
NOISE = "noise"  # the multiplier the region's first job used: the region's later workers too
STEPS = "steps "  # + "<noise> <rate>": the steps run with that mechanism


@dataclass(frozen=True)
class Budget:
    delta: float
    epsilon: float  # spent so far
    limit: float
    exhausted: bool  # the next job would not fit: the coordinator dispatches no more
    jobs: int
    history: History
    noise: float | None = None

    def to_json(self) -> dict:
        """For status and reports (no limit: None)."""
        return {"epsilon": round(self.epsilon, 4), "limit": _finite(self.limit),
                "delta": self.delta, "noise": self.noise, "jobs": self.jobs,
                "exhausted": self.exhausted}  # fmt: skip


NOTHING_SPENT = {"epsilon": 0.0, "limit": None, "jobs": 0, "exhausted": False}


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def read_budget(connection: redis.Redis, keys: Keys, region: str) -> Budget | None:
    return _parse(connection.hgetall(keys.privacy(region)))


def budget_view(connection: redis.Redis, keys: Keys, region: str) -> dict:
    try:
        budget = read_budget(connection, keys, region)
    except BudgetUnreadable as exc:
        return {**NOTHING_SPENT, "epsilon": float("nan"), "exhausted": True, "error": str(exc)}
    return dict(NOTHING_SPENT) if budget is None else budget.to_json()


def exhausted_regions(connection: redis.Redis, keys: Keys, regions) -> set[str]:
    """The regions whose budget cannot take another job (one round trip for all)."""
    with connection.pipeline(transaction=False) as pipe:
        for region in regions:
            pipe.hget(keys.privacy(region), EXHAUSTED)
        flags = pipe.execute()
    return {r for r, flag in zip(regions, flags, strict=True) if flag == b"1"}


def reserve(connection: redis.Redis, keys: Keys, region: str, job: DPSGD, delta: float,
            limit: float) -> Budget:  # fmt: skip
    """Spend one job's steps from the region's budget, or raise ``BudgetSpent``.

    Every worker of the region calls this before it trains, so the budget composes every job
    of every worker, across restarts. Optimistic (WATCH/MULTI): a worker that raced another
    one recomputes from what that one wrote. The first job fixes the region's delta. Spent
    before training: a job that then fails has spent its steps (the safe side)."""
    key = keys.privacy(region)
    with connection.pipeline() as pipe:
        while True:
            try:
                pipe.watch(key)
                now = _parse(pipe.hgetall(key))
                fixed = now.delta if now is not None else delta
                history = now.history if now is not None else []
                after = merged([*history, job.entry])
                epsilon = spent_epsilon(after, fixed)
                pipe.multi()
                if epsilon > limit:
                    pipe.hset(key, mapping={DELTA: repr(fixed), LIMIT: repr(limit), EXHAUSTED: 1})
                    pipe.execute()
                    spent = now.epsilon if now is not None else 0.0
                    raise BudgetSpent(f"region {region}'s privacy budget: epsilon {spent:.3f} "
                                      f"of {limit:g} spent, this job would make it "
                                      f"{epsilon:.3f}")  # fmt: skip
                full = spent_epsilon(after + [job.entry], fixed) > limit
                pipe.hincrby(key, f"{STEPS}{job.noise!r} {job.rate!r}", job.steps)
                pipe.hincrby(key, JOBS, 1)
                pipe.hsetnx(key, NOISE, repr(job.noise))
                pipe.hset(key, mapping={DELTA: repr(fixed), EPSILON: repr(epsilon),
                                        LIMIT: repr(limit), EXHAUSTED: int(full)})  # fmt: skip
                pipe.execute()
                noise = now.noise if now is not None and now.noise is not None else job.noise
                return Budget(fixed, epsilon, limit, full, (now.jobs if now else 0) + 1, after,
                              noise)  # fmt: skip
            except redis.WatchError:
                continue


class BudgetUnreadable(FedqError):
    """A region's budget hash that does not parse: nothing may be spent from it (fail closed)."""


def _parse(raw: dict[bytes, bytes]) -> Budget | None:
    if not raw:
        return None
    try:
        return _fields(raw)
    except (ValueError, TypeError) as exc:
        raise BudgetUnreadable(f"the privacy budget in Redis does not parse ({exc})") from None


def _fields(raw: dict[bytes, bytes]) -> Budget:
    fields = {k.decode(errors="replace"): v.decode(errors="replace") for k, v in raw.items()}
    history: History = []
    for name, steps in fields.items():
        if name.startswith(STEPS):
            noise, rate = name.removeprefix(STEPS).split()
            history.append((float(noise), float(rate), int(steps)))
    return Budget(float(fields.get(DELTA, "nan")), float(fields.get(EPSILON, 0.0)),
                  float(fields.get(LIMIT, "inf")), fields.get(EXHAUSTED) == "1",
                  int(fields.get(JOBS, 0)), history,
                  float(fields[NOISE]) if NOISE in fields else None)  # fmt: skip


@dataclass(frozen=True)
class RegionPrivacy:
    """What a region's worker runs and stays within: each job's mechanism, the region's delta
    and its epsilon limit (inf: none, with an explicit noise multiplier)."""

    job: DPSGD
    delta: float
    limit: float


PLAN_SLACK = 1.05  # the dispatcher's shares drift a little from the data sizes


def planned_jobs(mode: str, target_versions: int, buffer_size: int, inflight: int,
                 share: float) -> int:  # fmt: skip
    """The train jobs a region runs by the target: every round in sync mode; otherwise its
    share of the data times the updates the target takes (dispatch is proportional to data),
    plus slack and the jobs still in flight when the target is reached."""
    if mode == "sync":
        return target_versions
    updates = target_versions * (buffer_size if mode == "buffered" else 1)
    return math.ceil(updates * share * PLAN_SLACK) + inflight + 1


def region_privacy(
    settings, units: int, rate: float, steps: int, share: float,
    noise: float | None = None, cap: float | None = None,
) -> RegionPrivacy:  # fmt: skip
    """The region's plan from the federation's DP settings and its own data (``units``
    shoppers, sampled at ``rate``, ``steps`` a job); ``noise``: the multiplier the region's
    budget already runs with (its first worker chose it), kept; ``cap``: the region's own
    bound on its epsilon (``fedq worker --max-epsilon``), which no federation setting lifts."""
    delta = settings.dp_delta or DELTA_SHARE / units
    limit = min(settings.dp_epsilon or math.inf, math.inf if cap is None else cap)
    if noise is None:
        noise = settings.dp_noise or planned_noise(
            limit, delta, rate,
            planned_jobs(settings.mode, settings.target_versions, settings.buffer_size,
                         settings.inflight_per_region, share) * steps,
        )  # fmt: skip
    return RegionPrivacy(DPSGD(noise, settings.dp_clip, rate, steps), delta, limit)


DELTA_SHARE = 0.1  # the default delta: a tenth of one over the region's privacy units
