"""Only an authentic update of a job settles that job, and a rejected attempt blocks nothing.

A holder of one region's credentials appends garbage to its own stream under other regions' job
ids (even the real next ones) and under made-up ids of its own region; then the honest updates
arrive. Every honest update is applied, every forgery is rejected with its reason under the
stream entry it came in (never under the id it claimed), with or without signed updates. A job
re-run after a stale first attempt is applied once, from its valid attempt.
"""

from __future__ import annotations

import numpy as np
import pytest

from coordinator import service
from coordinator.aggregator import Aggregator
from shared.auth import init_keys, load_keys, sign
from shared.jobs import new_update_id
from shared.keys import Keys
from shared.settings import FederationSettings
from tests.updates import issue_train, publish, update_payload

K = Keys("ids")


def _setup(r, toy_data, tmp_path, signed: bool, **overrides):
    settings = FederationSettings(task="toy", eval_every=0, target_versions=0,
                                  signed_updates=signed, **overrides)  # fmt: skip
    fed = service.initialise(r, K, toy_data, settings)
    init_keys(tmp_path, fed.regions)
    secrets = load_keys(tmp_path, fed.regions)
    return fed, secrets, Aggregator(r, K, fed, region_keys=secrets)


def _delta(agg: Aggregator, value: float = 1e-4) -> dict[str, np.ndarray]:
    return {k: np.full(v.shape, value, np.float32) for k, v in agg.weights.items()}


def _drain(agg: Aggregator) -> None:
    while agg.step(block_ms=50):
        pass


@pytest.mark.parametrize("signed", [False, True])
def test_squatted_ids_never_drop_an_honest_update(r, toy_data, tmp_path, signed):
    fed, secrets, agg = _setup(r, toy_data, tmp_path, signed)
    victims = {region: [issue_train(r, K, region, f"t{i}") for i in range(3)]
               for region in ("us", "eu")}  # fmt: skip
    own_fake = [f"cn-t{i}-0000000000000000" for i in range(3)]  # cn ids nobody issued
    cn = K.update_stream("cn")
    forged = 0
    for job_id in [j for ids in victims.values() for j in ids] + own_fake:
        update_id = new_update_id(job_id)
        region = job_id.partition("-")[0]
        for header_region in {region, "cn"}:  # the header tells the truth, or lies
            payload = update_payload(update_id, header_region, 0, _delta(agg, 1e3), job_id=job_id)
            fields = {"u": payload, "id": update_id, "sig": sign(secrets["cn"], payload)}
            r.xadd(cn, fields)
            r.xadd(cn, {"u": b"\x00garbage", "id": update_id, "sig": "00" * 32})
            forged += 2
    r.hincrby(K.published("cn"), "cn-forged", forged)  # the attacker may bump its own counts
    _drain(agg)
    assert agg.version == 0  # nothing forged was applied
    assert r.hlen(K.rejected) == forged
    assert all(k.startswith(b"entry:") for k in r.hkeys(K.rejected))
    reasons = {f[b"reason"].decode() for _, f in r.xrange(K.rejections)}
    expected = {"bad_signature", "wrong_region", "unknown_job"} if signed else \
        {"malformed", "wrong_region", "unknown_job"}  # fmt: skip
    assert reasons == expected
    sig = (lambda region: lambda p: sign(secrets[region], p)) if signed else (lambda _r: None)
    honest = [publish(r, K, region, 0, _delta(agg), job_id=job_id, sig=sig(region))
              for region, ids in victims.items() for job_id in ids]  # fmt: skip
    _drain(agg)
    assert agg.version == len(honest)
    assert r.smembers(K.applied) == {u.encode() for u in honest}
    assert not any(r.hexists(K.rejected, u) for u in honest)


def test_a_stale_attempt_never_blocks_the_valid_re_run(r, toy_data, tmp_path):
    fed, _, agg = _setup(r, toy_data, tmp_path, signed=False, max_staleness=1)
    for _ in range(3):  # the model moves on while the first attempt is paused
        publish(r, K, "us", agg.version, _delta(agg))
        _drain(agg)
    job = issue_train(r, K, "cn", "t9")
    first = publish(r, K, "cn", 0, _delta(agg), job_id=job)  # staleness 3 > 1
    _drain(agg)
    assert r.hget(K.rejected, first) == b"stale"
    second = publish(r, K, "cn", agg.version, _delta(agg), job_id=job)  # the re-run
    _drain(agg)
    assert r.sismember(K.applied, second) and r.hget(K.applied_jobs, job) == second.encode()
    third = publish(r, K, "cn", agg.version, _delta(agg), job_id=job)  # one more attempt
    _drain(agg)
    assert int(r.hget(K.duplicates, third)) == 1 and not r.sismember(K.applied, third)
    assert agg.version == 4


def test_buffered_mode_applies_one_attempt_of_a_job(r, toy_data, tmp_path):
    fed, _, agg = _setup(r, toy_data, tmp_path, signed=False, mode="buffered", buffer_size=2)
    job = issue_train(r, K, "cn", "t1")
    first = publish(r, K, "cn", 0, _delta(agg), job_id=job)
    second = publish(r, K, "cn", 0, _delta(agg), job_id=job)  # held first: a duplicate
    other = publish(r, K, "us", 0, _delta(agg))
    _drain(agg)
    assert agg.version == 1
    assert r.smembers(K.applied) == {first.encode(), other.encode()}
    assert int(r.hget(K.duplicates, second)) == 1
