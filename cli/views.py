"""Read-only views of a running federation, as JSON-ready dicts: what the inspection CLI prints.

Every function reads Redis (fedq's keys and RQ's own registries) and never writes, except
``requeue_failed`` and ``quarantine``. Shapes are stable and documented in docs/CLI.md;
``--json`` prints them as they are, the tables show a subset. Nothing here decodes weights: an
update is described by its header fields only.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from typing import Any

import redis
from rq.job import Job
from rq.registry import FailedJobRegistry
from rq.worker import Worker

from coordinator.guard import region_view
from shared import failures, federation
from shared.errors import FedqError
from shared.evaluations import accepted_results
from shared.jobs import SERIALIZER, TRAIN_TASK, region_queue
from shared.keys import Keys
from shared.privacy import budget_view
from shared.streams import applied_updates, update_counts, waiting_updates

RATE_WINDOW = 60.0  # seconds over which "updates per second" is measured


def _federation(r: redis.Redis, keys: Keys) -> federation.Federation:
    fed = federation.read(r, keys)
    if fed is None:
        raise FedqError(f"no federation under namespace {keys.namespace!r} in this Redis")
    return fed


def _regions(r: redis.Redis, keys: Keys, region: str | None) -> tuple[str, ...]:
    regions = _federation(r, keys).regions
    if region is None:
        return regions
    if region not in regions:
        raise FedqError(f"unknown region {region!r}; the federation has: {', '.join(regions)}")
    return (region,)


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode(errors="replace")


def queues(r: redis.Redis, keys: Keys) -> list[dict[str, Any]]:
    out = []
    for region in _regions(r, keys, None):
        q = region_queue(r, keys, region)
        out.append({
            "region": region, "queue": q.name, "queued": q.count,
            "started": q.started_job_registry.count, "finished": q.finished_job_registry.count,
            "failed": q.failed_job_registry.count, "scheduled": q.scheduled_job_registry.count,
            "in_flight": r.hlen(keys.inflight(region)),
        })  # fmt: skip
    return out


def workers(r: redis.Redis, keys: Keys) -> list[dict[str, Any]]:
    out = []
    for region in _regions(r, keys, None):
        for w in Worker.all(queue=region_queue(r, keys, region), serializer=SERIALIZER):
            out.append({
                "name": w.name, "region": region, "state": str(w.get_state()),
                "alive": bool(r.exists(keys.alive(w.name))),
                "current_job": w.get_current_job_id(),
                "successful_jobs": w.successful_job_count, "failed_jobs": w.failed_job_count,
                "birth": w.birth_date.timestamp() if w.birth_date else None,
                "last_heartbeat": w.last_heartbeat.timestamp() if w.last_heartbeat else None,
            })  # fmt: skip
    return sorted(out, key=lambda w: (w["region"], w["name"]))


def jobs(
    r: redis.Redis, keys: Keys, region: str | None = None, failed: bool = False
) -> list[dict[str, Any]]:
    """Jobs queued, started and failed (``failed``: only those), per region."""
    out = []
    for name in _regions(r, keys, region):
        q = region_queue(r, keys, name)
        groups = {"failed": q.failed_job_registry.get_job_ids()}
        if not failed:
            groups = {"queued": q.job_ids, "started": q.started_job_registry.get_job_ids(),
                      **groups}  # fmt: skip
        for where, ids in groups.items():
            for job in Job.fetch_many(ids, connection=r, serializer=SERIALIZER):
                if job is None:
                    continue
                exc = job.latest_result().exc_string if where == "failed" and job.latest_result() \
                    else None  # fmt: skip
                out.append({
                    "id": job.id, "region": name, "where": where, "kind": _kind(job),
                    "status": str(job.get_status(refresh=False)), "worker": job.worker_name,
                    "enqueued_at": _ts(job.enqueued_at), "started_at": _ts(job.started_at),
                    "ended_at": _ts(job.ended_at), "retries_left": job.retries_left,
                    "error": exc.strip().splitlines()[-1] if exc else None,
                })  # fmt: skip
    return out


def _kind(job: Job) -> str:
    """The task's last name (``train``), or ``undecodable`` for a job whose data the JSON
    serializer cannot read (a pickled job someone planted: a view never fails on one)."""
    try:
        return (job.func_name or "").rsplit(".", 1)[-1]
    except Exception:  # noqa: BLE001 - RQ raises DeserializationError and what caused it
        return "undecodable"


def rejections(r: redis.Redis, keys: Keys, tail: int = 20) -> list[dict[str, Any]]:
    out = []
    for _id, f in reversed(r.xrevrange(keys.rejections, count=tail)):
        d = {k.decode(): v.decode(errors="replace") for k, v in f.items()}
        out.append({
            "id": d.get("id"), "claimed": d.get("claimed"), "reason": d.get("reason"),
            "detail": d.get("detail"), "region": d.get("region"), "worker": d.get("worker"),
            "version": int(d["version"]) if d.get("version", "").isdigit() else None,
            "at": _number(d.get("at")),
        })  # fmt: skip
    return out


def _number(text: str | None) -> float | None:
    """A float a writer put in a stream field, or None if it is not a finite number (workers
    append to the rejections stream: a view never trusts its fields)."""
    try:
        value = float(text) if text is not None else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def models(r: redis.Redis, keys: Keys) -> list[dict[str, Any]]:
    """Every evaluated version and the versions still stored, with their metrics if any."""
    current = int(r.get(keys.version) or 0)
    fed = _federation(r, keys)
    window = fed.settings.max_staleness + 1
    evaluated = accepted_results(r, keys, fed)
    schema = fed.metrics
    shown = (*schema.table[:2], schema.size)
    versions = sorted({*evaluated, *range(max(0, current - window + 1), current + 1)})
    out = []
    for v in versions:
        info = {k.decode(): v_.decode() for k, v_ in r.hgetall(keys.model_info(v)).items()}
        by_region = evaluated.get(v, {})
        out.append({
            "version": v, "stored": bool(r.exists(keys.model(v))),
            "created_at": float(info["created_at"]) if "created_at" in info else None,
            "mode": info.get("mode"),
            "updates": [u for u in info.get("updates", "").split(",") if u],
            "regions": [x for x in info.get("regions", "").split(",") if x],
            "evaluation": {reg: {m: rec["test"].get(m) for m in shown}
                           for reg, rec in sorted(by_region.items())},
            "overall": ({m: v for m, v in schema.combine({g: rec["test"] for g, rec in
                                                         by_region.items()}).items() if m in shown}
                        if set(by_region) >= set(fed.regions) else None),
        })  # fmt: skip
    return out


def status(r: redis.Redis, keys: Keys, now: float | None = None) -> dict[str, Any]:
    now = time.time() if now is None else now
    fed = _federation(r, keys)
    version = int(r.get(keys.version) or 0)
    created = r.hget(keys.model_info(version), "created_at")
    counts = update_counts(r, keys, fed.regions)
    updates = applied_updates(r, keys)
    recent = [u for u in updates if u["at"] and now - u["at"] <= RATE_WINDOW]
    staleness = sorted(u["staleness"] for u in updates if u["staleness"] is not None)
    last_by_region = {u["region"]: u["at"] for u in updates if u["at"]}
    q_by_region = {q["region"]: q for q in queues(r, keys)}
    live = Counter(w["region"] for w in workers(r, keys) if w["alive"])
    latest = _latest_evaluation(r, keys, fed)
    found = failures.read(r, keys, fed.regions)
    streaks = failures.worst(found)
    broken = failures.broken(found, fed.settings.max_failures)
    task = failures.broken_task(found, fed.regions, fed.settings.max_failures)
    guard = _guard_views(r, keys, fed.regions)
    quarantined = _quarantined(r, keys)
    replays = _replays(r, keys, fed.regions)
    return {
        "namespace": keys.namespace,
        "mode": fed.settings.mode,
        "version": version,
        "target_versions": fed.settings.target_versions,
        "model_age_s": round(now - float(created), 1) if created else None,
        "done": _text(r.get(keys.done)),
        "updates": {
            **{k: counts[k] for k in ("published", "applied", "rejected", "duplicates")},
            "rejected_by_reason": dict(sorted(counts["rejected_by_reason"].items())),
            "waiting": waiting_updates(r, keys, fed.regions),
            "per_second": round(len(recent) / RATE_WINDOW, 2),
        },
        "jobs": {"retried": counts["jobs_retried"], "abandoned": counts["jobs_abandoned"]},
        # every job failure streak in one line each, longest first; ``broken``: it reached
        # max_failures (the region gets no share of the train jobs, its evaluations are not
        # waited for); ``task_broken``: every region fails the same way
        "failing": [
            {
                "region": f.region,
                **f.to_json(),
                "line": f.line(),
                "broken": (f.region, f.kind) in broken,
            }
            for f in sorted(streaks.values(), key=lambda f: (-f.count, f.region, f.kind))
        ],
        "task_broken": task.line() if task is not None else None,
        "staleness": {
            "p50": _quantile(staleness, 0.5),
            "p90": _quantile(staleness, 0.9),
            "max": staleness[-1] if staleness else None,
            "histogram": {str(s): n for s, n in sorted(Counter(staleness).items())},
        },  # fmt: skip
        "regions": {
            region: {
                "queued": q_by_region[region]["queued"],
                "started": q_by_region[region]["started"],
                "failed": q_by_region[region]["failed"],
                "live_workers": live.get(region, 0),
                "last_update_age_s": round(now - last_by_region[region], 1)
                if region in last_by_region
                else None,
                "latest_evaluation": latest.get(region),
                "failing": {
                    kind: streaks[(region, kind)].to_json()
                    for kind in failures.KINDS
                    if (region, kind) in streaks
                },
                "privacy": budget_view(r, keys, region) if fed.settings.dp_clip else None,
                "guard": guard[region],
                "quarantined": region in quarantined,
                "replays": replays[region],
            }
            for region in fed.regions
        },  # fmt: skip
    }


def _guard_views(r: redis.Redis, keys: Keys, regions: tuple[str, ...]) -> dict[str, dict]:
    """Each region's guard record as ``coordinator.guard.region_view`` shows it (an empty
    record for a region the aggregator has not judged yet)."""
    raw = r.hmget(keys.guard, list(regions)) if regions else []
    return {region: region_view(value) for region, value in zip(regions, raw, strict=True)}


def _quarantined(r: redis.Redis, keys: Keys) -> set[str]:
    return {m.decode(errors="replace") for m in r.smembers(keys.quarantined)}


def _replays(r: redis.Redis, keys: Keys, regions: tuple[str, ...]) -> Counter[str]:
    """Per region, the copies of its updates dropped as duplicates beyond those its workers
    published: replays (its workers count every copy they send in the MULTI that sends it).

    Only ids with a duplicate can have such a copy. The duplicates are read first and the
    rest after, in one MULTI: a copy published and dropped in between is then counted as
    published and not as dropped, so a federation at work never shows a false replay. ``fedq
    audit`` counts every copy beyond the published count, re-rejected ones too (it reads the
    whole rejections stream, which a view refreshed every two seconds should not).
    """
    dropped = {k.decode(errors="replace"): int(v) for k, v in r.hgetall(keys.duplicates).items()}
    ids = [i for i in dropped if i.partition("-")[0] in regions]
    out: Counter[str] = Counter()
    if not ids:
        return out
    with r.pipeline(transaction=True) as pipe:
        for update_id in ids:
            pipe.hget(keys.published(update_id.partition("-")[0]), update_id)
        pipe.smismember(keys.applied, ids)
        pipe.hmget(keys.rejected, ids)
        rows = pipe.execute()
    published, applied, rejected = rows[: len(ids)], rows[-2], rows[-1]
    for i, update_id in enumerate(ids):
        if published[i] is None:  # not an update its workers sent (an evaluation result's)
            continue
        received = int(applied[i]) + (rejected[i] is not None) + dropped[update_id]
        out[update_id.partition("-")[0]] += max(0, received - int(published[i]))
    return out


def quarantined_regions(r: redis.Redis, keys: Keys) -> list[dict[str, Any]]:
    """The regions an operator quarantined, with what the guard makes of them."""
    regions = _federation(r, keys).regions
    members = sorted(_quarantined(r, keys))
    views = _guard_views(r, keys, tuple(members))
    return [
        {"region": region, "known": region in regions, **_guard_summary(views[region])}
        for region in members
    ]


def quarantine(r: redis.Redis, keys: Keys, region: str, release: bool = False) -> dict[str, Any]:
    """Quarantine ``region`` (``release``: end it): the aggregator refuses its updates and the
    coordinator issues it no train job while it is in ``Keys.quarantined``. Says whether this
    call changed anything; a region the federation does not have is an error, except when
    releasing one that is in the set anyway (a stray member an operator clears)."""
    regions = _federation(r, keys).regions
    stray = release and region not in regions and r.sismember(keys.quarantined, region)
    if region not in regions and not stray:
        raise FedqError(f"unknown region {region!r}; the federation has: {', '.join(regions)}")
    if release:
        changed = bool(r.srem(keys.quarantined, region))
    else:
        changed = bool(r.sadd(keys.quarantined, region))
    view = _guard_views(r, keys, (region,))[region]
    return {
        "region": region,
        "quarantined": not release,
        "changed": changed,
        **_guard_summary(view),
    }


def _guard_summary(view: dict[str, Any]) -> dict[str, Any]:
    return {"suspicion": view["suspicion"], "flagged": view["flagged"]}


def requeue_failed(
    r: redis.Redis, keys: Keys, region: str | None = None, job_ids: tuple[str, ...] = ()
) -> list[str]:
    """Put failed jobs back on their queues (all of a region's, or the named ones)."""
    done = []
    for name in _regions(r, keys, region):
        registry = FailedJobRegistry(keys.queue(name), connection=r, serializer=SERIALIZER)
        for job_id in registry.get_job_ids():
            if not job_ids or job_id in job_ids:
                job = registry.requeue(job_id)
                if job.func_name == TRAIN_TASK:  # it counts toward the region's bound again
                    r.hset(keys.inflight(name), job_id, f"{time.time():.3f}")
                done.append(job_id)
    missing = sorted(set(job_ids) - set(done))
    if missing:
        raise FedqError(f"not failed (or unknown) jobs: {', '.join(missing)}; requeued {done}")
    return done


def _latest_evaluation(r: redis.Redis, keys: Keys, fed: federation.Federation
                       ) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Each region's latest test figures: the task's first two report columns."""
    out: dict[str, dict[str, Any]] = {}
    for version, by_region in sorted(accepted_results(r, keys, fed).items()):
        for region, rec in by_region.items():
            out[region] = {"version": version,
                           **{m: rec["test"].get(m) for m in fed.metrics.table[:2]}}  # fmt: skip
    return out


def _quantile(values: list[int], q: float) -> int | None:
    return values[min(len(values) - 1, int(q * len(values)))] if values else None


def _ts(value) -> float | None:
    return value.timestamp() if value is not None else None
