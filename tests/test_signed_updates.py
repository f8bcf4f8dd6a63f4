"""Signed updates: the aggregator applies only updates signed with their own region's secret."""

from __future__ import annotations

import json
import os
import stat
import subprocess

import numpy as np

from coordinator import service
from coordinator.aggregator import Aggregator
from shared.auth import init_keys, load_keys, sign
from shared.jobs import new_update_id
from shared.keys import Keys
from shared.settings import FederationSettings
from tests.fleet import FEDQ
from tests.updates import issue_train, update_payload

K = Keys("signed")


def _payload(agg: Aggregator, update_id: str, region: str) -> bytes:
    delta = {k: np.full(v.shape, 1e-4, np.float32) for k, v in agg.weights.items()}
    return update_payload(update_id, region, 0, delta, data_size=100)


def test_unsigned_tampered_foreign_and_replayed_updates_are_rejected_with_reasons(
    r, toy_data, tmp_path
):
    fed = service.initialise(
        r,
        K,
        toy_data,
        FederationSettings(task="toy", signed_updates=True, target_versions=0, eval_every=0),
    )
    init_keys(tmp_path, fed.regions)
    secrets = load_keys(tmp_path, fed.regions)
    agg = Aggregator(r, K, fed, region_keys=secrets)
    ids = {name: new_update_id(issue_train(r, K, "cn", name)) for name in
           ("good", "unsigned", "tampered", "forged", "inside")}  # fmt: skip

    def publish(name: str, stream_region: str, payload: bytes, sig: str | None) -> None:
        fields = {"u": payload, "id": ids[name], "region": stream_region}
        if sig is not None:
            fields["sig"] = sig
        r.xadd(K.update_stream(stream_region), fields)

    good = _payload(agg, ids["good"], "cn")
    publish("good", "cn", good, sign(secrets["cn"], good))
    publish("unsigned", "cn", _payload(agg, ids["unsigned"], "cn"), None)
    tampered = bytearray(_payload(agg, ids["tampered"], "cn"))
    sig = sign(secrets["cn"], bytes(tampered))
    tampered[-1] ^= 0x01  # one bit of a tensor changed after signing
    publish("tampered", "cn", bytes(tampered), sig)
    forged = _payload(agg, ids["forged"], "cn")  # a us worker posing as cn
    publish("forged", "cn", forged, sign(secrets["us"], forged))
    inside = _payload(agg, ids["inside"], "cn")  # signed as us, claims cn in its header
    publish("inside", "us", inside, sign(secrets["us"], inside))
    publish("good", "cn", good, sign(secrets["cn"], good))  # replayed
    while agg.step(block_ms=50):
        pass
    by_name = {v: k for k, v in ids.items()}
    reasons = {by_name[f[b"claimed"].decode()]: f[b"reason"].decode()
               for _, f in r.xrange(K.rejections) if b"claimed" in f}  # fmt: skip
    assert reasons == {"unsigned": "unsigned", "tampered": "bad_signature",
                       "forged": "bad_signature", "inside": "wrong_region"}  # fmt: skip
    assert not any(r.hexists(K.rejected, i) for i in ids.values())  # none blocks a real one
    assert r.smembers(K.applied) == {ids["good"].encode()} and agg.version == 1
    assert int(r.hget(K.duplicates, ids["good"])) == 1
    stream = [(f[b"id"].decode(), f[b"reason"]) for _, f in r.xrange(K.rejections)]
    assert (ids["good"], b"replayed") in stream


