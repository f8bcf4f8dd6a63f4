"""Robust aggregation: the pure checks (shared/robust.py) and the guard's verdicts
(coordinator/guard.py) on hand-made honest and hostile updates. No Redis."""

from __future__ import annotations

import math

import numpy as np
import pytest

from coordinator.guard import FLAGGED, Guard, RegionRecord, region_view
from shared import robust
from shared.codec import RejectReason
from shared.settings import FederationSettings

REGIONS = ("cn", "us", "eu", "in", "jp", "me")


def vec(*values: float) -> dict[str, np.ndarray]:
    return {"w": np.array(values, dtype=np.float32)}


def test_the_norm_bound_is_a_rank_no_minority_of_regions_can_raise() -> None:
    honest = {r: [1.0, 1.2, 0.9] for r in REGIONS[1:]}
    assert robust.norm_bound(honest, 2.0, rank=3) == pytest.approx(2.0)
    with_liar = {**honest, "cn": [49.0] * 16}
    assert robust.norm_bound(with_liar, 2.0, rank=3) == pytest.approx(2.0)
    two_liars = {**with_liar, "us": [49.0] * 16}
    assert robust.norm_bound(two_liars, 2.0, rank=3) == pytest.approx(2.0)
    # the first regions heard are the two liars and one honest region: a median would be 49
    first = {"cn": [49.0], "us": [49.0], "eu": [1.0]}
    assert robust.norm_bound(first, 2.0, rank=3) == pytest.approx(2.0)
    assert robust.norm_bound(first, 2.0, rank=3, min_regions=4) is None
    assert (
        robust.norm_bound({"cn": [1.0]}, 2.0, rank=3) is None
    )  # one region: no federation figure yet


def test_cosine_and_direction_factor() -> None:
    assert robust.cosine(vec(1, 0), vec(2, 0)) == pytest.approx(1.0)
    assert robust.cosine(vec(1, 0), vec(-1, 0)) == pytest.approx(-1.0)
    assert math.isnan(robust.cosine(vec(0, 0), vec(1, 0)))
    assert robust.direction_factor(0.3, -0.1, 0.05) == 1.0
    assert robust.direction_factor(-0.3, -0.1, 0.05) == 0.0
    assert robust.direction_factor(-0.025, -0.1, 0.05) == pytest.approx(0.5)
    assert robust.direction_factor(math.nan, -0.1, 0.05) == 1.0


def test_influence_factor_pulls_a_share_above_slack_times_the_target_back() -> None:
    assert robust.influence_factor(0.2, 0.3, 1.5) == 1.0
    assert robust.influence_factor(0.5, 0.3, 1.5) == pytest.approx(1 - 0.05 / (0.25 * 0.45))
    assert robust.influence_factor(0.9, 0.3, 1.5) == 0.05  # the floor


def test_centered_clipping_averages_honest_points_and_bounds_an_outlier() -> None:
    rng = np.random.default_rng(0)
    honest = [{"w": (np.ones(50) + 0.1 * rng.standard_normal(50)).astype(np.float32)}
              for _ in range(5)]  # fmt: skip
    mean = np.mean([p["w"] for p in honest], axis=0)
    plain, _ = robust.centered_clip(honest, [1.0] * 5, tau=1e9)
    assert np.allclose(plain["w"], mean, atol=1e-5)  # no clipping: the weighted mean
    outlier = {"w": np.full(50, -1000.0, np.float32)}
    robust_mean, distances = robust.centered_clip([*honest, outlier], [1.0] * 6, tau_factor=2.0)
    naive = np.mean([p["w"] for p in [*honest, outlier]], axis=0)
    assert np.linalg.norm(naive - mean) > 100  # the plain mean is wrecked
    assert np.linalg.norm(robust_mean["w"] - mean) < 0.5 * np.linalg.norm(mean)
    assert max(distances) == distances[-1]  # the outlier is the farthest point


