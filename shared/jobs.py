"""Round jobs: what the coordinator asks of a region, and the RQ queues that carry it.

A job spec holds a kind, a region, a seed and the learning-rate scale of this point of the run;
never data, and never the task's settings (workers read those from the federation record, so
a job cannot ask for a billion epochs). Jobs travel with
RQ's JSON serializer (never pickle: with pickle, anyone who can write to Redis runs code on every
worker), and workers run only the task functions named in ``TASKS``.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import asdict, dataclass, replace
from typing import Any

import redis
from rq import Queue
from rq.serializers import JSONSerializer

from shared import auth
from shared.keys import Keys

TRAIN_TASK = "worker.tasks.train"
EVALUATE_TASK = "worker.tasks.evaluate"
TASKS = {TRAIN_TASK: "train", EVALUATE_TASK: "evaluate"}  # task -> the spec kind it takes
SERIALIZER = JSONSerializer


@dataclass(frozen=True)
class JobSpec:
    kind: str  # "train" | "evaluate"
    region: str
    seed: int = 0
    lr_scale: float = 1.0  # train: the federation's decay of the local learning rate
    version: int | None = None  # evaluate: the version to score
    round: int | None = None  # sync mode: the round this job belongs to
    issued_at: float = 0.0
    sig: str | None = None  # HMAC-SHA256 by the region's secret over the rest and the job id

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def _signed_bytes(self, job_id: str) -> bytes:
        body = {**asdict(self), "sig": None, "job_id": job_id}
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    def signed(self, key: bytes, job_id: str) -> JobSpec:
        """This spec signed for ``job_id``: the signature does not carry over to another id."""
        return replace(self, sig=auth.sign(key, self._signed_bytes(job_id)))

    def verify(self, key: bytes, job_id: str) -> bool:
        return self.sig is not None and auth.verify(key, self._signed_bytes(job_id), self.sig)

    @staticmethod
    def from_json(raw: Any) -> JobSpec:
        """A spec from a job's JSON argument; ValueError names what is wrong with it."""
        if not isinstance(raw, dict):
            raise ValueError(f"job spec is not a mapping: {type(raw).__name__}")
        allowed = set(JobSpec.__dataclass_fields__)
        unknown = sorted(str(k)[:40] for k in set(raw) - allowed)
        if unknown:
            raise ValueError(f"job spec has unknown fields {unknown[:5]}")
        for name, types in _FIELD_TYPES.items():
            if name in raw and (not isinstance(raw[name], types) or isinstance(raw[name], bool)):
                raise ValueError(f"job spec field {name!r} has the wrong type")
        spec = JobSpec(**raw)
        if spec.kind not in ("train", "evaluate"):
            raise ValueError(f"job spec kind {spec.kind[:20]!r}")
        if not 0.0 < spec.lr_scale <= 1.0:  # NaN fails this too
            raise ValueError(f"job spec lr_scale {spec.lr_scale!r} outside (0, 1]")
        return spec


_FIELD_TYPES: dict[str, type | tuple[type, ...]] = {
    "kind": str, "region": str, "seed": int, "lr_scale": (int, float), "version": (int, type(None)),
    "round": (int, type(None)), "issued_at": (int, float), "sig": (str, type(None)),
}  # fmt: skip


def new_job_id(region: str, label: str) -> str:
    """``<region>-<label>-<nonce>``: the region first (ACL patterns and the aggregator read it),
    then a readable label (``t12``, ``e600``, ``r3``), then 64 random bits, so nobody who cannot
    read the region's queue can name one of its jobs in advance."""
    return f"{region}-{label}-{secrets.token_hex(8)}"


def job_region(job_id: str) -> str:
    return job_id.partition("-")[0]


def new_update_id(job_id: str) -> str:
    """One attempt's update id: the job id and a random suffix. A copy of an attempt sent twice
    has the same id (a duplicate); a re-run of the job has another, so a rejected attempt never
    blocks a later valid one, and at most one attempt per job is applied."""
    return f"{job_id}.{secrets.token_hex(4)}"


def job_of(update_id: str) -> str:
    return update_id.rpartition(".")[0]


def issued_command(keys: Keys, job_id: str, spec: JobSpec) -> tuple[str, str, str, str]:
    """The write that records what the coordinator issued, for the aggregator (which may not
    read RQ's job keys): ``HSET <ns>:issued <job id> <kind, region, version, round>``."""
    record = {"kind": spec.kind, "region": spec.region, "version": spec.version,
              "round": spec.round}  # fmt: skip
    return ("HSET", keys.issued, job_id, json.dumps(record))


def record_issued(
    pipe: redis.client.Pipeline | redis.Redis, keys: Keys, job_id: str, spec: JobSpec
) -> None:
    pipe.execute_command(*issued_command(keys, job_id, spec))


def issued_jobs(pipe: redis.client.Pipeline, keys: Keys, job_ids: list[str]) -> None:
    """Queue the look-up of each job's record on ``pipe``; read with ``parse_issued``."""
    for job_id in job_ids:
        pipe.hget(keys.issued, job_id or "-")


def parse_issued(raw: bytes | None) -> dict[str, Any] | None:
    try:
        record = json.loads(raw) if raw else None
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def region_queue(connection: redis.Redis, keys: Keys, region: str) -> Queue:
    return Queue(keys.queue(region), connection=connection, serializer=SERIALIZER)
