"""Evaluation results: what a region's workers publish about a version, and how it is checked.

A worker scores a version on its region's held-out users and appends the result to its
region's evaluation stream (``Keys.evaluation_stream``; its ACL user may append to no other).
The aggregator checks each result like an update (signature, schema, finite values in range,
an evaluation job the coordinator issued for that version and region, one result per job) and
copies the accepted ones onto ``Keys.metrics``, the only stream the learning curve, the stopping
rule (``target_metric``) and the views read. A forged or broken result is rejected with its
reason and counts for nothing.

Which figures a result must carry, and their ranges, come from the task's metric schema in the
federation record (``tasks.api.MetricSchema``): the aggregator checks results without importing
the task (or torch).
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

import redis

from shared import consensus, failures
from shared.errors import FedqError
from shared.keys import Keys
from shared.streams import RESULT
from tasks.api import MetricSchema

if TYPE_CHECKING:
    from shared.federation import Federation

MAX_RESULT_BYTES = 64 * 1024


class BadResult(FedqError, ValueError):
    """An evaluation result that cannot count; the message says why."""


def encode_result(record: dict[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True, allow_nan=False).encode()


def check_result(
    raw: bytes, region: str, job_id: str, version: int, schema: MetricSchema
) -> dict[str, Any]:
    """The result as a record, if it is one ``region``'s worker could honestly have made for
    evaluation job ``job_id`` of ``version``; else BadResult naming the problem."""
    if not isinstance(raw, bytes) or len(raw) > MAX_RESULT_BYTES:
        raise BadResult(f"not bytes, or more than {MAX_RESULT_BYTES} bytes")
    try:
        record = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise BadResult("not JSON") from None
    if not isinstance(record, dict):
        raise BadResult("not a JSON object")
    if record.get("region") != region:
        raise BadResult(f"region {str(record.get('region'))[:40]!r}, came on {region!r}'s stream")
    if record.get("job_id") != job_id:
        raise BadResult(f"job id {str(record.get('job_id'))[:80]!r} != the entry's {job_id!r}")
    got = record.get("version")
    if not isinstance(got, int) or isinstance(got, bool) or got != version:
        raise BadResult(f"version {str(got)[:20]!r}, but job {job_id!r} evaluates {version}")
    at = record.get("at")
    if not isinstance(at, int | float) or isinstance(at, bool) or not math.isfinite(at):
        raise BadResult("'at' is not a finite number")
    try:
        test = schema.check(record.get("test"), "test")
        validation = schema.check(record.get("validation"), "validation")
    except ValueError as exc:
        raise BadResult(str(exc)) from None
    return {"version": version, "region": region, "job_id": job_id, "at": float(at),
            "test": test, "validation": validation}  # fmt: skip


def parse_accepted(fields: dict[bytes, bytes], schema: MetricSchema) -> dict[str, Any] | None:
    """A record of the metrics stream (written only by the aggregator, after ``check_result``),
    or None if it does not parse: a view never trusts a stream."""
    try:
        payload = fields[RESULT.encode()]
        record = json.loads(payload)
        version, region = record["version"], record["region"]
        return check_result(payload, region, record["job_id"], version, schema)
    except (KeyError, ValueError, TypeError):
        return None


def accepted_results(
    connection: redis.Redis, keys: Keys, fed: Federation
) -> dict[int, dict[str, dict]]:
    """version -> region -> the evaluation record the aggregator accepted (one per job),
    re-checked against the federation's metric schema: a reader never trusts a stream. Each
    record has ``accepted_at``: when the aggregator accepted it (Redis's clock, seconds)."""
    out: dict[int, dict[str, dict]] = {}
    for entry_id, fields in connection.xrange(keys.metrics):
        record = parse_accepted(fields, fed.metrics)
        if record is not None:  # anything else is skipped
            record["accepted_at"] = int(entry_id.split(b"-")[0]) / 1000.0
            out.setdefault(record["version"], {})[record["region"]] = record
    return out


def quarantined(connection: redis.Redis, keys: Keys) -> set[str]:
    """The regions an operator quarantined (``fedq quarantine``)."""
    return {r.decode() for r in connection.smembers(keys.quarantined)}


def voters(
    connection: redis.Redis, keys: Keys, regions: tuple[str, ...], max_failures: int
) -> list[str]:
    """The regions whose evaluations count: not quarantined, and not failing their evaluation
    jobs ``max_failures`` times in a row (a silent region is then not waited for at all)."""
    left_out = quarantined(connection, keys)
    streaks = failures.broken(failures.read(connection, keys, regions), max_failures)
    left_out |= {region for region, kind in streaks if kind == "evaluate"}
    return [r for r in regions if r not in left_out]


def latest_validation(connection: redis.Redis, keys: Keys, fed: Federation) -> float | None:
    """The task's headline on validation at the newest version that counts (a quorum of the
    regions not quarantined, ``shared.consensus.settled``), regions combined so that no single
    region's figure decides (``consensus.robust_combine``): the stopping rule's
    ``target_metric``."""
    voting = voters(connection, keys, fed.regions, fed.settings.max_failures)
    seconds, micros = connection.time()
    now = seconds + micros / 1e6
    results = accepted_results(connection, keys, fed)
    for version in sorted(results, reverse=True):
        by = {r: rec for r, rec in results[version].items() if r in voting}
        if not by:
            continue
        first = min(rec["accepted_at"] for rec in by.values())
        if consensus.settled(by, voting, now - first, fed.settings.eval_grace):
            figures = {r: rec["validation"] for r, rec in by.items()}
            return consensus.robust_combine(fed.metrics, figures)[fed.metrics.headline]
    return None