def test_the_direction_counts_each_region_once_however_hard_it_pushes() -> None:
    """A region that pushes the model hardest cannot make its push the direction."""
    guard = Guard(FederationSettings(), REGIONS)
    for region in REGIONS:
        guard.records[region].norms.append(1.0)  # past the warm-up
    zero = {"w": np.zeros(3, np.float32)}
    honest, hostile = np.array([1.0, 0.0, 0.0]), np.array([-1.0, 0.2, 0.0])
    for _ in range(5):
        for region in REGIONS[1:]:
            guard.applied({region: 1.0}, zero, {"w": (0.1 * honest).astype(np.float32)})
        guard.applied({"cn": 1.0}, zero, {"w": (5.0 * hostile).astype(np.float32)})
    assert guard.direction("us", {"w": honest}, 1.0) > 0.9
    assert guard.direction("cn", {"w": hostile}, float(np.linalg.norm(hostile))) < -0.9


def honest_delta(rng: np.random.Generator, direction: np.ndarray, scale: float = 1.0) -> dict:
    noise = rng.standard_normal(direction.size)
    v = 0.5 * direction / np.linalg.norm(direction) + 0.85 * noise / np.linalg.norm(noise)
    return {"w": (scale * v / np.linalg.norm(v)).astype(np.float32)}


def warmed_guard(rng: np.random.Generator, direction: np.ndarray) -> Guard:
    guard = Guard(FederationSettings(), REGIONS)
    guard.set_data_sizes(dict.fromkeys(REGIONS, 100.0))
    model = {"w": np.zeros(direction.size, np.float32)}
    for i in range(60):
        region = REGIONS[i % len(REGIONS)]
        delta = honest_delta(rng, direction)
        verdict = guard.judge(region, delta, robust.median([1.0]))
        assert not verdict.refused
        new = {"w": model["w"] + 0.1 * delta["w"]}
        guard.applied({region: 0.1}, model, new)
        model = new
    return guard


def test_the_guard_refuses_a_negation_scales_a_long_update_and_passes_honest_ones() -> None:
    rng = np.random.default_rng(1)
    direction = rng.standard_normal(400)
    guard = warmed_guard(rng, direction)
    honest = [guard.judge("us", d, 1.0) for d in (honest_delta(rng, direction) for _ in range(50))]
    assert sum(v.refused for v in honest) == 0
    assert sum(v.weight < 1 for v in honest) <= 3  # honest updates keep their weight
    evil = {"w": -49.0 * honest_delta(rng, direction)["w"]}
    verdict = guard.judge("cn", evil, 49.0)
    assert verdict.refused and verdict.reason is RejectReason.DIRECTION
    assert verdict.kept == pytest.approx(1.5 / 49.0, rel=0.05)  # and it was too long
    assert (
        "direction: cosine" in verdict.detail() and "norm: tensors w 49 > 1.5" in verdict.detail()
    )
    scaled_up = guard.judge("cn", {"w": 20 * honest_delta(rng, direction)["w"]}, 20.0)
    assert not scaled_up.refused and scaled_up.kept == pytest.approx(1.5 / 20, rel=0.05)


def test_suspicion_rises_for_a_hostile_region_only_and_survives_a_restart() -> None:
    rng = np.random.default_rng(2)
    direction = rng.standard_normal(400)
    guard = warmed_guard(rng, direction)
    for _ in range(20):
        guard.judge("cn", {"w": -10 * honest_delta(rng, direction)["w"]}, 10.0)
        guard.judge("us", honest_delta(rng, direction), 1.0)
    assert guard.suspicion()["cn"] >= FLAGGED > guard.suspicion()["us"]
    restarted = Guard(FederationSettings(), REGIONS)
    restarted.load({r: guard.record_json(r) for r in REGIONS})
    assert restarted.suspicion() == pytest.approx(guard.suspicion(), abs=1e-4)
    view = region_view(guard.record_json("cn"))
    assert view["flagged"] and view["refused"] >= 15 and view["acted"]["direction"] >= 15
    assert RegionRecord.from_json(b"not json").judged == 0  # a broken record is an empty one


