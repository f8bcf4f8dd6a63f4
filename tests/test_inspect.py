"""The operator's commands against a real Redis holding a small federation that ran."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import redis
from rq import Queue

from coordinator import service
from shared import streams
from shared.jobs import SERIALIZER
from shared.keys import Keys
from shared.redis_server import free_port
from shared.settings import FederationSettings
from tests.fleet import FEDQ, Fleet, wait_until

NS = "insp"
KEYS = Keys(NS)


def fedq(url: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    base = {**os.environ, "FEDQ_REDIS_URL": url, "FEDQ_NAMESPACE": NS}
    return subprocess.run([*FEDQ, *args], env={**base, **(env or {})}, capture_output=True,
                          text=True, timeout=120)  # fmt: skip


def fedq_json(url: str, *args: str):
    out = fedq(url, *args, "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def ran(small_data, redis_server):
    """cn and us work 8 versions (evaluated at 4 and 8); a job for os.getcwd is refused."""
    r = redis.Redis.from_url(redis_server.url)
    for key in r.scan_iter(f"{NS}:*"):
        r.delete(key)
    settings = FederationSettings(eval_every=4, target_versions=8, inflight_per_region=1)
    service.initialise(r, KEYS, small_data, settings)
    with Fleet(redis_server.url, NS, small_data) as fleet:
        fleet.aggregator()
        fleet.coordinator()
        fleet.worker("cn")
        fleet.worker("us")
        bad = Queue(KEYS.queue("cn"), connection=r, serializer=SERIALIZER).enqueue(
            "os.getcwd", job_id="not-a-fedq-task"
        )
        settled = lambda: streams.waiting_updates(r, KEYS, ("cn", "us")) == 0  # noqa: E731
        assert wait_until(lambda: r.get(KEYS.done) and settled() and r.xlen(KEYS.rejections),
                          180)  # fmt: skip
        assert wait_until(lambda: fedq_json(redis_server.url, "models")[4]["evaluation"].keys()
                          >= {"cn", "us"}, 60)  # fmt: skip
        live = fedq_json(redis_server.url, "workers")
    return redis_server.url, r, live, bad.id


def test_status_reports_versions_updates_staleness_and_every_region(ran):
    url, r, _, _ = ran
    s = fedq_json(url, "status")
    assert s["version"] == int(r.get(KEYS.version)) >= 8
    assert s["updates"]["applied"] == s["version"]  # async: one update per version
    assert s["updates"]["published"] == s["updates"]["applied"] + s["updates"]["waiting"]
    assert sum(s["staleness"]["histogram"].values()) == s["updates"]["applied"]
    assert set(s["regions"]) == {"cn", "us", "eu", "in", "jp", "me"}
    assert s["regions"]["cn"]["latest_evaluation"]["version"] >= 4
    assert s["regions"]["eu"]["latest_evaluation"] is None
    assert s["regions"]["eu"]["last_update_age_s"] is None
    assert s["done"].startswith("reached")
    text = fedq(url, "status")
    assert text.returncode == 0 and f"version {s['version']}" in text.stdout


def test_queues_agree_with_rq_info(ran):
    url, *_ = ran
    ours = {q["queue"]: q for q in fedq_json(url, "queues")}
    rq = Path(sys.executable).with_name("rq")
    raw = subprocess.run([str(rq), "info", "--url", url, "--raw"], capture_output=True,
                         text=True, timeout=60).stdout  # fmt: skip
    theirs = {
        m["name"]: m for m in re.finditer(
            r"queue (?P<name>\S+) (?P<queued>\d+), (?P<started>\d+) executing, "
            r"(?P<finished>\d+) finished, (?P<failed>\d+) failed", raw)
    }  # fmt: skip
    names = {n for n in theirs if n.startswith(f"{NS}:")}
    assert names == set(ours)
    for name in names:
        for field in ("queued", "started", "finished", "failed"):
            assert int(theirs[name][field]) == ours[name][field], (name, field)
    assert ours[f"{NS}:region:cn"]["finished"] > 0 and ours[f"{NS}:region:cn"]["failed"] == 1


def test_workers_shows_the_live_ones_while_they_run(ran):
    _, _, live, _ = ran
    assert {w["region"] for w in live} == {"cn", "us"}
    assert all(w["alive"] for w in live)
    assert all(w["name"].startswith(w["region"] + ".") for w in live)
    assert sum(w["successful_jobs"] for w in live) >= 8  # 8 versions, one update each
    assert {w["state"] for w in live} <= {"idle", "busy"}


def test_jobs_failed_names_the_refused_job_and_why(ran):
    url, _, _, bad = ran
    failed = fedq_json(url, "jobs", "--failed")
    assert [j["id"] for j in failed] == [bad]
    assert "not one of fedq's tasks" in failed[0]["error"]
    assert fedq_json(url, "jobs", "--region", "us", "--failed") == []
    wrong = fedq(url, "jobs", "--region", "xx")
    assert wrong.returncode != 0 and "unknown region 'xx'" in wrong.stderr


def test_updates_shows_headers_only(ran):
    url, *_ = ran
    tail = fedq_json(url, "updates", "--tail", "3")
    assert len(tail) == 3
    assert [u["version"] for u in tail] == sorted(u["version"] for u in tail)
    assert all(set(u) == {"id", "region", "base_version", "version", "at", "staleness",
                          "n_samples", "loss", "weight", "guard"} for u in tail)  # fmt: skip
    assert all(u["staleness"] == u["version"] - 1 - u["base_version"] for u in tail)


def test_rejections_and_models(ran):
    url, _, _, bad = ran
    rej = fedq_json(url, "rejections")
    assert [(x["id"], x["reason"]) for x in rej] == [(bad, "job_refused")]
    models = {m["version"]: m for m in fedq_json(url, "models")}
    assert models[4]["evaluation"].keys() == {"cn", "us"}
    assert models[4]["overall"] is None  # not every region reported
    assert 0 < models[4]["evaluation"]["cn"]["hr@10"] <= 1


def test_requeue_puts_a_failed_job_back_on_its_queue(ran):
    url, r, _, bad = ran
    before = {q["region"]: q for q in fedq_json(url, "queues")}["cn"]
    assert fedq_json(url, "requeue", bad) == {"requeued": [bad]}
    after = {q["region"]: q for q in fedq_json(url, "queues")}["cn"]
    assert (after["queued"], after["failed"]) == (before["queued"] + 1, before["failed"] - 1)
    again = fedq(url, "requeue", bad)
    assert again.returncode != 0 and "not failed" in again.stderr


def test_unreachable_redis_is_one_line_and_a_non_zero_exit(tmp_path):
    url = f"redis://127.0.0.1:{free_port()}/0"
    for command in ("status", "queues", "workers", "jobs", "updates", "rejections", "models"):
        out = fedq(url, command)
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 1 and len(lines) == 1, (command, out.stderr)
        assert lines[0].startswith(f"Error: cannot reach Redis at {url}")
    env = {"FEDQ_REDIS_URL": "", "FEDQ_HOME": str(tmp_path)}
    out = fedq("", "status", env=env)
    assert out.returncode == 1 and "no Redis to look at" in out.stderr
    assert not (tmp_path / "redis").exists()  # it did not start one


def test_report_plots_a_live_federation_and_two_runs_side_by_side(ran, tmp_path):
    from tests.test_federation import _png_size

    url, *_ = ran
    out = fedq(url, "report", "--out", str(tmp_path / "live"))
    assert out.returncode == 0, out.stderr
    for png in ("headline_vs_time", "headline_vs_version", "staleness", "updates_per_region"):
        assert min(_png_size(tmp_path / "live" / f"{png}.png")) > 100
    live = (tmp_path / "live" / "summary.md").read_text()
    assert "No version has been evaluated by every region yet." in live  # only cn, us work
    # two runs' reports (an async and a sync one, as fedq run writes them) share the plots
    from reporting.history import collect
    from shared import federation

    r = redis.Redis.from_url(url)
    body = collect(r, KEYS, federation.read(r, KEYS))
    full = {"version": 4, "seconds": 1.0, "metrics": {"hr@10": 0.3, "ndcg@10": 0.2, "users": 9},
            "regions": {"cn": {"hr@10": 0.3, "ndcg@10": 0.2, "users": 9}}}  # fmt: skip
    paths = []
    for mode in ("async", "sync"):
        path = tmp_path / mode / "report.json"
        path.parent.mkdir()
        path.write_text(json.dumps({**body, "mode": mode, "curve": [full], "seconds": 5.0}))
        paths += ["--run", str(path)]
    out = fedq(url, "report", "--out", str(tmp_path / "both"), *paths)
    assert out.returncode == 0, out.stderr
    both = (tmp_path / "both" / "summary.md").read_text()
    assert "## async on" in both and "## sync on" in both and "| overall | 9 | 0.3000" in both


def _first_user(data: Path, region: str) -> int:
    with open(data / region / "interactions.csv") as f:
        next(f)
        return int(next(f).split(",")[0])


def test_export_writes_weights_the_model_loads(ran, small_data, tmp_path):
    import numpy as np

    from shared.store import ModelStore
    from tasks.recommender.local_data import load_shared
    from tasks.recommender.task import TASK

    url, r, _, _ = ran
    out = fedq(url, "export", "--out", str(tmp_path / "m.pt"))
    assert out.returncode == 0, out.stderr
    meta = json.loads((tmp_path / "m.pt.json").read_text())
    stored = ModelStore(r, KEYS).read_current()
    assert meta["version"] == stored.version and meta["regions"] == ["cn", "us", "eu", "in",
                                                                      "jp", "me"]  # fmt: skip
    assert meta["task"] == "recommender" and meta["data_digest"] == TASK.describe(small_data).digest
    with np.load(tmp_path / "m.pt", allow_pickle=False) as saved:
        state = {k: saved[k] for k in saved.files}
    TASK.model(state, load_shared(small_data), meta["task_settings"])  # loads strictly
    assert set(state) == set(stored.weights)
    for name, value in stored.weights.items():
        np.testing.assert_array_equal(state[name], value)
    gone = fedq(url, "export", "--version", "0", "--out", str(tmp_path / "old.pt"))
    assert gone.returncode == 0  # version 0 is still in the window of this short run
    missing = fedq(url, "export", "--version", "999", "--out", str(tmp_path / "no.pt"))
    assert missing.returncode == 1 and "model version 999 is not stored" in missing.stderr


def test_recommend_gives_unseen_items_ranked_and_the_same_from_an_exported_file(
    ran, small_data, tmp_path
):
    url, *_ = ran
    user = _first_user(small_data, "cn")
    args = ["recommend", "--data", str(small_data), "--region", "cn", "--user", str(user),
            "-k", "7"]  # fmt: skip
    live = fedq_json(url, *args)
    recs = live["recommendations"]
    assert [x["rank"] for x in recs] == list(range(1, 8))
    assert [x["score"] for x in recs] == sorted((x["score"] for x in recs), reverse=True)
    with open(small_data / "cn" / "interactions.csv") as f:
        seen = {int(line.split(",")[1]) for line in f if line.startswith(f"{user},")}
    assert seen and not seen & {x["item_id"] for x in recs}
    assert {"category", "metal", "gem", "price"} <= set(recs[0])
    assert fedq(url, "export", "--out", str(tmp_path / "m.pt")).returncode == 0
    offline = fedq_json("redis://127.0.0.1:1/0", *args, "--model", str(tmp_path / "m.pt"))
    assert [x["item_id"] for x in offline["recommendations"]] == [x["item_id"] for x in recs]
    every = fedq_json(url, *args[:-1], "1000")["recommendations"]  # more than are on sale
    assert 0 < len(every) < 600 and all(isinstance(x["score"], float) for x in every)
    assert not seen & {x["item_id"] for x in every}
    nobody = fedq(url, "recommend", "--data", str(small_data), "--region", "cn", "--user", "-5")
    assert nobody.returncode == 1 and "user -5 has no events in region 'cn'" in nobody.stderr


def test_recommend_item_attrs_shows_which_regions_a_new_item_reaches(ran, small_data):
    url, *_ = ran
    with open(small_data / "catalogue.csv") as f:
        header = next(f).strip().split(",")
        row = dict(zip(header, next(f).strip().split(","), strict=True))
    attrs = ",".join(f"{k}={row[k]}" for k in ("category", "metal", "gem", "colour", "gender"))
    out = fedq_json(url, "recommend", "--data", str(small_data), "--item-attrs",
                    f"{attrs},price={row['price']}", "-k", "10")  # fmt: skip
    assert set(out["regions"]) == {"cn", "us", "eu", "in", "jp", "me"}
    assert sorted(out["ranked"]) == sorted(out["regions"])
    for d in out["regions"].values():
        assert 0 <= d["shown_to"] <= 1 and d["shoppers_reached"] <= d["users"]
    bad = fedq(url, "recommend", "--data", str(small_data), "--item-attrs",
               "category=tiara,price=5")  # fmt: skip
    assert bad.returncode == 1 and "unknown category 'tiara'" in bad.stderr
