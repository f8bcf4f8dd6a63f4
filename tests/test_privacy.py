"""DP-SGD in a live federation: each region's budget is spent by its workers' jobs, a job past
it is refused and recorded, the coordinator stops sending the region work, the report tells."""

from __future__ import annotations

import json
import subprocess

import pytest
import redis
from rq import Queue

from coordinator import service
from coordinator.aggregator import Aggregator
from coordinator.dispatcher import Dispatcher
from shared.federation import read as read_federation
from shared.jobs import SERIALIZER, TRAIN_TASK, JobSpec
from shared.keys import Keys
from shared.privacy import DPSGD, exhausted_regions, read_budget, spent_epsilon
from shared.settings import FederationSettings
from tasks.api import load_task
from tests.fleet import FEDQ, Fleet
from tests.privacy_scan import assert_no_raw_data

K = Keys("budgetrun")


def _cn_job(small_data, settings: FederationSettings) -> DPSGD:
    task = load_task("recommender")
    plan = task.private_job(task.load_region(small_data, "cn"), task.settings({}))
    return DPSGD(settings.dp_noise, settings.dp_clip, plan.rate, plan.steps)


@pytest.mark.parametrize("capped_by", ["federation", "region"])
def test_a_region_past_its_budget_refuses_its_jobs_and_gets_no_more(
    small_data, redis_server, r, capped_by
):
    """The budget is the federation's ``dp_epsilon``, or the region's own lower cap (``fedq
    worker --max-epsilon``) under a federation that would allow a hundred times more."""
    base = FederationSettings(dp_clip=1.0, dp_noise=1.0, eval_every=0, target_versions=0)
    job = _cn_job(small_data, base)
    delta = 1e-5
    two, three = (spent_epsilon([job.entry] * n, delta) for n in (2, 3))
    limit = (two + three) / 2
    settings = FederationSettings(**{**base.__dict__, "dp_delta": delta,
                                     "dp_epsilon": limit if capped_by == "federation"
                                     else 100 * limit})  # fmt: skip
    cap = () if capped_by == "federation" else ("--max-epsilon", str(limit))
    service.initialise(r, K, small_data, settings)
    queue = Queue(K.queue("cn"), connection=r, serializer=SERIALIZER)
    spec = JobSpec(kind="train", region="cn").to_json()
    for n in range(4):
        queue.enqueue(TRAIN_TASK, spec, job_id=f"cn-dp{n}")
    with Fleet(redis_server.url, K.namespace, small_data) as fleet:
        worker = fleet.worker("cn", "--burst", *cap)
        assert worker.wait(timeout=180) == 0, fleet.log(worker)
        log = fleet.log(worker)
        assert "Traceback" not in log and "DP-SGD: noise 1.000" in log
        assert f"epsilon limit {limit:g}" in log
        # a restarted worker continues the region's budget: its job is refused as well
        queue.enqueue(TRAIN_TASK, spec, job_id="cn-dp4")
        again = fleet.worker("cn", "--burst", *cap)
        assert again.wait(timeout=180) == 0, fleet.log(again)
    budget = read_budget(r, K, "cn")
    assert budget.jobs == 2 and budget.exhausted
    assert budget.epsilon == pytest.approx(two) and budget.epsilon <= limit
    assert budget.history == [(job.noise, job.rate, 2 * job.steps)] and budget.delta == delta
    updates = [f for _, f in r.xrange(K.update_stream("cn")) if b"u" in f]
    assert len(updates) == 2  # only the jobs within the budget trained
    # each refusal said on the region's update stream, copied to the rejections by the aggregator
    aggregator = Aggregator(r, K, read_federation(r, K))
    while aggregator.step(block_ms=50):
        pass
    refused = {f[b"id"].decode(): f[b"detail"].decode() for _, f in r.xrange(K.rejections)
               if f[b"reason"] == b"budget_spent"}  # fmt: skip
    assert set(refused) == {"cn-dp2", "cn-dp3", "cn-dp4"}
    assert all("region cn's privacy budget" in d for d in refused.values())
    assert set(queue.failed_job_registry.get_job_ids()) == set(refused)
    # the coordinator sends the spent region nothing more; the others get their jobs
    assert exhausted_regions(r, K, ["cn", "us"]) == {"cn"}
    fed = read_federation(r, K)
    Dispatcher(r, K, fed).tick()
    assert queue.count == 0
    assert Queue(K.queue("us"), connection=r, serializer=SERIALIZER).count > 0


def test_a_worker_with_a_privacy_cap_will_not_train_without_dp(toy_data, redis_server, r):
    keys = Keys("nocap")
    service.initialise(r, keys, toy_data, FederationSettings(task="toy", eval_every=0))
    with Fleet(redis_server.url, keys.namespace, toy_data) as fleet:
        worker = fleet.worker("cn", "--burst", "--max-epsilon", "2")
        assert worker.wait(timeout=120) == 1
        log = fleet.log(worker)
    assert "Traceback" not in log
    assert "at most epsilon 2" in log and "trains without DP-SGD" in log


def test_a_dp_run_reports_each_regions_epsilon_within_its_budget(
    small_data, redis_server, tmp_path
):
    out = tmp_path / "run"
    proc = subprocess.run(
        [*FEDQ, "run", "--data", str(small_data), "--redis-url", redis_server.url, "--namespace",
         "dprun", "--dp-epsilon", "10", "--target-versions", "24", "--eval-every", "24",
         "--workers-per-region", "1", "--no-baselines", "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    dp = report["privacy"]
    assert dp["clip"] == 1.0 and dp["epsilon_limit"] == 10.0
    spent = dp["regions"]
    # every job that published spent first (a job that failed after spending counts too)
    assert sum(v["jobs"] for v in spent.values()) >= report["updates"]["published"] > 0
    for v in spent.values():
        assert (v["epsilon"] > 0) == (v["jobs"] > 0) and v["epsilon"] <= 10.0
    assert "epsilon per region" in proc.stdout
    assert_no_raw_data(redis.Redis.from_url(redis_server.url), small_data)


def test_a_dp_federation_of_a_task_without_dp_sgd_is_refused_before_its_record(toy_data, r):
    from shared.errors import FedqError

    keys = Keys("toydp")
    settings = FederationSettings(task="toy", dp_clip=1.0, dp_epsilon=8.0, eval_every=0)
    with pytest.raises(FedqError, match="task 'toy' has no DP-SGD"):
        service.initialise(r, keys, toy_data, settings)
    assert read_federation(r, keys) is None and not r.exists(keys.version)
