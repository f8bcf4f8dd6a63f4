"""The task plug-in boundary: loading tasks, their schemas, and nothing outside a task's own
package knowing the recommender's concepts."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tasks.api import BUILT_IN, Metric, MetricSchema, Step, Task, TaskError, load_task
from tests.fleet import FEDQ

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "docs" / "examples" / "propensity.py"
# the jewelry recommender's concepts; "items" only as a word of its own, not dict.items()
RECOMMENDER_WORDS = re.compile(r"catalogue|interactions\.csv|hr@10|(?<![.\w])items?\b", re.I)


def test_no_module_outside_a_task_names_the_recommenders_concepts():
    offenders = []
    for room in ("shared", "coordinator", "worker", "cli", "harness", "reporting"):
        for path in sorted((ROOT / room).rglob("*.py")):
            for number, line in enumerate(path.read_text().splitlines(), start=1):
                if RECOMMENDER_WORDS.search(line):
                    offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert offenders == []


@pytest.mark.parametrize("name", [*BUILT_IN, str(EXAMPLE)])
def test_every_task_loads_and_its_schema_survives_the_record(name):
    task = load_task(name)
    assert isinstance(task, Task)
    again = MetricSchema.from_json(task.metrics.to_json())
    assert again == task.metrics
    assert task.metrics.headline in task.metrics.validation


@pytest.mark.parametrize(
    ("name", "needle"),
    [
        ("nosuchtask", "no module 'nosuchtask'"),
        ("tasks.toy:NOPE", "has no attribute 'NOPE'"),
        ("tasks.api:BUILT_IN", "not a fedq Task"),
        ("/nowhere/task.py", "does not exist"),
    ],
)
def test_a_task_that_cannot_load_is_a_one_line_error(name, needle):
    with pytest.raises(TaskError, match=needle):
        load_task(name)


def test_a_schema_combines_regions_by_each_figures_own_count():
    figures = (Metric("n", "n"), Metric("k", "k"), Metric("rate", "rate", "n"),
               Metric("share", "share", "k"))  # fmt: skip
    schema = MetricSchema("rate", figures, ("n", "rate"), "n", ("rate",))
    out = schema.combine({"a": {"n": 30, "k": 1, "rate": 0.5, "share": 0.0},
                          "b": {"n": 10, "k": 3, "rate": 0.1, "share": 1.0},
                          "c": {"n": 0, "k": 0, "rate": float("nan"), "share": 0.2}})  # fmt: skip
    assert out["n"] == 40 and out["k"] == 4
    assert out["rate"] == pytest.approx((30 * 0.5 + 10 * 0.1) / 40)
    assert out["share"] == pytest.approx(0.75)
    with pytest.raises(ValueError, match="outside"):
        schema.check({"n": 1.0, "rate": 1.5}, "validation")
    with pytest.raises(ValueError, match="lacks"):  # a count is never undefined
        schema.check({"rate": 0.5}, "validation")
    assert schema.check({"n": 1.0}, "validation") == {"n": 1.0}  # a figure undefined here
    with pytest.raises(TaskError, match="unknown metrics"):
        MetricSchema("x", (Metric("n", "n"),), ("n",), "n", ("n",))


def test_the_toy_task_learns(toy_data):
    task = load_task("toy")
    settings = task.settings({})
    data = task.load_region(toy_data, "cn")
    weights = task.initial_weights(toy_data, settings, 0)
    before = task.evaluate(weights, data, settings, "test", 0)["accuracy"]
    state = None
    for epoch in range(5):
        trained = task.train(weights, data, settings, Step(seed=epoch, whole_data=True), state)
        weights, state = trained.weights, trained.state
    after = task.evaluate(weights, data, settings, "test", 0)["accuracy"]
    assert after > before + 0.1 and after > 0.7


def test_a_users_task_file_runs_a_whole_federation(tmp_path):
    """README's example: fedq run --task docs/examples/propensity.py, end to end."""
    data = tmp_path / "data-propensity"
    out = subprocess.run([*FEDQ, "run", "--task", str(EXAMPLE), "--data", str(data), "--generate",
                          "--target-versions", "40", "--eval-every", "20",
                          "--out", str(tmp_path / "run"), "--json", str(tmp_path / "r.json")],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    import json

    report = json.loads((tmp_path / "r.json").read_text())
    assert report["task"] == str(EXAMPLE) and report["versions"] >= 40
    # by default as many workers as cores, spread over the regions, each region with as many
    # jobs in flight as it has workers
    cores, regions = os.cpu_count() or 2, len(report["regions"])
    assert report["workers_per_region"] == max(1, -(-cores // regions))
    assert report["settings"]["inflight_per_region"] == report["workers_per_region"]
    final = report["final"]["overall"]
    local = report["baselines"]["local"]["overall"]
    assert 0.5 < final["accuracy"] <= 1 and np.isfinite(local["accuracy"])
    assert "accuracy" in out.stdout  # the comparison table names the task's own headline


def test_a_worker_imports_no_task_but_a_built_in_one_or_the_one_it_was_given(
    r, redis_server, tmp_path
):
    """Whoever writes the federation record names the task; a worker still imports only a
    built-in task or the one on its own command line."""
    from coordinator import service
    from shared.keys import Keys
    from shared.settings import FederationSettings
    from tests.fleet import Fleet

    load_task(str(EXAMPLE)).generate(tmp_path / "data", seed=1)
    keys = Keys("usertask")
    service.initialise(r, keys, tmp_path / "data", FederationSettings(task=str(EXAMPLE)))
    with Fleet(redis_server.url, keys.namespace, tmp_path / "data") as fleet:
        refused = fleet.worker("cn", "--burst")
        assert refused.wait(timeout=120) == 1
        assert "is not built in: start the worker with --task" in fleet.log(refused)
        assert "Traceback" not in fleet.log(refused)
        given = fleet.worker("cn", "--burst", "--task", str(EXAMPLE))
        assert given.wait(timeout=120) == 0, fleet.log(given)


BROKEN_TASK = """
import numpy as np
from tasks.api import Trained
from tasks.toy import ToyTask


class Broken(ToyTask):
    name = "broken"

    def train(self, weights, data, settings, step, state=None):
        t = super().train(weights, data, settings, step, state)
        return Trained({k: np.full_like(v, np.nan) for k, v in t.weights.items()}, t.n_samples,
                       t.loss, t.seconds)


TASK = Broken()
"""


def test_a_task_that_returns_non_finite_weights_publishes_nothing(r, redis_server, toy_data,
                                                                  tmp_path):  # fmt: skip
    from coordinator import service
    from coordinator.dispatcher import Dispatcher
    from shared.jobs import region_queue
    from shared.keys import Keys
    from shared.settings import FederationSettings
    from tests.fleet import Fleet

    path = tmp_path / "broken.py"
    path.write_text(BROKEN_TASK)
    keys = Keys("broken")
    settings = FederationSettings(task=str(path), max_retries=0, target_versions=0, eval_every=0)
    fed = service.initialise(r, keys, toy_data, settings)
    job_id = Dispatcher(r, keys, fed)._enqueue_train("cn", None)
    with Fleet(redis_server.url, keys.namespace, toy_data) as fleet:
        worker = fleet.worker("cn", "--burst", "--task", str(path))
        assert worker.wait(timeout=120) == 0, fleet.log(worker)
    assert r.xlen(keys.update_stream("cn")) == 0 and r.hlen(keys.published("cn")) == 0
    failed = region_queue(r, keys, "cn").failed_job_registry
    assert failed.get_job_ids() == [job_id]
    from rq.job import Job

    from shared.jobs import SERIALIZER

    result = Job.fetch(job_id, connection=r, serializer=SERIALIZER).latest_result()
    assert "non-finite values" in result.exc_string


@pytest.mark.parametrize("scale", [float("nan"), 0.0, -1.0, 1.5, 1e9, True, "1"])
def test_a_job_spec_with_a_learning_rate_scale_outside_0_1_is_refused(scale):
    from shared.jobs import JobSpec

    with pytest.raises(ValueError, match="lr_scale"):
        JobSpec.from_json({"kind": "train", "region": "cn", "lr_scale": scale})
    assert JobSpec.from_json({"kind": "train", "region": "cn", "lr_scale": 0.5}).lr_scale == 0.5
