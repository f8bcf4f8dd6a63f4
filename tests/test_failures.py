"""No failure is silent: a region's undefined figure, a broken region, a broken task.

The runs use the toy task's broken variants (tests/broken_tasks.py) through ``fedq run`` itself,
with its own Redis and ACL users, each role a process of its own."""

from __future__ import annotations

import json
import math
import subprocess
import time
from pathlib import Path

import pytest

from shared import failures, streams
from shared.failures import Failure
from shared.keys import Keys
from tasks.api import Metric, MetricSchema
from tests.fleet import FEDQ, Fleet, wait_until

BROKEN = Path(__file__).resolve().parent / "broken_tasks.py"
RUN_TIMEOUT = 300  # a safety net for a hang; the runs end in seconds


def _schema() -> MetricSchema:
    figures = (
        Metric("n", "n"),
        Metric("cold", "cold"),
        Metric("rate", "rate", "n"),
        Metric("cold_rate", "cold rate", "cold"),
    )
    return MetricSchema("rate", figures, ("n", "rate"), "n", ("rate", "cold_rate"))


def test_a_result_may_lack_a_figure_that_is_undefined_for_its_region():
    schema = _schema()
    assert schema.check({"n": 5, "cold": 0, "rate": 0.5}, "test") == {
        "n": 5.0,
        "cold": 0.0,
        "rate": 0.5,
    }
    with pytest.raises(ValueError, match="lacks \\['cold'\\]"):  # a count never is absent
        schema.check({"n": 5, "rate": 0.5}, "test")
    with pytest.raises(ValueError, match="outside"):  # a figure that is there is checked
        schema.check({"n": 5, "cold": 1, "rate": 0.5, "cold_rate": 1.5}, "test")
    combined = schema.combine(
        {
            "a": {"n": 10, "cold": 0, "rate": 0.2},
            "b": {"n": 30, "cold": 4, "rate": 0.6, "cold_rate": 0.25},
        }
    )
    assert combined["cold_rate"] == 0.25 and combined["rate"] == pytest.approx(0.5)
    assert math.isnan(schema.combine({"a": {"n": 1, "cold": 0, "rate": 0.1}})["cold_rate"])


def test_causes_that_differ_only_in_numbers_and_ids_fail_the_same_way():
    a = "ValueError: test.accuracy = 87.14285714285714 is outside [0, 1]"
    b = "ValueError: test.accuracy = 91.0 is outside [0, 1]"
    assert failures.same_way(a) == failures.same_way(b)
    assert failures.same_way("job cn-t1-7d0742c5ea0a9c5b") == failures.same_way(
        "job cn-t9-00ab00ab00ab00ab"
    )
    assert failures.same_way(a) != failures.same_way("ValueError: w: (4, 1), expected (4,)")


def _failure(region: str, count: int, cause: str = "E: x = 1", kind: str = "train") -> Failure:
    return Failure(region, kind, failures.JOB, cause, count, time.time(), f"{region}-t1-ab")


def test_a_task_is_broken_when_every_region_fails_the_same_way():
    regions = ("cn", "us", "me")
    one_each = [_failure(r, 1) for r in regions]
    assert failures.broken_task(one_each[:2], regions, 3) is None  # me has not failed yet
    assert failures.broken_task(one_each, regions, 3).cause == "E: x = 1"
    assert failures.broken_task(one_each, regions, 4) is None  # 3 failures in all
    other = [*one_each[:2], _failure("me", 9, "KeyError: 'w'")]
    assert failures.broken_task(other, regions, 3) is None  # not the same way
    assert failures.broken(other, 3) == {("me", "train"): other[2]}  # a broken region
    assert failures.broken(other, 0) == {}  # max_failures 0: never


def _aggregators(r, keys: Keys, fields: dict) -> None:
    """A rejection as the aggregator records it: in ``Keys.rejected`` and on the stream."""
    r.hset(keys.rejected, fields[streams.ID], fields[streams.REASON])
    streams.add_rejection(r, keys, fields)


