"""The ``fedq`` command end to end: real processes, JSON outputs, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

FEDQ = str(Path(sys.executable).with_name("fedq"))


def fedq(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([FEDQ, *args], capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"fedq {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_generate_then_popularity_baseline_json(tmp_path):
    out = tmp_path / "data"
    proc = fedq("data", "generate", "--out", str(out), "--scale", "small", "--seed", "1")
    assert "wrote" in proc.stdout and (out / "catalogue.csv").exists()
    report_path = tmp_path / "pop.json"
    fedq("baseline", "--data", str(out), "--mode", "popularity", "--json", str(report_path))
    report = json.loads(report_path.read_text())
    assert report["mode"] == "popularity"
    keys = {"hr@10", "ndcg@10", "hr@10_sampled", "ndcg@10_sampled", "cold_start.hr@10"}
    assert keys <= set(report["overall"])
    assert set(report["regions"]) == {"cn", "us", "eu", "in", "jp", "me"}
    for metrics in report["regions"].values():
        assert keys <= set(metrics)
        assert 0.0 <= metrics["hr@10"] <= metrics["hr@10_sampled"] <= 1.0
    # popularity cannot rank items nobody bought in training: they tie at zero and lose
    assert report["overall"]["cold_start.hr@10"] == 0.0


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["baseline", "--data", "{empty}", "--mode", "popularity"], "meta.json: not found"),
        (["data", "import", "--format", "generic", "{bad}", "--out", "{out}"], "header"),
    ],
)
def test_errors_are_one_line_without_traceback(tmp_path, args, needle):
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.csv").write_text("a,b\n")
    paths = {"empty": tmp_path / "empty", "bad": tmp_path / "bad.csv", "out": tmp_path / "o"}
    proc = fedq(*(a.format(**paths) for a in args), check=False)
    assert proc.returncode != 0
    assert needle in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_a_local_baseline_reports_every_epoch_and_prints_no_bar_to_a_pipe(small_data, tmp_path):
    from harness.baselines import FitSettings, run_baseline
    from tasks.api import load_task

    seen: list[str] = []
    settings = FitSettings(settings={"baseline_batch_size": 256}, max_epochs=2)
    report = run_baseline(load_task("recommender"), small_data, "local", settings,
                          regions=["me"], say=seen.append)  # fmt: skip
    assert [m.split(":")[0] for m in seen] == ["local [me] epoch 1", "local [me] epoch 2"]
    assert report.epochs["me"] in (1, 2) and set(report.regions) == {"me"}
    proc = fedq("baseline", "--data", str(small_data), "--mode", "local", "--epochs", "1")
    assert "━" not in proc.stderr and "epoch 1" in proc.stderr


def test_a_mistyped_data_path_is_an_error_never_a_synthetic_run(tmp_path):
    missing = tmp_path / "nonexistent"
    proc = fedq("run", "--data", str(missing), check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "does not exist; pass --generate" in proc.stderr
    assert not missing.exists()  # nothing created, nothing generated
    (tmp_path / "empty").mkdir()
    proc = fedq("run", "--data", str(tmp_path / "empty"), check=False)
    assert proc.returncode == 2 and "holds no recommender data set; pass --generate" in proc.stderr
    assert list((tmp_path / "empty").iterdir()) == []


@pytest.mark.parametrize("k", ["0", "-1", "1001"])
def test_recommend_refuses_k_out_of_range(small_data, k):
    proc = fedq("recommend", "--data", str(small_data), "--region", "cn", "--user", "1",
                "-k", k, check=False)  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "Invalid value for '-k'" in proc.stderr and "1<=x<=1000" in proc.stderr


def test_json_text_turns_non_finite_numbers_into_null():
    from shared.json_text import json_text

    text = json_text({"loss": float("nan"), "x": [float("inf"), 1.5], "n": 3})
    assert json.loads(text) == {"loss": None, "x": [None, 1.5], "n": 3}
