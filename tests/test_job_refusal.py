"""Workers run only fedq's tasks, and a refused job runs nothing at all.

A pickled job, a JSON job naming any other function, and a fedq task whose job asks for one of
RQ's extras (success, failure or stopped callbacks, webhooks, dependencies) are refused with a
recorded reason: nothing is imported, no callback is called, no HTTP request is made and no
dependent job is enqueued (with pickle, anyone who can write to Redis would run code on every
worker: rq issue 2389; with RQ's failure handling, a refused job's callback and webhook ran).
"""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import threading

from rq import Callback, Queue
from rq.job import Job
from rq.serializers import DefaultSerializer
from rq.webhook import Webhook

from coordinator import service
from coordinator.aggregator import Aggregator
from shared.jobs import SERIALIZER, TRAIN_TASK, JobSpec
from shared.keys import Keys
from shared.settings import FederationSettings
from tests.fleet import FEDQ, Fleet

K = Keys("refuse")
CALLBACK = "tests.planted.callback"


class _Hits(http.server.BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's spelling
        self.hits.append(self.path)
        self.send_response(204)
        self.end_headers()

    do_POST = do_GET

    def log_message(self, *_args: object) -> None:
        pass


def test_refused_jobs_import_call_request_and_enqueue_nothing(
    small_data, redis_server, r, tmp_path
):
    fed = service.initialise(r, K, small_data, FederationSettings(eval_every=0, target_versions=0))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hits)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    planted = [tmp_path / "pickled-ran", tmp_path / "json-ran"]
    queue = Queue(K.queue("cn"), connection=r, serializer=SERIALIZER)
    pickled = Queue(K.queue("cn"), connection=r, serializer=DefaultSerializer).enqueue(
        "pathlib.Path.touch", planted[0], job_id="cn-pickled",
        on_failure=Callback(CALLBACK), webhooks=[Webhook(url, "failed", method="POST")],
    )  # fmt: skip
    spec = JobSpec(kind="train", region="cn").to_json()
    jobs = {
        "cn-foreign": dict(f="pathlib.Path.touch", args=(str(planted[1]),),
                           on_failure=Callback(CALLBACK), on_stopped=Callback(CALLBACK)),
        "cn-builtin": dict(f="builtins.print", args=("hello",), on_failure=Callback("this.s")),
        "cn-hook": dict(f="os.getcwd", webhooks=[Webhook(url, "failed", method="POST"),
                                                 Webhook(url, "finished")]),
        "cn-success-callback": dict(f=TRAIN_TASK, args=(spec,), on_success=Callback(CALLBACK)),
        "cn-task-hook": dict(f=TRAIN_TASK, args=(spec,), webhooks=[Webhook(url, "failed")]),
        "cn-two-args": dict(f=TRAIN_TASK, args=(spec, spec)),
    }  # fmt: skip
    for job_id, kw in jobs.items():
        f, args = kw.pop("f"), kw.pop("args", ())
        queue.enqueue(f, *args, job_id=job_id, **kw)
    dependent = queue.enqueue("os.getcwd", job_id="cn-dependent", depends_on=["cn-foreign"])
    # jobs pushed by hand whose hash names no queue, or another region's: RQ would write that
    # queue's registries (with ACL users: a permission error that stopped the worker's loop)
    for job_id, origin in (("cn-no-origin", ""), ("cn-us-origin", K.queue("us"))):
        job = Job.create(TRAIN_TASK, args=(spec,), id=job_id, connection=r, serializer=SERIALIZER)
        job.origin = origin
        job.save()
        r.rpush(queue.key, job_id)
        jobs[job_id] = {}
    env = {"FEDQ_PLANTED_DIR": str(tmp_path)}
    with Fleet(redis_server.url, K.namespace, small_data) as fleet:
        worker = fleet.spawn("worker", "--region", "cn", "--data", str(small_data), "--burst",
                             env=env)  # fmt: skip
        assert worker.wait(timeout=120) == 0, fleet.log(worker)
        assert "Traceback" not in fleet.log(worker)
    server.shutdown()
    assert not any(p.exists() for p in planted)
    assert not (tmp_path / "imported").exists() and not (tmp_path / "called").exists()
    assert _Hits.hits == []
    # the worker said each refusal on its region's update stream; the aggregator copies them
    aggregator = Aggregator(r, K, fed)
    while aggregator.step(block_ms=50):
        pass
    refusals = {f[b"id"].decode(): f[b"detail"].decode() for _, f in r.xrange(K.rejections)
                if f[b"reason"] == b"job_refused"}  # fmt: skip
    assert set(refusals) == {pickled.id, *jobs}
    assert "undecodable job data" in refusals["cn-pickled"]
    assert "not one of fedq's tasks" in refusals["cn-foreign"]
    assert "callbacks" in refusals["cn-success-callback"]
    assert "webhooks" in refusals["cn-task-hook"]
    assert "one job spec" in refusals["cn-two-args"]
    assert "names queue ''" in refusals["cn-no-origin"]
    assert "names queue 'refuse:region:us'" in refusals["cn-us-origin"]
    failed = queue.failed_job_registry.get_job_ids()
    assert set(failed) == {pickled.id, *jobs}
    # the operator's view of them: every job listed, the pickled one as undecodable
    listed = subprocess.run([*FEDQ, "jobs", "--failed", "--json"], capture_output=True,
                            text=True, timeout=60, env={**os.environ, "FEDQ_REDIS_URL":
                            redis_server.url, "FEDQ_NAMESPACE": K.namespace})  # fmt: skip
    assert listed.returncode == 0 and "Traceback" not in listed.stderr, listed.stderr
    kinds = {j["id"]: j["kind"] for j in json.loads(listed.stdout)}
    assert kinds["cn-pickled"] == "undecodable" and set(kinds) == {pickled.id, *jobs}
    # the dependent of a refused job was never enqueued, let alone run
    assert Job.fetch(dependent.id, connection=r, serializer=SERIALIZER).get_status() == "deferred"
    assert dependent.id not in queue.get_job_ids()
