"""The exactly-once audit finds what it is there to find (against a real Redis)."""

from __future__ import annotations

import json

from harness.audit import audit
from shared.federation import Federation, create
from shared.jobs import JobSpec, record_issued
from shared.keys import Keys
from shared.settings import FederationSettings
from tasks.toy import TASK as TOY

K = Keys("audit")


def _federation(r) -> None:
    create(r, K, Federation(FederationSettings(task="toy"), ("cn", "us"), "d", "test",
                            TOY.metrics))  # fmt: skip


def _job(r, name: str, region: str = "cn") -> str:
    job_id = f"{region}-{name}-0123456789abcdef"
    record_issued(r, K, job_id, JobSpec(kind="train", region=region))
    return job_id


def _apply(r, version: int, *ids: str) -> None:
    r.xadd(K.applies, {"version": version, "updates": json.dumps([{"id": i} for i in ids])})
    r.sadd(K.applied, *ids)
    r.set(K.version, version)


def _publish(r, update_id: str, copies: int = 1) -> None:
    r.hincrby(K.published(update_id.partition("-")[0]), update_id, copies)


def _reject(r, update_id: str, reason: str) -> None:
    r.hset(K.rejected, update_id, reason)
    r.xadd(K.rejections, {"id": update_id, "reason": reason})


def test_a_clean_history_passes(r):
    _federation(r)
    a, b, c, d = (f"{_job(r, n)}.0000000{i}" for i, n in enumerate("abcd"))
    retried = f"{_job(r, 'e', 'us')}.00000001"  # a first, stale attempt; the re-run applied
    rerun = retried[:-1] + "2"
    for i in (a, b, c, d, retried, rerun):
        _publish(r, i)
    _publish(r, a)  # a second copy, dropped as a duplicate
    r.hincrby(K.duplicates, a, 1)
    _apply(r, 1, a, b)
    _apply(r, 2, c, rerun)
    _reject(r, d, "stale")
    _reject(r, retried, "stale")
    r.xadd(
        K.rejections,
        {
            "id": "entry:audit:updates:cn 1-0",
            "reason": "unknown_job",
            "claimed": f"{_job(r, 'f', 'us')}.00000000",
        },
    )  # a forgery, not counted
    _publish(r, "cn-made-up.0")  # a hostile worker's count under an id nobody issued
    result = audit(r, K)
    assert result.ok, result.problems
    assert (result.applied, result.rejected, result.duplicates) == (4, 2, 1)
    assert (result.jobs_applied, result.forged_or_broken, result.unknown_claims) == (4, 1, 1)


def test_a_lost_update_a_double_apply_and_a_gap_are_each_found(r):
    _federation(r)
    a, b, lost = (f"{_job(r, n)}.00000000" for n in ("a", "b", "lost"))
    for i in (a, b, lost):
        _publish(r, i)
    _apply(r, 1, a)
    _apply(r, 2, a, b)
    r.set(K.version, 3)
    problems = " | ".join(audit(r, K).problems)
    assert f"neither applied nor rejected: {lost}" in problems
    assert f"applied more than once: {a}" in problems
    assert "version counter 3" in problems


def test_unaccounted_copies_two_attempts_applied_and_unissued_jobs_are_found(r):
    _federation(r)
    a, b = (f"{_job(r, n)}.00000000" for n in ("a", "b"))
    twin = a[:-1] + "1"  # another attempt of a's job
    _publish(r, a, copies=2)  # two copies, but no duplicate recorded
    _publish(r, b)
    _publish(r, twin)
    stranger = "us-t7-ffffffffffffffff.00000000"  # applied, never issued
    _apply(r, 1, a, b, twin, stranger)
    _reject(r, b, "shape")
    problems = " | ".join(audit(r, K).problems)
    assert f"copies not accounted for: {a}" in problems
    assert f"both applied and rejected: {b}" in problems
    assert f"more than one applied attempt: {a.rpartition('.')[0]}" in problems
    assert f"never issued: {stranger}" in problems
