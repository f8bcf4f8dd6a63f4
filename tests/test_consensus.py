"""Evaluation figures no one region controls: the quorum, the trimmed combination and the
vote on a fall (shared/consensus.py), and the stopping rule's figure read from a real Redis."""

from __future__ import annotations

import pytest

from coordinator import service
from shared import consensus, failures, streams
from shared.evaluations import encode_result, latest_validation, voters
from shared.keys import Keys
from shared.settings import FederationSettings
from tasks.recommender.task import METRICS

REGIONS = ("cn", "us", "eu", "in", "jp", "me")


def figures(hr: float, users: float = 100.0) -> dict[str, float]:
    return {"users": users, "hr@10": hr, "ndcg@10": hr / 2}


def test_the_quorum_is_two_thirds_and_a_silent_region_waits_only_the_grace() -> None:
    assert [consensus.quorum(n) for n in (1, 2, 3, 6)] == [1, 2, 2, 4]
    assert consensus.settled(REGIONS, REGIONS, 0.0, 60.0)  # everyone: at once
    assert not consensus.settled(REGIONS[:5], REGIONS, 10.0, 60.0)  # one silent: wait
    assert consensus.settled(REGIONS[:5], REGIONS, 60.0, 60.0)  # ... no longer than the grace
    assert not consensus.settled(REGIONS[:3], REGIONS, 1e9, 60.0)  # below the quorum: never
    assert not consensus.settled(["xx"], [], 1e9, 0.0)


def test_a_region_at_the_top_or_bottom_of_the_range_is_left_out() -> None:
    honest = {r: figures(0.30 + 0.01 * i) for i, r in enumerate(REGIONS[1:])}
    truth = consensus.robust_combine(METRICS, {**honest, "cn": figures(0.32)})["hr@10"]
    without = consensus.robust_combine(METRICS, honest)["hr@10"]
    for lie in (1.0, 0.0):
        lied = consensus.robust_combine(METRICS, {**honest, "cn": figures(lie)})["hr@10"]
        assert 0.30 <= lied <= 0.34  # within the honest regions' range
        # the liar is trimmed; one honest extreme comes back in its place
        assert abs(lied - truth) <= 0.02 / 4 + 1e-9 and abs(lied - without) <= 0.01
    plain = METRICS.combine({**honest, "cn": figures(1.0)})["hr@10"]
    assert plain > 0.4  # without trimming, one region's 1.0 lifts everyone's figure
    assert consensus.trimmed({"a": 1.0, "b": 0.0}) == set()  # two: nothing to trim by
    assert consensus.trimmed({"a": 1.0, "b": 0.0, "c": 0.5}) == {"a", "b"}


def test_a_fall_needs_most_regions_to_fall() -> None:
    before = {r: figures(0.30) for r in REGIONS}
    risen = {r: figures(0.32) for r in REGIONS}
    assert consensus.fall(METRICS, before, {**risen, "cn": figures(0.0)}) is None
    fallen = {r: figures(0.25) for r in REGIONS}
    why = consensus.fall(METRICS, before, {**fallen, "cn": figures(1.0)})
    assert why is not None and "in 5 of 6 regions" in why


def test_the_stopping_rule_counts_a_quorum_and_clamps_a_liar(r, toy_data) -> None:
    keys = Keys("c")
    fed = service.initialise(r, keys, toy_data, FederationSettings(task="toy", eval_grace=0.0))
    schema = fed.metrics

    def report(version: int, region: str, value: float) -> None:
        figs = {m.name: (100.0 if m.is_count else value) for m in schema.metrics}
        record = {"version": version, "region": region, "job_id": f"{region}-e{version}-x",
                  "at": 1.0, "test": figs,
                  "validation": {n: figs[n] for n in schema.validation}}  # fmt: skip
        r.xadd(keys.metrics, streams.accepted_entry(version, region, encode_result(record)))

    regions = fed.regions
    for region in regions[:2]:
        report(1, region, 0.6)
    assert latest_validation(r, keys, fed) is None  # 2 of 6: no decision
    for region in regions[2:4]:
        report(1, region, 0.6)
    assert latest_validation(r, keys, fed) == pytest.approx(0.6)  # 4 of 6 after the grace
    report(1, regions[4], 1.0)  # a liar: trimmed
    assert latest_validation(r, keys, fed) == pytest.approx(0.6)
    report(2, regions[4], 1.0)  # alone on a newer version: it does not count
    assert latest_validation(r, keys, fed) == pytest.approx(0.6)
    r.sadd(keys.quarantined, *regions[1:4])  # cn and the liar are 2 of the 3 voters left
    assert latest_validation(r, keys, fed) == pytest.approx(0.8)  # two: nothing to clamp by
    r.srem(keys.quarantined, *regions[1:4])
    r.sadd(keys.quarantined, regions[4])  # the liar quarantined: its figures do not count
    report(3, regions[4], 1.0)
    assert latest_validation(r, keys, fed) == pytest.approx(0.6)


def test_a_region_whose_evaluations_keep_failing_does_not_vote(r, toy_data) -> None:
    """A silent region is waited for ``eval_grace``; one whose evaluation jobs failed
    ``max_failures`` times in a row is not waited for at all."""
    keys = Keys("v")
    fed = service.initialise(r, keys, toy_data, FederationSettings(task="toy"))
    assert voters(r, keys, fed.regions, 5) == list(fed.regions)
    for i in range(5):
        failures.record(r, keys, "cn", "evaluate", "RuntimeError: silent", f"cn-e{i}-x")
    assert "cn" not in voters(r, keys, fed.regions, 5)
    assert voters(r, keys, fed.regions, 0) == list(fed.regions)  # 0: nothing is ever broken
    r.sadd(keys.quarantined, "us")
    assert voters(r, keys, fed.regions, 5) == [g for g in fed.regions if g not in ("cn", "us")]
