"""Evaluation results are checked like updates: a forged or broken one counts for nothing.

A worker appends its region's result to its own evaluation stream; the aggregator accepts only
the first valid result of an evaluation job the coordinator issued to that region for that
version, and copies it onto the metrics stream, which the learning curve, the stopping rule
(``target_metric``) and ``fedq status``/``fedq models`` read. Malformed results (a bogus
``test``, a missing field, NaN, a rate above 1, the wrong version), results for jobs nobody
issued (a forged headline of 1.0 to stop the federation early) and results on another region's
stream are rejected with their reason, and nothing crashes.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from coordinator import service
from coordinator.aggregator import Aggregator
from coordinator.dispatcher import Dispatcher
from shared.auth import init_keys, load_keys, sign
from shared.evaluations import accepted_results
from shared.jobs import JobSpec, new_job_id, new_update_id, record_issued
from shared.keys import Keys
from shared.settings import FederationSettings
from tasks.toy import TASK as TOY
from tests.fleet import FEDQ

K = Keys("results")


def _issue_eval(r, region: str, version: int) -> str:
    job_id = new_job_id(region, f"e{version}")
    record_issued(r, K, job_id, JobSpec(kind="evaluate", region=region, version=version))
    return job_id


def _record(job_id: str, region: str, version: int, hr: float = 0.3, **changes) -> dict:
    record = {"version": version, "region": region, "job_id": job_id, "at": 1.0,
              "test": dict.fromkeys(TOY.metrics.names("test"), hr) | {"n": 100.0},
              "validation": dict.fromkeys(TOY.metrics.validation, hr) | {"n": 100.0}}  # fmt: skip
    record.update(changes)
    return record


def _send(r, region: str, job_id: str, record, stream_region: str | None = None, key=None):
    payload = record if isinstance(record, bytes) else json.dumps(record).encode()
    fields = {"m": payload, "id": new_update_id(job_id), "region": region}
    if key is not None:
        fields["sig"] = sign(key, payload)
    r.xadd(K.evaluation_stream(stream_region or region), fields)
    return fields["id"]


def _drain(agg: Aggregator) -> None:
    while agg.step(block_ms=50):
        pass


@pytest.mark.parametrize("signed", [False, True])
def test_only_the_first_valid_result_of_an_issued_job_counts(
    r, toy_data, redis_server, tmp_path, signed, monkeypatch
):
    monkeypatch.setenv("FEDQ_KEYS", str(tmp_path))  # where the dispatcher finds the secrets
    settings = FederationSettings(task="toy", eval_every=0, target_versions=0,
                                  target_metric=0.99, signed_updates=signed)  # fmt: skip
    fed = service.initialise(r, K, toy_data, settings)
    init_keys(tmp_path, fed.regions)
    secrets = load_keys(tmp_path, fed.regions)
    agg = Aggregator(r, K, fed, region_keys=secrets)
    key = secrets["cn"] if signed else None
    good = _issue_eval(r, "cn", 0)
    sent = {
        "good": _send(r, "cn", good, _record(good, "cn", 0), key=key),
        "again": _send(r, "cn", good, _record(good, "cn", 0, hr=0.9), key=key),
    }
    bad = {  # each for a job of its own, issued to cn for version 0
        "bogus_test": lambda j: _record(j, "cn", 0, test="bogus"),
        "missing": lambda j: {k: v for k, v in _record(j, "cn", 0).items() if k != "validation"},
        "nan": lambda j: json.dumps(_record(j, "cn", 0)).replace("0.3", "NaN", 1).encode(),
        "above_one": lambda j: _record(j, "cn", 0, hr=1.5),
        "wrong_version": lambda j: _record(j, "cn", 7),
        "not_json": lambda j: b"\xff{",
    }
    for name, make in bad.items():
        job = _issue_eval(r, "cn", 0)
        sent[name] = _send(r, "cn", job, make(job), key=key)
    forged = new_job_id("cn", "e0")  # never issued: a headline of 1.0 to stop the federation
    sent["forged"] = _send(r, "cn", forged, _record(forged, "cn", 0, hr=1.0), key=key)
    us_job = _issue_eval(r, "us", 0)  # a cn worker reporting for us, on its own stream
    sent["posing"] = _send(r, "us", us_job, _record(us_job, "us", 0, hr=1.0), "cn", key=key)
    if signed:
        sent["unsigned"] = _send(r, "cn", good, _record(good, "cn", 0, hr=1.0))
    _drain(agg)
    reasons = {f[b"claimed"].decode(): f[b"reason"].decode()
               for _, f in r.xrange(K.rejections) if b"claimed" in f}  # fmt: skip
    by_name = {name: reasons.get(i) for name, i in sent.items()}
    assert by_name["good"] is None and by_name["again"] is None  # accepted; a duplicate
    assert {by_name[n] for n in bad} == {"malformed"}
    assert by_name["forged"] == "unknown_job"
    assert by_name["posing"] == "wrong_region"
    if signed:
        assert by_name["unsigned"] == "unsigned"
    results = accepted_results(r, K, fed)
    assert list(results) == [0] and list(results[0]) == ["cn"]
    assert results[0]["cn"]["test"]["accuracy"] == pytest.approx(0.3)
    assert int(r.hget(K.duplicates, sent["again"])) == 1
    assert Dispatcher(r, K, fed).target_reached(0) is None  # the forged 1.0 stopped nothing
    # whatever lands on the accepted stream by mistake is skipped by every reader, no crash
    r.xadd(K.metrics, {"version": "0", "region": "us", "m": b'{"test": "bogus"}'})
    r.xadd(K.metrics, {"x": "y"})
    assert list(accepted_results(r, K, fed)[0]) == ["cn"]
    env = {"FEDQ_REDIS_URL": redis_server.url, "FEDQ_NAMESPACE": K.namespace}
    for command in (["status", "--json"], ["models", "--json"], ["rejections", "--json"]):
        out = subprocess.run([*FEDQ, *command], capture_output=True, text=True, timeout=60,
                             env={**os.environ, **env})  # fmt: skip
        assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
        json.loads(out.stdout)
