"""A region that floods its own streams loses its entries, not the federation its Redis.

The janitor (coordinator/quota.lua, run by the aggregator in the MULTI of each read) deletes an
entry larger than the largest honest one and every entry past the region's backlog bound, and
records each with the region named, while the other regions' honest updates are applied; the
aggregator's read is held to its byte budget; a worker's refusal of a job, said on its own
update stream, reaches the rejections stream through the aggregator. Real Redis throughout; the
refusal comes from a real ``fedq worker`` process.
"""

from __future__ import annotations

import numpy as np
from rq import Queue

from coordinator import service
from coordinator.aggregator import Aggregator
from coordinator.quota import MIN_BACKLOG, honest_backlog
from shared import streams
from shared.jobs import SERIALIZER
from shared.keys import Keys
from shared.settings import FederationSettings
from tests.fleet import Fleet
from tests.updates import publish

K = Keys("quota")


def _setup(r, toy_data) -> Aggregator:
    settings = FederationSettings(task="toy", eval_every=0, target_versions=0)
    return Aggregator(r, K, service.initialise(r, K, toy_data, settings))


def _delta(agg: Aggregator) -> dict[str, np.ndarray]:
    return {k: np.full(v.shape, 1e-3, np.float32) for k, v in agg.weights.items()}


def _drain(agg: Aggregator) -> int:
    steps = 0
    while agg.step(block_ms=50):
        steps += 1
    return steps


def _rejections(r) -> list[dict[str, str]]:
    return [{k.decode(): v.decode(errors="replace") for k, v in f.items()}
            for _, f in r.xrange(K.rejections)]  # fmt: skip


def test_oversized_entries_and_a_backlog_flood_are_deleted_and_recorded(r, toy_data):
    agg = _setup(r, toy_data)
    honest = [publish(r, K, region, 0, _delta(agg)) for region in ("us", "eu")]
    cn, cn_results = K.update_stream("cn"), K.evaluation_stream("cn")
    big = agg.quota.update_bound + 1
    for i in range(3):  # each just over the largest honest update of this model
        r.xadd(cn, {"u": b"\x00" * big, "id": f"cn-big-{i}", "region": "cn"})
    r.xadd(cn_results, {"m": b"{" * (agg.quota.result_bound + 1), "id": "cn-e1-x.1"})
    flood = 3 * agg.quota.max_count
    with r.pipeline(transaction=False) as pipe:
        for i in range(flood):  # small, but far more than any honest backlog
            pipe.xadd(cn, {"u": b"junk", "id": f"cn-t{i}-0000000000000000.0", "region": "cn"})
        pipe.execute()
    honest += [publish(r, K, region, 0, _delta(agg)) for region in ("us", "eu")]
    _drain(agg)
    assert r.smembers(K.applied) == {u.encode() for u in honest}  # every honest update
    deleted = {"too_large": 4, "quota": flood - agg.quota.max_count}
    assert dict(agg.quota.deleted) == deleted
    assert {k: agg.counters.by_reason[k] for k in deleted} == deleted  # counted as rejections
    swept = [f for f in _rejections(r) if f["reason"] in deleted]
    assert len(swept) == sum(deleted.values())
    assert {f["region"] for f in swept} == {"cn"}
    assert all(f["id"].startswith(f"entry:{K.namespace}:") for f in swept)
    assert all(r.hget(K.rejected, f["id"]).decode() == f["reason"] for f in swept)
    too_large = [f for f in swept if f["reason"] == "too_large"]
    assert {f["claimed"] for f in too_large} == {"cn-big-0", "cn-big-1", "cn-big-2", "cn-e1-x.1"}
    assert [f.get("kind") for f in too_large].count("evaluation") == 1
    for f in too_large:  # the entry's bytes (fields and names) against its kind's bound
        size, _, bound = f["detail"].partition(" bytes > ")
        kind = "evaluation" if "kind" in f else "update"
        limit = agg.quota.result_bound if kind == "evaluation" else agg.quota.update_bound
        assert int(size) > limit and bound == f"{limit}, the largest honest {kind} entry"

    quota = [f for f in swept if f["reason"] == "quota"]
    assert all(f"> {agg.quota.max_count} entries" in f["detail"] for f in quota)
    # the flood's first max_count entries were kept, read and rejected one by one as junk
    judged = [f for f in _rejections(r) if f["reason"] not in deleted]
    assert len(judged) == agg.quota.max_count
    assert all(f["id"].startswith(f"entry:{cn} ") for f in judged)
    assert r.xlen(cn) == 0 and r.xlen(cn_results) == 0
    assert not any(f.get("region") in ("us", "eu") for f in _rejections(r))


