"""The aggregator's guard in a live aggregator over a real Redis: a region with valid jobs
that sends poisoned but well-formed updates is scaled down, down-weighted or refused with the
check named; its suspicion is recorded for the views; an operator's quarantine refuses it.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from coordinator import service
from coordinator.aggregator import Aggregator
from coordinator.guard import FLAGGED, region_view
from shared.jobs import new_update_id
from shared.keys import Keys
from shared.settings import FederationSettings
from shared.streams import applied_updates
from tests.updates import issue_train, publish, update_payload

KEYS = Keys("t")
HONEST = ("us", "eu", "in", "jp", "me")


def _aggregator(r, data, task: str = "toy", **overrides) -> Aggregator:
    settings = FederationSettings(task=task, target_versions=0, **overrides)
    fed = service.initialise(r, KEYS, data, settings)
    for region in fed.regions:
        r.set(KEYS.data_size(region), 100)
    return Aggregator(r, KEYS, fed)


def _drain(agg: Aggregator) -> None:
    """Until every entry on the regions' streams is settled (or held by the strategy): a read
    that comes back empty on a busy machine is no sign the streams are."""
    streams = [KEYS.update_stream(r) for r in agg.fed.regions]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        agg.step(block_ms=50)
        if sum(agg.r.xlen(s) for s in streams) <= len(agg.strategy.held()):
            return
    raise AssertionError("the aggregator did not settle the streams within 60 s")


class Regions:
    """Honest regions' deltas: a shared direction plus each update's own noise, norm ~1."""

    def __init__(self, agg: Aggregator, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.agg = agg
        self.direction = {k: self.rng.standard_normal(v.shape) for k, v in agg.weights.items()}

    def honest(self, scale: float = 1.0) -> dict[str, np.ndarray]:
        out = {}
        for k, d in self.direction.items():
            noise = self.rng.standard_normal(d.shape)
            out[k] = 0.8 * d / np.linalg.norm(d) + 0.6 * noise / np.linalg.norm(noise)
        norm = np.sqrt(sum(float(np.vdot(v, v)) for v in out.values()))
        return {k: (scale * v / norm).astype(np.float32) for k, v in out.items()}

    def send(self, region: str, delta: dict[str, np.ndarray]) -> str:
        return publish(self.agg.r, KEYS, region, self.agg.version, delta)

    def warm_up(self, rounds: int = 8) -> None:
        for _ in range(rounds):
            for region in ("cn", *HONEST):
                self.send(region, self.honest())
                _drain(self.agg)


def _rejections(r) -> dict[str, dict[str, str]]:
    return {
        f[b"id"].decode(): {k.decode(): v.decode() for k, v in f.items()}
        for _, f in r.xrange(KEYS.rejections)
    }


def test_a_negation_is_refused_a_scaled_update_clipped_and_the_region_flagged(r, wide_toy_data):
    agg = _aggregator(r, wide_toy_data)
    regions = Regions(agg)
    regions.warm_up()
    assert not _rejections(r)  # honest updates pass
    negated, scaled = [], []
    for _i in range(10):
        negated.append(regions.send("cn", {k: -49 * v for k, v in regions.honest().items()}))
        for region in HONEST:
            regions.send(region, regions.honest())
        _drain(agg)
    scaled = regions.send("us", regions.honest(scale=30.0))
    _drain(agg)
    rejections = _rejections(r)
    assert all(rejections[u]["reason"] == "direction" for u in negated[2:])
    assert all("direction: cosine" in rejections[u]["detail"] for u in negated[2:])
    applied = {u["id"]: u for u in applied_updates(r, KEYS)}
    assert "norm: " in applied[scaled]["guard"]  # applied, at the bound's length
    honest = [u["guard"] for u in applied.values() if u["region"] != "cn" and u["guard"]]
    odd = [note for note in honest if "norm: " not in note and not note.startswith("warm-up: ")]
    assert not odd, odd
    cn = region_view(r.hget(KEYS.guard, "cn"))
    us = region_view(r.hget(KEYS.guard, "us"))
    assert cn["flagged"] and cn["suspicion"] >= FLAGGED and cn["refused"] >= 8
    assert not us["flagged"] and us["refused"] == 0
    assert agg.metrics.suspicion.labels("cn")._value.get() >= FLAGGED


def test_two_colluding_regions_that_negate_from_the_first_update_are_both_held(r, wide_toy_data):
    """cn and us negate at the fixed bound from their first update on, and are the first
    regions heard: no bound or direction may be theirs to set."""
    agg = _aggregator(r, wide_toy_data)
    regions = Regions(agg)
    start = {k: v.copy() for k, v in agg.weights.items()}
    hostile = []
    for _i in range(12):
        for region in ("cn", "us"):
            hostile.append(regions.send(region, {k: -49 * v for k, v in regions.honest().items()}))
        for region in HONEST[1:]:
            regions.send(region, regions.honest())
        _drain(agg)
    moved = {k: agg.weights[k] - start[k] for k in start}
    along = sum(float(np.vdot(moved[k], regions.direction[k])) for k in moved)
    assert along > 0  # the model went the honest regions' way, not the colluders'
    applied = {u["id"]: u for u in applied_updates(r, KEYS)}
    rejections = _rejections(r)
    for update in hostile[6:]:  # after the first three rounds: cut to nothing, or refused
        assert update in rejections or applied[update]["weight"] < 0.05
    for region in ("cn", "us"):
        assert region_view(r.hget(KEYS.guard, region))["flagged"]
    for region in HONEST[1:]:
        view = region_view(r.hget(KEYS.guard, region))
        assert not view["flagged"] and view["refused"] == 0


def test_the_guard_learned_survives_a_restarted_aggregator(r, wide_toy_data):
    agg = _aggregator(r, wide_toy_data)
    regions = Regions(agg)
    regions.warm_up()
    before = agg.guard.suspicion()
    again = Aggregator(r, KEYS, agg.fed)
    assert again.guard.suspicion() == pytest.approx(before, abs=1e-4)
    assert again.guard.path is not None  # seeded from the model's recent versions
    regions.agg = again
    update = regions.send("cn", {k: -40 * v for k, v in regions.honest().items()})
    _drain(again)
    assert _rejections(r)[update]["reason"] == "direction"


def test_a_budget_spent_on_a_few_rows_is_held_to_what_the_regions_move_them_by(r, small_data):
    """Promotion: three products' bias pushed hard by a region whose update is otherwise
    honest. The rows check holds those rows to a few times the regions' usual move."""
    agg = _aggregator(r, small_data, task="recommender")
    regions = Regions(agg)
    regions.warm_up()
    bias, rows = "item_bias.weight", [7, 8, 9]
    before = agg.weights[bias][rows].copy()
    promoted = regions.honest()
    promoted[bias][rows] += 3.0
    update = regions.send("cn", promoted)
    _drain(agg)
    applied = {u["id"]: u["guard"] for u in applied_updates(r, KEYS)}
    detail = applied.get(update) or _rejections(r)[update]["detail"]
    assert "rows: " in detail and "rows of item_bias.weight above 4 x" in detail
    moved = np.abs(agg.weights[bias][rows] - before)
    assert moved.max() < 0.05  # unguarded, FedAsync would have moved them by alpha x 3 = 1.8
    assert region_view(r.hget(KEYS.guard, "cn"))["acted"].get("rows") == 1


