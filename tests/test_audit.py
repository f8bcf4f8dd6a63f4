"""The exactly-once audit finds what it is there to find (against a real Redis)."""

from __future__ import annotations

import json

from coordinator.audit import audit
from shared.keys import Keys

K = Keys("audit")


def _apply(r, version: int, *ids: str) -> None:
    r.xadd(K.applies, {"version": version, "updates": json.dumps([{"id": i} for i in ids])})
    r.sadd(K.applied, *ids)
    r.set(K.version, version)


def _publish(r, update_id: str, copies: int = 1) -> None:
    r.hincrby(K.published, update_id, copies)


def test_a_clean_history_passes(r):
    for i in ("a", "b", "c", "d"):
        _publish(r, i)
    _publish(r, "a")  # a second copy, dropped as a duplicate
    r.hincrby(K.duplicates, "a", 1)
    _apply(r, 1, "a", "b")
    _apply(r, 2, "c")
    r.hset(K.rejected, "d", "stale")
    result = audit(r, K)
    assert result.ok, result.problems
    assert (result.applied, result.rejected, result.duplicates) == (3, 1, 1)


def test_a_lost_update_a_double_apply_and_a_gap_are_each_found(r):
    for i in ("a", "b", "lost"):
        _publish(r, i)
    _apply(r, 1, "a")
    _apply(r, 2, "a", "b")
    r.set(K.version, 3)
    problems = " | ".join(audit(r, K).problems)
    assert "neither applied nor rejected: lost" in problems
    assert "applied more than once: a" in problems
    assert "version counter 3" in problems


def test_an_unaccounted_copy_and_an_update_both_applied_and_rejected_are_found(r):
    _publish(r, "a", copies=2)  # two copies, but no duplicate recorded
    _publish(r, "b")
    _apply(r, 1, "a", "b")
    r.hset(K.rejected, "b", "shape")
    problems = " | ".join(audit(r, K).problems)
    assert "copies not accounted for: a" in problems
    assert "both applied and rejected: b" in problems