def test_keys_init_writes_private_secrets_and_a_signed_run_applies_every_update(
    toy_data, redis_server, tmp_path
):
    env = {**os.environ, "FEDQ_KEYS": str(tmp_path / "keys")}
    out = subprocess.run([*FEDQ, "keys", "init", "--task", "toy", "--data", str(toy_data)],
                          env=env,
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 0 and "6 secret(s) written" in out.stdout, out.stderr
    for path in (tmp_path / "keys").glob("*.key"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert len(bytes.fromhex(path.read_text().strip())) == 32
    assert len(list((tmp_path / "keys").glob("*.key"))) == 6
    for path in (tmp_path / "keys" / "users").iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE((tmp_path / "keys" / "users.acl").stat().st_mode) == 0o644  # hashes
    assert stat.S_IMODE((tmp_path / "keys" / "users").stat().st_mode) == 0o700
    again = subprocess.run([*FEDQ, "keys", "init", "--task", "toy", "--data", str(toy_data)],
                          env=env,
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    assert "0 secret(s) written" in again.stdout and "6 kept" in again.stdout
    run = tmp_path / "run"
    proc = subprocess.run(
        [*FEDQ, "run", "--task", "toy", "--data", str(toy_data), "--redis-url", redis_server.url,
         "--namespace",
         "signedrun", "--signed-updates", "--target-versions", "12", "--eval-every", "12",
         "--workers-per-region", "1", "--no-baselines", "--out", str(run)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((run / "report.json").read_text())
    assert report["settings"]["signed_updates"] is True
    assert report["updates"]["applied"] == report["versions"] >= 12
    assert report["updates"]["rejected"] == 0
    assert sorted(p.name for p in (run / "keys").iterdir()) == sorted(
        f"{r}.key" for r in report["regions"])  # fmt: skip
    import redis

    from tests.privacy_scan import assert_no_raw_data

    assert_no_raw_data(redis.Redis.from_url(redis_server.url), toy_data)


def test_a_signed_federations_worker_runs_only_jobs_signed_for_their_id(
    r, toy_data, redis_server, tmp_path
):
    import time

    from rq import Queue

    from shared.jobs import SERIALIZER, TRAIN_TASK, JobSpec, record_issued
    from tests.fleet import Fleet

    keys = Keys("signedjobs")
    fed = service.initialise(
        r,
        keys,
        toy_data,
        FederationSettings(
            task="toy", signed_updates=True, target_versions=0, eval_every=0, max_retries=0
        ),
    )
    init_keys(tmp_path / "keys", fed.regions)
    cn = load_keys(tmp_path / "keys", ("cn",))["cn"]
    queue = Queue(keys.queue("cn"), connection=r, serializer=SERIALIZER)
    spec = JobSpec(kind="train", region="cn", seed=1,
                   issued_at=time.time())  # fmt: skip
    old = JobSpec(kind="train", region="cn", seed=2,
                  issued_at=time.time() - 86_400)  # fmt: skip
    record_issued(r, keys, "cn-ok", spec)
    queue.enqueue(TRAIN_TASK, spec.signed(cn, "cn-ok").to_json(), job_id="cn-ok")
    queue.enqueue(TRAIN_TASK, spec.to_json(), job_id="cn-unsigned")
    queue.enqueue(TRAIN_TASK, spec.signed(cn, "cn-ok").to_json(), job_id="cn-moved")
    queue.enqueue(TRAIN_TASK, old.signed(cn, "cn-old").to_json(), job_id="cn-old")
    with Fleet(redis_server.url, keys.namespace, toy_data) as fleet:
        fleet.env["FEDQ_KEYS"] = str(tmp_path / "keys")
        worker = fleet.worker("cn", "--burst")
        assert worker.wait(timeout=120) == 0, fleet.log(worker)
    published = {k.decode().partition(".")[0] for k in r.hkeys(keys.published("cn"))}
    assert published == {"cn-ok"}
    # a worker says a refusal on its own region's stream; the aggregator copies it
    refused = {
        f[b"id"].decode(): f[b"detail"].decode()
        for _, f in r.xrange(keys.update_stream("cn"))
        if b"refused" in f
    }
    assert set(refused) == {"cn-unsigned", "cn-moved", "cn-old"}
    assert "too old" in refused["cn-old"] and "signed for another id" in refused["cn-moved"]
    assert set(queue.failed_job_registry.get_job_ids()) == set(refused)
