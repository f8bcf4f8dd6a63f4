"""The RQ entry points a fedq worker runs: train and evaluate. Nothing else is allowed.

Both take a job spec (JSON: a seed, a learning-rate scale, a version; never data) and run the
federation's task on the region's data, read from the worker's own data directory. ``train``
publishes an update (the delta from its base version, msgpack) on its region's update stream;
``evaluate`` publishes metrics.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from rq import get_current_job

from shared import failures, streams
from shared.aggregation import subtract, tensor_problem
from shared.auth import sign
from shared.codec import Update, UpdateHeader, encode_update
from shared.evaluations import encode_result
from shared.jobs import JobSpec, new_update_id
from shared.resilience import Outage, retry_redis
from tasks.api import MetricSchema, Step
from worker.context import WorkerContext, current


def train(spec: dict[str, Any]) -> dict[str, Any]:
    ctx = current()
    job = _spec(spec, ctx, "train")
    job_id = _job_id()
    started = time.perf_counter()
    model = ctx.cache.current()
    fed = ctx.federation.settings
    if ctx.privacy is not None and ctx.privacy_job is None:
        raise RuntimeError("a DP federation's train job ran without spending from the budget")
    # the mechanism the worker spent from the region's budget for this job (worker/process.py)
    step = Step(seed=job.seed, lr_scale=job.lr_scale, privacy=ctx.privacy_job)
    ctx.privacy_job = None  # spent once: a re-run of the job spends again
    result = ctx.task.train(model.weights, ctx.data, fed.task_settings, step, ctx.task_state)
    _check_trained(result.weights, model.weights)
    ctx.task_state = result.state
    if ctx.slowdown > 1:  # stands for a slow or distant silo
        time.sleep((ctx.slowdown - 1) * (time.perf_counter() - started))
    update_id = new_update_id(job_id)  # this attempt's: a re-run of the job gets another
    header = UpdateHeader(
        update_id=update_id,
        job_id=job_id,
        region=ctx.region,
        worker_id=ctx.worker_id,
        base_version=model.version,
        n_samples=result.n_samples,
        train_loss=result.loss,
        train_seconds=result.seconds,
        total_seconds=time.perf_counter() - started,
        encoding=fed.encoding,
        created_at=time.time(),
        round=job.round,
        data_size=ctx.task.data_size(ctx.data),
    )
    delta = subtract(result.weights, model.weights)
    payload = encode_update(Update(header, delta))
    # the update is held until Redis takes it (a copy sent twice is dropped as a duplicate);
    # the audit count goes in the same MULTI, so it counts exactly the copies published
    _publish(ctx, lambda: _publish_update(ctx, update_id, payload))
    if ctx.metrics is not None:
        ctx.metrics.job_done("train", time.perf_counter() - started, result.n_samples,
                             result.seconds)  # fmt: skip
    return {
        "update_id": update_id,
        "base_version": model.version,
        "n_samples": result.n_samples,
        "loss": result.loss,
        "bytes": len(payload),
    }


def evaluate(spec: dict[str, Any]) -> dict[str, Any]:
    ctx = current()
    started = time.perf_counter()
    job = _spec(spec, ctx, "evaluate")
    if job.version is None:
        raise ValueError("an evaluate job names the version to score")
    stored = ctx.store.read(job.version)
    if stored is None:
        raise LookupError(f"model version {job.version} is no longer in Redis (outside the window)")
    schema, settings = ctx.federation.metrics, ctx.federation.settings.task_settings
    test = ctx.task.evaluate(stored.weights, ctx.data, settings, "test", job.seed)
    validation = ctx.task.evaluate(stored.weights, ctx.data, settings, "validation", job.seed)
    job_id = _job_id()
    record = {
        "version": job.version,
        "region": ctx.region,
        "job_id": job_id,
        "test": _figures(schema, test, "test"),
        "validation": _figures(schema, validation, "validation"),
        "at": time.time(),
    }
    payload = encode_result(record)
    fields = streams.result_entry(payload, new_update_id(job_id), ctx.region, _sig(ctx, payload))
    stream, cap = ctx.keys.evaluation_stream(ctx.region), streams.RESULTS_MAXLEN

    def send() -> None:
        with ctx.connection.pipeline(transaction=True) as pipe:
            pipe.xadd(stream, fields, maxlen=cap, approximate=True)
            failures.clear_job(pipe, ctx.keys, ctx.region, "evaluate")  # a success ends a streak
            pipe.execute()

    _publish(ctx, send)
    if ctx.metrics is not None:
        ctx.metrics.job_done("evaluate", time.perf_counter() - started)
    headline = record["test"].get(schema.headline)
    return {"version": job.version, "region": ctx.region, schema.headline: headline}


def _figures(schema: MetricSchema, raw: object, part: str) -> dict[str, float]:
    """The task's ``part`` figures as they travel, checked here as the aggregator will check
    them: a value out of its range fails the job with that cause (it would only be rejected,
    after travelling). A figure that is undefined for this region (NaN or None: a small
    region's test split with no example of what it measures) is left out of the result, not
    sent as NaN; a count never is."""
    if not isinstance(raw, Mapping):
        raise ValueError(f"the task's evaluate returned {type(raw).__name__}, not its figures")
    out: dict[str, float] = {}
    for name in schema.names(part):
        value = raw.get(name)
        if isinstance(value, np.generic):
            value = value.item()
        undefined = value is None or (isinstance(value, float) and math.isnan(value))
        if undefined and not schema.metric(name).is_count:
            continue
        out[name] = value
    try:
        return schema.check(out, part)
    except ValueError as exc:
        raise ValueError(f"the task's evaluate returned what it cannot send: {exc}") from None


def _check_trained(new: dict[str, np.ndarray], base: dict[str, np.ndarray]) -> None:
    """A task's weights must have the global model's names, shapes and finite values: anything
    else would only be rejected by the aggregator, after travelling."""
    problem = tensor_problem(new, base)
    if problem is not None:
        raise ValueError(f"the task returned weights the global model cannot take: {problem[1]}")


def _publish_update(ctx: WorkerContext, update_id: str, payload: bytes) -> None:
    fields = streams.update_entry(payload, update_id, ctx.region, _sig(ctx, payload))
    with ctx.connection.pipeline(transaction=True) as pipe:
        pipe.xadd(ctx.keys.update_stream(ctx.region), fields)
        pipe.hincrby(ctx.keys.published(ctx.region), update_id, 1)
        failures.clear_job(pipe, ctx.keys, ctx.region, "train")  # a success ends a streak
        pipe.execute()


def _sig(ctx: WorkerContext, payload: bytes) -> str | None:
    return None if ctx.signing_key is None else sign(ctx.signing_key, payload)


def _publish(ctx: WorkerContext, send: Callable[[], object]) -> None:
    retry_redis(send, Outage(ctx.say, f"worker {ctx.worker_id}"))


def _spec(raw: dict[str, Any], ctx: WorkerContext, kind: str) -> JobSpec:
    """The job's spec, already admitted by the worker (``worker.process.job_problem``: kind,
    region, signature); checked again here so a task never runs on another region's spec."""
    job = JobSpec.from_json(raw)
    if job.kind != kind or job.region != ctx.region:
        raise ValueError(f"a {job.kind} spec for {job.region!r} sent to {ctx.region!r}'s {kind}")
    return job


def _job_id() -> str:
    job = get_current_job()
    if job is None:
        raise RuntimeError("fedq tasks run only as RQ jobs")
    return job.id