def test_a_quarantined_region_is_refused_until_released(r, wide_toy_data):
    agg = _aggregator(r, wide_toy_data)
    regions = Regions(agg)
    r.sadd(KEYS.quarantined, "cn")
    held = regions.send("cn", regions.honest())
    _drain(agg)
    assert _rejections(r)[held]["reason"] == "quarantined"
    r.srem(KEYS.quarantined, "cn")
    version = agg.version
    regions.send("cn", regions.honest())
    _drain(agg)
    assert agg.version == version + 1


def test_buffered_mode_combines_regions_robustly(r, wide_toy_data):
    agg = _aggregator(r, wide_toy_data, mode="buffered", buffer_size=6)
    regions = Regions(agg)
    regions.warm_up(rounds=4)
    start = {k: v.copy() for k, v in agg.weights.items()}
    version = agg.version
    for region in HONEST:
        regions.send(region, regions.honest())
    evil = regions.send("cn", regions.honest(scale=-30.0))  # long and backwards
    regions.send("us", regions.honest())
    _drain(agg)
    assert agg.version == version + 1  # six accepted: the buffer was flushed
    assert _rejections(r)[evil]["reason"] == "direction"
    step = {k: agg.weights[k] - start[k] for k in start}
    cosine = sum(float(np.vdot(step[k], regions.direction[k])) for k in step) / (
        np.sqrt(sum(float(np.vdot(v, v)) for v in step.values()))
        * np.sqrt(sum(float(np.vdot(v, v)) for v in regions.direction.values()))
    )
    assert cosine > 0.2  # the step still goes the honest regions' way


def test_a_copy_of_a_refused_update_is_a_replay_not_judged_again(r, wide_toy_data):
    """Refused while its region was quarantined, then sent again after the release: dropped as
    a copy of a settled update (judged again, it would now pass)."""
    agg = _aggregator(r, wide_toy_data)
    regions = Regions(agg)
    job_id = issue_train(r, KEYS, "cn")
    update_id = new_update_id(job_id)
    payload = update_payload(update_id, "cn", agg.version, regions.honest())
    fields = {"u": payload, "id": update_id, "region": "cn"}
    r.sadd(KEYS.quarantined, "cn")
    r.xadd(KEYS.update_stream("cn"), fields)
    _drain(agg)
    assert _rejections(r)[update_id]["reason"] == "quarantined"
    r.srem(KEYS.quarantined, "cn")
    version = agg.version
    for _ in range(2):  # once in a batch of its own, once twice in one batch
        r.xadd(KEYS.update_stream("cn"), fields)
    _drain(agg)
    assert agg.version == version and not r.sismember(KEYS.applied, update_id)
    assert int(r.hget(KEYS.duplicates, update_id)) == 2
