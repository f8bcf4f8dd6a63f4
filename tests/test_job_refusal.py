"""Workers run only fedq's tasks: a pickled job, or a JSON job naming any other function, is
refused with a recorded reason and runs nothing (with pickle, anyone who can write to Redis
would run code on every worker: rq issue 2389)."""

from __future__ import annotations

from rq import Queue
from rq.serializers import DefaultSerializer

from coordinator import service
from shared.jobs import SERIALIZER
from shared.keys import Keys
from shared.settings import FederationSettings
from tests.fleet import Fleet

K = Keys("refuse")


def test_a_pickled_job_and_a_foreign_task_are_refused_recorded_and_never_run(
    small_data, redis_server, r, tmp_path
):
    service.initialise(r, K, small_data, FederationSettings(eval_every=0, target_versions=0))
    planted = [tmp_path / "pickled-ran", tmp_path / "json-ran"]
    pickled = Queue(K.queue("cn"), connection=r, serializer=DefaultSerializer).enqueue(
        "pathlib.Path.touch", planted[0], job_id="pickled"
    )
    foreign = Queue(K.queue("cn"), connection=r, serializer=SERIALIZER).enqueue(
        "pathlib.Path.touch", str(planted[1]), job_id="foreign")  # fmt: skip
    with Fleet(redis_server.url, K.namespace, small_data) as fleet:
        worker = fleet.worker("cn", "--burst")
        assert worker.wait(timeout=120) == 0, fleet.log(worker)
    assert not any(p.exists() for p in planted)
    refusals = {f[b"id"].decode(): f for _, f in r.xrange(K.rejections)}
    assert set(refusals) == {pickled.id, foreign.id}
    assert all(f[b"reason"] == b"job_refused" for f in refusals.values())
    assert b"undecodable job data" in refusals["pickled"][b"detail"]
    assert b"not one of fedq's tasks" in refusals["foreign"][b"detail"]
    failed = Queue(K.queue("cn"), connection=r, serializer=SERIALIZER).failed_job_registry
    assert set(failed.get_job_ids()) == {"pickled", "foreign"}