def test_a_forged_rejection_starts_no_streak(r, toy_data):
    """Only what the aggregator rejected counts: a "shape" rejection of us's update written
    onto the stream by anybody else (a worker without ACL users, a stray tool) is a claim."""
    import numpy as np

    from coordinator import service
    from coordinator.aggregator import Aggregator
    from shared.settings import FederationSettings
    from tests.updates import publish

    keys = Keys("forged")
    fed = service.initialise(r, keys, toy_data, FederationSettings(task="toy", eval_every=0))
    agg = Aggregator(r, keys, fed)
    bad = publish(r, keys, "cn", 0, {k: np.zeros((7,), np.float32) for k in agg.weights})
    while agg.step(block_ms=50):
        pass
    assert r.hget(keys.rejected, bad) == b"shape"  # the aggregator's own: it counts
    for n in range(5):  # forged: another region's update "rejected" the same way, 5 times
        forged = streams.rejection_entry(f"us-t{n}-0123456789abcdef.00ff00ff", "shape",
                                         "tensor w has shape (7,)", region="us")  # fmt: skip
        streams.add_rejection(r, keys, forged)
    fold = failures.Fold(r, keys, fed.regions)
    assert fold.run() == 6
    got = {(f.region, f.kind): f for f in failures.read(r, keys, fed.regions)}
    assert set(got) == {("cn", "train")} and got[("cn", "train")].count == 1
    assert "shape" in got[("cn", "train")].cause


def test_the_aggregators_rejections_count_in_a_row_until_the_region_succeeds(r):
    """The coordinator's fold: two non-finite updates of cn in a row, a rejected result of
    us's evaluation, then an applied update of cn ends cn's streak (and only cn's)."""
    keys = Keys("fold")
    fold = failures.Fold(r, keys, ("cn", "us"))
    for n in (1, 2):
        fields = streams.rejection_entry(
            f"cn-t{n}-0123456789abcdef.00ff00ff", "non_finite", f"tensor w has {n} NaN", region="cn"
        )
        _aggregators(r, keys, fields)
    result = streams.rejection_entry(
        "entry:x 1-0",
        "malformed",
        "evaluation result: test.rate = 7.0 is outside [0, 1]",
        kind="evaluation",
        claimed="us-e10-0123456789abcdef.0a0b0c0d",
    )
    _aggregators(r, keys, result)
    streams.add_rejection(r, keys, streams.rejection_entry("x", "stale", "old", region="cn"))
    assert fold.run() == 4
    got = {(f.region, f.kind): f for f in failures.read(r, keys, ("cn", "us"))}
    assert got[("cn", "train")].count == 2 and got[("cn", "train")].source == "rejected"
    assert "non_finite" in got[("cn", "train")].cause
    assert got[("us", "evaluate")].count == 1 and "outside" in got[("us", "evaluate")].cause
    assert fold.run() == 0  # folded once only
    r.xadd(keys.applies, {"version": 1, "updates": json.dumps([{"id": "u", "region": "cn"}])})
    assert fold.run() == 1
    left = {(f.region, f.kind) for f in failures.read(r, keys, ("cn", "us"))}
    assert left == {("us", "evaluate")}