def test_the_backlog_bound_is_far_above_what_dispatch_allows(r, toy_data):
    """Nothing honest is deleted: a region's honest backlog is bounded by dispatch, and the
    janitor allows four times that (and never fewer than MIN_BACKLOG) before it deletes."""
    agg = _setup(r, toy_data)
    s = agg.fed.settings
    assert honest_backlog(agg.fed) >= s.inflight_per_region * (s.max_retries + 1)
    assert agg.quota.max_count == max(MIN_BACKLOG, 4 * honest_backlog(agg.fed))
    # an aggregator away while a region's honest updates pile up: all of them are applied
    ids = [publish(r, K, "cn", 0, _delta(agg)) for _ in range(honest_backlog(agg.fed))]
    _drain(agg)
    assert r.smembers(K.applied) == {u.encode() for u in ids}
    assert not agg.quota.deleted


def test_the_read_count_keeps_a_read_under_the_aggregators_budget(r, toy_data):
    agg = _setup(r, toy_data)
    assert agg.quota.read_count == 16  # a small model: the usual batch
    regions = len(agg.fed.regions)
    agg.quota.budget = 3 * regions * (agg.quota.update_bound + agg.quota.result_bound)
    assert agg.quota.read_count == 3
    ids = [publish(r, K, "cn", 0, _delta(agg)) for _ in range(10)]
    assert agg.step(block_ms=50) == 3  # three entries of cn's stream, not ten
    agg.quota.budget = 1  # below one entry: still one at a time
    assert agg.quota.read_count == 1
    assert agg.step(block_ms=50) == 1
    _drain(agg)
    assert r.smembers(K.applied) == {u.encode() for u in ids}


def test_a_workers_refusal_reaches_the_rejections_stream_through_the_aggregator(
    redis_server, r, toy_data
):
    agg = _setup(r, toy_data)
    queue = Queue(K.queue("cn"), connection=r, serializer=SERIALIZER)
    queue.enqueue("os.getcwd", job_id="cn-foreign")
    with Fleet(redis_server.url, K.namespace, toy_data) as fleet:
        worker = fleet.worker("cn", "--burst")
        assert worker.wait(timeout=120) == 0, fleet.log(worker)
        assert "Traceback" not in fleet.log(worker)
    assert r.xlen(K.rejections) == 0  # the worker wrote its own stream only
    said = [f for _, f in r.xrange(K.update_stream("cn"))]
    assert [streams.entry_text(f, streams.REFUSED) for f in said] == ["job_refused"]
    _drain(agg)
    [refusal] = _rejections(r)
    assert refusal["id"] == "cn-foreign" and refusal["reason"] == "job_refused"
    assert refusal["region"] == "cn" and refusal["worker"].startswith("cn.")
    assert "not one of fedq's tasks" in refusal["detail"]
    assert r.xlen(K.update_stream("cn")) == 0 and not r.exists(K.rejected)
    # a refusal can only say its own stream's region, and only a worker's reasons pass as one
    r.xadd(K.update_stream("us"), streams.refusal_entry("cn-x", "job_refused", "forged", "cn.w"))
    r.xadd(K.update_stream("us"), {"refused": "shape", "id": "us-t1-0123456789abcdef.0"})
    _drain(agg)
    copied, judged = _rejections(r)[1:]
    assert copied["region"] == "us" and copied["reason"] == "job_refused"
    assert judged["reason"] == "malformed" and judged["id"].startswith("entry:")
