"""Updates as a worker makes them, for tests that feed the aggregator directly: each belongs to
a train job the coordinator issued (``record_issued``), with an attempt's update id."""

from __future__ import annotations

import numpy as np

from shared.codec import Update, UpdateHeader, encode_update
from shared.jobs import JobSpec, new_job_id, new_update_id, record_issued
from shared.keys import Keys


def issue_train(r, keys: Keys, region: str, label: str = "t0", round_: int | None = None) -> str:
    """A train job id the coordinator issued to ``region`` (nothing is queued)."""
    job_id = new_job_id(region, label)
    record_issued(r, keys, job_id, JobSpec(kind="train", region=region, round=round_))
    return job_id


def update_payload(
    update_id: str, region: str, base: int, delta: dict[str, np.ndarray], n: int = 100,
    data_size: int = 0, round_: int | None = None, encoding: str = "fp32",
    job_id: str | None = None,
) -> bytes:  # fmt: skip
    header = UpdateHeader(update_id, job_id or update_id.rpartition(".")[0], region, "w", base, n,
                          1.0, 0.1, 0.1, encoding, 0.0, round_, data_size)  # fmt: skip
    return encode_update(Update(header, delta))


def publish(
    r, keys: Keys, region: str, base: int, delta: dict[str, np.ndarray], n: int = 100,
    data_size: int = 0, round_: int | None = None, stream: str | None = None,
    job_id: str | None = None, entry_id: str = "*", sig=None,
) -> str:  # fmt: skip
    """Publish one attempt of an issued job (a new job unless ``job_id``); returns its id."""
    job_id = job_id or issue_train(r, keys, region, round_=round_)
    update_id = new_update_id(job_id)
    payload = update_payload(update_id, region, base, delta, n, data_size, round_)
    fields = {"u": payload, "id": update_id, "region": region}
    if sig is not None:
        fields["sig"] = sig(payload)
    r.xadd(keys.update_stream(stream or region), fields, id=entry_id)
    r.hincrby(keys.published(stream or region), update_id, 1)
    return update_id