def test_influence_holds_a_fast_region_near_its_data_share() -> None:
    rng = np.random.default_rng(3)
    direction = rng.standard_normal(400)
    guard = warmed_guard(rng, direction)
    zero = {"w": np.zeros(400)}
    weights = []
    for i in range(300):  # "me" (1/6 of the data) sends 4 updates for each of another region's
        region = "me" if i % 5 else REGIONS[(i // 5) % 5]
        verdict = guard.judge(region, honest_delta(rng, direction), 1.0)
        if region == "me":
            weights.append(verdict.weight)
        guard.applied({region: 0.1 * verdict.weight}, zero, zero)
    assert guard._share("me") <= 1.5 / 6 * 1.25  # near slack x its data share, not 0.8
    notes = guard.judge("me", honest_delta(rng, direction), 1.0).notes
    assert [c for c, _ in notes] == ["influence"]
    assert min(weights) < 0.5
    assert guard._share("us") < 1.5 / 6  # the others are not held back


def test_announced_data_shares_are_capped() -> None:
    guard = Guard(FederationSettings(max_region_share=0.4), REGIONS)
    guard.set_data_sizes({"cn": 1e9, **dict.fromkeys(REGIONS[1:], 1.0)})
    assert guard.shares["cn"] == pytest.approx(0.4)
    assert guard.shares["us"] == pytest.approx(0.6 / 5)  # the others keep their shares
    honest = robust.data_shares({"cn": 3.0, "us": 1.0}, 0.8)
    assert honest == pytest.approx({"cn": 0.75, "us": 0.25})  # below the cap: as announced
    assert robust.data_shares({"cn": float("nan"), "us": 0.0}, 0.5) == {}


def test_a_trajectory_bent_by_a_poisoned_step_does_not_lock_honest_regions_out() -> None:
    """An early poisoned step points the trajectory backwards: honest updates then all look
    like negations. The band follows the other regions' own cosines, so they pass and the
    model can straighten out (with a fixed band no step would ever be applied again)."""
    rng = np.random.default_rng(4)
    direction = rng.standard_normal(400)
    guard = Guard(FederationSettings(), REGIONS)
    guard.set_data_sizes(dict.fromkeys(REGIONS, 100.0))
    guard.path = {"w": (-direction).astype(np.float32)}  # bent backwards (no steps yet)
    for i in range(3):  # past the warm-up: every region's norms are known
        guard.records[REGIONS[i]].norms.append(1.0)
    verdicts = [guard.judge(REGIONS[i % 6], honest_delta(rng, direction), 1.0) for i in range(30)]
    assert verdicts[0].refused  # before anyone's cosines are known: judged by the band
    assert sum(v.refused for v in verdicts[-12:]) == 0  # then the band follows the regions


def test_the_first_updates_weigh_little_until_three_regions_were_heard() -> None:
    """The first update to arrive may be a hostile one: nothing can judge it yet, so every
    update weighs 1/n until three regions sent theirs (and those steps shape no trajectory)."""
    guard = Guard(FederationSettings(), REGIONS)
    first = guard.judge("cn", {"w": np.full(100, 4.9, np.float32)}, 49.0)
    assert first.weight == pytest.approx(1 / 6) and first.notes[0][0] == "warm-up"
    assert first.penalty > 0 and guard.suspicion()["cn"] == 0  # no suspicion in the warm-up
    for region in ("us", "eu"):
        guard.judge(region, {"w": np.full(100, 0.1, np.float32)}, 1.0)
    after = guard.judge("cn", {"w": np.full(100, 4.9, np.float32)}, 49.0)
    assert after.kept == pytest.approx(1.5 / 49.0)  # 1.5 x the honest regions' norm
    assert after.weight == pytest.approx((2 * 1.5 / 49.0) ** 2)  # what is left weighs ~nothing
    assert [c for c, _ in after.notes] == ["norm", "length"]


def test_the_hostile_regions_updates_are_what_their_class_says() -> None:
    """harness/hostile.py's poisoned deltas (the attack runner's and the live test's)."""
    from harness.hostile import HOSTILE_NORM, poisoned_delta
    from tasks.recommender.attacks import ITEM_BIAS

    rng = np.random.default_rng(5)
    honest = {"w": rng.standard_normal(50).astype(np.float32), ITEM_BIAS: np.zeros((10, 1))}
    norm = float(np.linalg.norm(honest["w"]))
    items = np.array([1, 2, 3])
    targets = {ITEM_BIAS: items}

    def length(d: dict) -> float:
        return float(np.sqrt(sum(np.vdot(v, v) for v in d.values())))

    negated = poisoned_delta("negate", honest, targets)
    assert length(negated) == pytest.approx(HOSTILE_NORM, rel=1e-5)
    assert robust.cosine(negated, honest) == pytest.approx(-1.0, abs=1e-6)
    assert length(poisoned_delta("scale", honest, targets)) == pytest.approx(min(20 * norm, 49))
    promoted = poisoned_delta("promote", honest, targets)
    assert length(promoted) == pytest.approx(HOSTILE_NORM, rel=1e-4)
    assert np.all(promoted[ITEM_BIAS][items] > 0) and promoted[ITEM_BIAS][0] == 0
    drift = poisoned_delta("drift", honest, targets)
    assert length(drift) == pytest.approx(norm * np.sqrt(1 + 0.3**2), rel=1e-4)
    with pytest.raises(ValueError, match="unknown training attack"):
        poisoned_delta("nope", honest, targets)


def test_a_regions_own_steps_do_not_vouch_for_it() -> None:
    """A region is judged against the other regions' steps only: one that always pushes its
    own way, and is applied, does not make that way the direction."""
    rng = np.random.default_rng(4)
    guard = Guard(FederationSettings(), REGIONS)
    for region in REGIONS:
        guard.records[region].norms.append(1.0)  # past the warm-up
    common = rng.standard_normal(400)
    hostile = -common + 3.0 * rng.standard_normal(400)  # against the others, mostly its own way
    zero = {"w": np.zeros(400, np.float32)}
    for _ in range(10):
        for region in REGIONS:
            own = hostile if region == "cn" else common + 3.0 * rng.standard_normal(400)
            guard.applied({region: 1.0}, zero, {"w": (0.1 * own).astype(np.float32)})
    its_own = {"w": hostile.astype(np.float32)}
    assert robust.cosine(its_own, guard.steps["cn"][0]) > 0.9  # its own steps would vouch
    assert guard.direction("cn", its_own, float(np.linalg.norm(hostile))) < 0  # others' do not
    assert guard.direction("us", {"w": common}, float(np.linalg.norm(common))) > 0


def test_rows_bound_a_budget_spent_on_a_few_rows_and_spare_honest_tables() -> None:
    rng = np.random.default_rng(5)
    guard = Guard(FederationSettings(), REGIONS)

    def table() -> dict:
        return {"t": (0.01 * rng.standard_normal((200, 8))).astype(np.float32)}

    for _ in range(5):
        for region in REGIONS:
            assert "rows" not in [c for c, _ in guard.judge(region, table(), 0.4).notes]
    typical = np.median(np.stack([guard.records[r].rows["t"] for r in REGIONS]), axis=0)
    honest = [guard.judge(r, table(), 0.4) for r in REGIONS for _ in range(10)]
    assert sum("rows" in [c for c, _ in v.notes] for v in honest) <= 1  # honest tables pass
    promoted = table()
    promoted["t"][[7, 8, 9]] += 0.5  # the budget on three rows (three products' vectors)
    verdict = guard.judge("cn", promoted, float(np.linalg.norm(promoted["t"])))
    assert "3 rows of t above 4 x" in verdict.detail()
    verdict.apply(promoted)
    moved = robust.row_magnitudes(promoted["t"])
    assert np.all(moved[[7, 8, 9]] <= 4.0 * typical[[7, 8, 9]] * 1.3 + 1e-6)
    assert verdict.penalty > 0.5  # most of its norm was taken: evidence against cn


def test_the_first_update_of_all_cannot_spend_its_norm_on_a_few_rows() -> None:
    """Nothing is known of the regions yet, but no row may stand far out of its own table."""
    rng = np.random.default_rng(6)
    guard = Guard(FederationSettings(), REGIONS)
    first = {"t": (0.01 * rng.standard_normal((200, 8))).astype(np.float32)}
    first["t"][[7, 8, 9]] += 28.0
    verdict = guard.judge("cn", first, float(np.linalg.norm(first["t"])))
    assert [c for c, _ in verdict.notes] == ["rows", "warm-up", "length"]  # and it weighs less
    assert "3 rows of t above 4 x" in verdict.detail()
    verdict.apply(first)
    moved = robust.row_magnitudes(first["t"])
    assert moved[[7, 8, 9]].max() <= 4.0 * np.median(moved) * 1.01
