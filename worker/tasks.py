"""The RQ entry points a fedq worker runs: train and evaluate. Nothing else is allowed.

Both take a job spec (JSON: hyper-parameters, a seed, a version; never data) and read the
region's data from the worker's own data directory. ``train`` publishes an update (the delta
from its base version, msgpack) on its region's update stream; ``evaluate`` publishes metrics.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
from rq import get_current_job

from shared.aggregation import subtract
from shared.auth import sign
from shared.codec import Update, UpdateHeader, encode_update
from shared.evaluations import VALIDATION_METRICS, encode_result
from shared.jobs import JobSpec, new_update_id
from shared.privacy import privatize
from shared.resilience import Outage, retry_redis
from shared.settings import TrainSettings
from shared.task.evaluate import ModelScorer, evaluate_region
from shared.task.model import build, load_numpy_state
from shared.task.train import TrainConfig, train_local
from worker.context import WorkerContext, current

WARMUP_JOBS = 8  # see shared.task.train.Trainer.warm_up


def train(spec: dict[str, Any]) -> dict[str, Any]:
    ctx = current()
    job = _spec(spec, ctx, "train")
    job_id = _job_id()
    started = time.perf_counter()
    model = ctx.cache.current()
    ts = TrainSettings(**job.train)
    result = train_local(
        ctx.model_config,
        ctx.data.shared.features,
        model.weights,
        ctx.data.split.train,
        TrainConfig(
            epochs=ts.epochs,
            batch_size=ts.batch_size,
            lr=ts.lr,
            prox_mu=ts.prox_mu,
            max_examples=ts.examples_per_job,
            seed=job.seed,
            threads=1,
            # a worker's first job: gather Adam's moments over eight jobs' worth of batches
            moment_warmup=WARMUP_JOBS * -(-ts.examples_per_job // ts.batch_size),
        ),
        optimizer_state=ctx.optimizer_state,
    )
    ctx.optimizer_state = result.optimizer_state
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
        encoding=ts.encoding,
        created_at=time.time(),
        round=job.round,
        data_size=len(ctx.data.split.train),
    )
    delta = subtract(result.weights, model.weights)
    dp = ctx.federation.settings
    if dp.dp_clip:  # fresh OS entropy: nobody can regenerate the noise from a seed
        delta = privatize(delta, dp.dp_clip, dp.dp_noise, np.random.default_rng())
    payload = encode_update(Update(header, delta))
    # the update is held until Redis takes it (a copy sent twice is dropped as a duplicate);
    # the audit count goes in the same MULTI, so it counts exactly the copies published
    _publish(ctx, lambda: _publish_update(ctx, update_id, payload))
    return {
        "update_id": update_id,
        "base_version": model.version,
        "n_samples": result.n_samples,
        "loss": result.loss,
        "bytes": len(payload),
    }


def evaluate(spec: dict[str, Any]) -> dict[str, Any]:
    ctx = current()
    job = _spec(spec, ctx, "evaluate")
    if job.version is None:
        raise ValueError("an evaluate job names the version to score")
    stored = ctx.store.read(job.version)
    if stored is None:
        raise LookupError(f"model version {job.version} is no longer in Redis (outside the window)")
    model = build(ctx.model_config, ctx.data.shared.features)
    load_numpy_state(model, stored.weights)
    scorer = ModelScorer(model)
    test = evaluate_region(scorer, ctx.data, "test", seed=job.seed)
    validation = evaluate_region(scorer, ctx.data, "validation", negatives=0, seed=job.seed)
    job_id = _job_id()
    record = {
        "version": job.version,
        "region": ctx.region,
        "job_id": job_id,
        "test": test,
        "validation": {k: validation[k] for k in VALIDATION_METRICS},
        "at": time.time(),
    }
    payload = encode_result(record)
    fields = {"m": payload, "id": new_update_id(job_id), "region": ctx.region}
    if ctx.signing_key is not None:
        fields["sig"] = sign(ctx.signing_key, payload)
    _publish(ctx, lambda: ctx.connection.xadd(ctx.keys.evaluation_stream(ctx.region), fields,
                                              maxlen=100_000, approximate=True))  # fmt: skip
    return {"version": job.version, "region": ctx.region, "hr@10": test["hr@10"]}


def _publish_update(ctx: WorkerContext, update_id: str, payload: bytes) -> None:
    fields = {"u": payload, "id": update_id, "region": ctx.region}
    if ctx.signing_key is not None:
        fields["sig"] = sign(ctx.signing_key, payload)
    with ctx.connection.pipeline(transaction=True) as pipe:
        pipe.xadd(ctx.keys.update_stream(ctx.region), fields)
        pipe.hincrby(ctx.keys.published(ctx.region), update_id, 1)
        pipe.execute()


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
