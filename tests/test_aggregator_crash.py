"""kill -9 of the aggregator around its atomic commit: nothing applied twice, nothing lost.

The same updates go through an aggregator that never crashes (the reference) and through one
that is killed just before or just after its n-th commit and then restarted: the restarted one
must end at the same version with the same weights, each update applied exactly once.
"""

from __future__ import annotations

import json
import signal
from collections import Counter

import numpy as np
import pytest

from coordinator import service
from coordinator.aggregator import Aggregator
from shared.codec import Update, UpdateHeader, encode_update
from shared.jobs import JobSpec, record_issued
from shared.keys import Keys
from shared.settings import FederationSettings
from shared.store import ModelStore
from tests.fleet import Fleet, wait_until

N_UPDATES = 12
REGIONS = ("cn", "us", "eu", "jp")


def _federation(r, keys: Keys, toy_data, mode: str):
    # random deltas without a common direction: the guard would refuse them (test_guard.py)
    settings = FederationSettings(task="toy", mode=mode, buffer_size=3, target_versions=0,
                                  eval_every=0, robust=False)  # fmt: skip
    fed = service.initialise(r, keys, toy_data, settings)
    shapes = {k: v.shape for k, v in ModelStore(r, keys).read_current().weights.items()}
    rng = np.random.default_rng(7)
    for i in range(N_UPDATES):
        region = REGIONS[i % len(REGIONS)]
        job_id = f"{region}-t{i}-{i:016x}"  # the same ids in both namespaces
        record_issued(r, keys, job_id, JobSpec(kind="train", region=region))
        uid = f"{job_id}.{i:08x}"
        base = max(0, i - 2) if mode == "async" else max(0, i // 3 - 1)  # a little stale
        header = UpdateHeader(uid, job_id, region, "w", base, 100, 1.0, 0.1, 0.1, "fp32", 0.0,
                              None, 1000)  # fmt: skip
        delta = {k: rng.normal(0, 0.01, s).astype(np.float32) for k, s in shapes.items()}
        # explicit entry ids: arrival order over the regions' streams, even within a millisecond
        r.xadd(keys.update_stream(region), {"u": encode_update(Update(header, delta)), "id": uid,
                                            "region": region}, id=f"{i + 1}-0")  # fmt: skip
    return fed


def _settled(r, keys: Keys, expected_versions: int) -> bool:
    return (
        int(r.get(keys.version) or 0) == expected_versions
        and sum(r.xpending(s, "aggregators")["pending"] for s in keys.update_streams(REGIONS)) == 0
        and sum(r.xlen(s) for s in keys.update_streams(REGIONS)) == 0
    )


@pytest.mark.parametrize(
    "mode,point",
    [("async", "aggregator.after_commit:4"), ("async", "aggregator.before_commit:4"),
     ("buffered", "aggregator.after_commit:2"), ("buffered", "aggregator.before_commit:2")],
)  # fmt: skip
def test_kill_9_around_the_commit_neither_loses_nor_repeats_an_update(
    toy_data, redis_server, r, mode, point
):
    versions = N_UPDATES if mode == "async" else N_UPDATES // 3  # buffered: K=3
    ref_keys = Keys("reference")
    fed = _federation(r, ref_keys, toy_data, mode)
    reference = Aggregator(r, ref_keys, fed)
    while reference.step(block_ms=50):
        pass
    assert reference.version == versions

    keys = Keys("crashed")
    _federation(r, keys, toy_data, mode)
    with Fleet(redis_server.url, "crashed", toy_data) as fleet:
        doomed = fleet.aggregator(crash_at=point)
        assert doomed.wait(timeout=60) == -signal.SIGKILL
        crashed_at = int(r.get(keys.version))
        assert 0 < crashed_at < versions
        pending = sum(r.xpending(s, "aggregators")["pending"] for s in keys.update_streams(REGIONS))
        assert pending > 0  # read, not settled
        fleet.aggregator()
        assert wait_until(lambda: _settled(r, keys, versions), 60), fleet.log(fleet.procs[-1])

    applied = [u["id"] for _, e in r.xrange(keys.applies) for u in json.loads(e[b"updates"])]
    assert len(applied) == len(set(applied)) == versions * (1 if mode == "async" else 3)
    assert r.scard(keys.applied) == len(applied)
    assert r.hlen(keys.duplicates) == 0 and r.hlen(keys.rejected) == 0
    assert [int(e[b"version"]) for _, e in r.xrange(keys.applies)] == list(range(1, versions + 1))
    ref_applied = [u["id"] for _, e in r.xrange(ref_keys.applies)
                   for u in json.loads(e[b"updates"])]  # fmt: skip
    assert Counter(applied) == Counter(ref_applied)
    final = ModelStore(r, keys).read_current()
    for name, value in reference.weights.items():
        np.testing.assert_allclose(final.weights[name], value, rtol=0, atol=1e-6)
    assert not r.keys(f"{keys.namespace}:staged:*")  # a commit leaves no staged blob behind