def _run(
    tmp_path: Path, data: Path, task: str, *extra: str
) -> tuple[subprocess.CompletedProcess, Path, float]:
    out = tmp_path / "run"
    started = time.monotonic()
    proc = subprocess.run(
        [
            *FEDQ,
            "run",
            "--task",
            f"{BROKEN}:{task}",
            "--data",
            str(data),
            "--target-versions",
            "30",
            "--eval-every",
            "10",
            "--no-baselines",
            "--workers-per-region",
            "1",
            "--out",
            str(out),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )
    return proc, out / "report.json", time.monotonic() - started


@pytest.mark.parametrize(
    ("task", "cause"),
    [("TRANSPOSED", "w: (4, 1), expected (4,)"), ("NAN_TRAIN", "w has non-finite values")],
)
def test_a_task_whose_training_is_broken_stops_the_run_with_its_cause(
    toy_data, tmp_path, task, cause
):
    proc, report_path, seconds = _run(tmp_path, toy_data, task)
    print(f"{task}: fedq run ended in {seconds:.1f}s")
    assert proc.returncode == 1, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: the task's train jobs fail the same way in every region")
    assert cause in last and "Traceback" not in proc.stderr
    assert "FAILING: region" in proc.stderr and cause in proc.stderr
    report = json.loads(report_path.read_text())  # written, with what it has
    assert report["final"] is None and report["updates"]["applied"] == 0
    assert any("no update was applied" in p for p in report["problems"])
    assert cause in report["error"]


def test_a_task_whose_evaluation_is_out_of_range_stops_the_run_with_its_cause(toy_data, tmp_path):
    proc, report_path, seconds = _run(tmp_path, toy_data, "OUT_OF_RANGE")
    print(f"OUT_OF_RANGE: fedq run ended in {seconds:.1f}s")
    assert proc.returncode == 1, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert "evaluate" in last and "accuracy" in last and "is outside [0, 1]" in last
    assert "Traceback" not in proc.stderr
    report = json.loads(report_path.read_text())
    assert report["final"] is None and report["problems"]


def test_odd_regions_are_left_out_and_named_and_the_report_is_written(toy_data, tmp_path):
    """in's training diverges, me's log loss is undefined, jp's accuracy is a percentage: the
    run ends with the other regions' result, me's figure shown as "-", and both odd regions
    named with their causes."""
    proc, report_path, _ = _run(tmp_path, toy_data, "UNEVEN", "--max-failures", "3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "BROKEN: region in's train jobs failed" in proc.stderr
    report = json.loads(report_path.read_text())
    final = report["final"]["regions"]
    assert "jp" not in final and "log_loss" not in final["me"] and "log_loss" in final["cn"]
    assert "is outside [0, 1]" in report["missing"]["jp"]
    problems = "\n".join(report["problems"])
    assert "misses region jp" in problems and "region in's train jobs failed" in problems
    assert "non-finite" in problems
    summary = (tmp_path / "run" / "summary.md").read_text()
    assert "| me | 24 | 0." in summary and summary.split("| me |")[1].split("\n")[0].endswith("- |")
    assert "WARNING: the final evaluation misses region jp" in proc.stderr


def test_fedq_status_shows_a_regions_failing_jobs_with_their_cause(r, redis_server, toy_data):
    from coordinator import service
    from shared.settings import FederationSettings

    keys = Keys("failing")
    task = f"{BROKEN}:TRANSPOSED"
    settings = FederationSettings(
        task=task, target_versions=0, eval_every=0, max_failures=4, inflight_per_region=1
    )
    service.initialise(r, keys, toy_data, settings)
    from cli import views

    with Fleet(redis_server.url, keys.namespace, toy_data) as fleet:
        fleet.aggregator()
        fleet.coordinator()
        fleet.worker("me", "--task", task)

        def broken() -> bool:
            failing = views.status(r, keys)["failing"]
            return bool(failing) and failing[0]["broken"]

        assert wait_until(broken, timeout=120), fleet.log(fleet.procs[-1])
        status = subprocess.run(
            [*FEDQ, "status"], env=fleet.env, capture_output=True, text=True, timeout=60
        )
    view = views.status(r, keys)
    me = view["regions"]["me"]["failing"]["train"]
    assert me["count"] >= 4 and "w: (4, 1), expected (4,)" in me["cause"]
    assert view["task_broken"] is None  # the other regions have no worker: nothing failed
    assert status.returncode == 0, status.stderr
    assert "BROKEN: region me: train job failed" in status.stdout
    assert "w: (4, 1), expected (4,)" in status.stdout
