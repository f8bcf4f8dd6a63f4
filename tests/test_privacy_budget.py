"""DP-SGD's accountant (Opacus) and each region's budget in Redis, shared by its workers."""

from __future__ import annotations

import threading

import pytest
import redis
from opacus.accountants import RDPAccountant
from opacus.accountants.utils import get_noise_multiplier

from shared.keys import Keys
from shared.privacy import (
    DPSGD,
    RDP_ORDERS,
    BudgetSpent,
    BudgetUnreadable,
    budget_view,
    exhausted_regions,
    planned_noise,
    read_budget,
    region_privacy,
    reserve,
    spent_epsilon,
)

KEYS = Keys("budget")
JOB = DPSGD(noise=1.1, clip=1.0, rate=0.02, steps=8)
DELTA = 1e-5


def _library_epsilon(entries, delta):
    """Opacus's accountant stepped one step at a time, as its own training loop does."""
    accountant = RDPAccountant()
    for noise, rate, steps in entries:
        for _ in range(steps):
            accountant.step(noise_multiplier=noise, sample_rate=rate)
    return accountant.get_epsilon(delta, alphas=RDP_ORDERS)


def test_the_accountant_gives_the_librarys_figures_for_the_same_steps():
    entries = [(1.1, 0.02, 80), (0.9, 0.05, 16), (1.1, 0.02, 40)]
    assert spent_epsilon(entries, DELTA) == pytest.approx(_library_epsilon(entries, DELTA))
    assert spent_epsilon([], DELTA) == 0.0
    more = spent_epsilon([(1.1, 0.02, 800)], DELTA)
    assert more > spent_epsilon([(1.1, 0.02, 80)], DELTA) > 0
    noise = planned_noise(4.0, DELTA, 0.02, 800)
    assert noise == pytest.approx(get_noise_multiplier(target_epsilon=4.0, target_delta=DELTA,
                                                       sample_rate=0.02, steps=800,
                                                       alphas=RDP_ORDERS))  # fmt: skip
    assert spent_epsilon([(noise, 0.02, 800)], DELTA) <= 4.0
    assert spent_epsilon([(noise * 0.9, 0.02, 800)], DELTA) > 4.0


def test_a_job_that_would_exceed_the_budget_is_refused_and_the_region_marked(r: redis.Redis):
    one = spent_epsilon([JOB.entry], DELTA)
    three = spent_epsilon([JOB.entry] * 3, DELTA)
    limit = (three + spent_epsilon([JOB.entry] * 4, DELTA)) / 2  # room for three jobs
    for n in (1, 2, 3):
        budget = reserve(r, KEYS, "cn", JOB, DELTA, limit)
        assert budget.jobs == n and budget.exhausted == (n == 3)
    assert budget.epsilon == pytest.approx(three) and one < three
    assert exhausted_regions(r, KEYS, ["cn", "us"]) == {"cn"}
    with pytest.raises(BudgetSpent, match="region cn's privacy budget"):
        reserve(r, KEYS, "cn", JOB, DELTA, limit)
    stored = read_budget(r, KEYS, "cn")
    assert stored.jobs == 3 and stored.history == [(1.1, 0.02, 24)]  # the refused one: nothing
    assert read_budget(r, KEYS, "us") is None


def test_two_workers_of_a_region_spend_one_budget_and_a_restart_continues_it(redis_server):
    """Each reservation is its own connection (a worker process, or one restarted): the
    region's epsilon composes all of them, however they interleave."""
    clients = [redis.Redis.from_url(redis_server.url) for _ in range(2)]
    clients[0].delete(KEYS.privacy("eu"))
    errors: list[BaseException] = []

    def worker(connection: redis.Redis) -> None:
        try:
            for _ in range(15):
                reserve(connection, KEYS, "eu", JOB, DELTA, 1e9)
        except BaseException as exc:  # noqa: BLE001 (reported by the assertion below)
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    restarted = redis.Redis.from_url(redis_server.url)
    budget = reserve(restarted, KEYS, "eu", JOB, DELTA, 1e9)
    assert budget.jobs == 31 and budget.history == [(1.1, 0.02, 31 * 8)]
    assert budget.epsilon == pytest.approx(_library_epsilon([(1.1, 0.02, 31 * 8)], DELTA))


def test_the_first_job_fixes_the_regions_delta(r: redis.Redis):
    reserve(r, KEYS, "jp", JOB, 1e-5, 100.0)
    later = reserve(r, KEYS, "jp", JOB, 1e-3, 100.0)  # a worker that computed another delta
    assert later.delta == 1e-5
    assert later.epsilon == pytest.approx(spent_epsilon([JOB.entry] * 2, 1e-5))


def test_a_mechanism_without_noise_or_outside_the_sampling_range_is_refused():
    for bad in ({"noise": 0.0}, {"rate": 0.0}, {"rate": 1.5}, {"steps": 0}, {"clip": -1.0}):
        with pytest.raises(ValueError, match="DP-SGD needs"):
            DPSGD(**{**JOB.__dict__, **bad})


def test_a_garbled_budget_spends_nothing_and_says_so(r: redis.Redis):
    """Only the region's user (or an admin) can write it; garbage there fails closed."""
    r.hset(KEYS.privacy("me"), mapping={"steps 1.0 nonsense": "3", "epsilon": "x"})
    with pytest.raises(BudgetUnreadable, match="does not parse"):
        reserve(r, KEYS, "me", JOB, DELTA, 100.0)
    view = budget_view(r, KEYS, "me")
    assert view["exhausted"] and "does not parse" in view["error"]
    assert r.hget(KEYS.privacy("me"), "jobs") is None  # nothing was spent


def test_a_regions_own_cap_bounds_its_plan_below_the_federations_budget():
    from shared.settings import FederationSettings

    planned = FederationSettings(dp_clip=1.0, dp_epsilon=8.0, target_versions=600)
    free = region_privacy(planned, units=5000, rate=0.05, steps=4, share=0.2)
    capped = region_privacy(planned, units=5000, rate=0.05, steps=4, share=0.2, cap=2.0)
    assert free.limit == 8.0 and capped.limit == 2.0
    assert capped.job.noise > free.job.noise  # planned to spend only the cap by the target
    # a cap above the federation's budget changes nothing
    assert region_privacy(planned, 5000, 0.05, 4, 0.2, cap=50.0) == free
    # with the federation's noise and no budget of its own, the cap is the region's budget
    noise_only = FederationSettings(dp_clip=1.0, dp_noise=1.3, target_versions=600)
    assert region_privacy(noise_only, 5000, 0.05, 4, 0.2).limit == float("inf")
    assert region_privacy(noise_only, 5000, 0.05, 4, 0.2, cap=3.0).limit == 3.0
