"""Differential privacy: clipping plus noise, and the RDP accountant's arithmetic."""

from __future__ import annotations

import json
import math
import subprocess

import numpy as np
import pytest

from shared.privacy import epsilon, noise_for, privatize
from tests.fleet import FEDQ


def test_privatize_clips_then_adds_noise_of_the_stated_size():
    rng = np.random.default_rng(0)
    delta = {"a": np.full(200_000, 1.0, np.float32)}  # norm ~447
    out = privatize(delta, clip=2.0, noise=0.5, rng=rng)["a"]
    clipped = 2.0 / math.sqrt(200_000)
    assert out.dtype == np.float32
    assert np.mean(out) == pytest.approx(clipped, abs=0.01)
    assert np.std(out) == pytest.approx(0.5 * 2.0, rel=0.02)
    assert np.array_equal(privatize({"a": np.zeros(3, np.float32)}, 1.0, 0.0, rng)["a"],
                          np.zeros(3, np.float32))  # fmt: skip


def test_epsilon_matches_the_gaussian_rdp_bound_and_moves_the_right_way():
    # one release, noise 1, delta 1e-5: min over alpha of alpha/2 + log(1e5)/(alpha-1)
    best = min(a / 2 + math.log(1e5) / (a - 1) for a in np.linspace(1.01, 100, 100_000))
    assert epsilon(1, 1.0, 1e-5) == pytest.approx(best, rel=0.01)
    assert epsilon(100, 5.0, 1e-5) < epsilon(1000, 5.0, 1e-5)  # more releases, more spent
    assert epsilon(100, 10.0, 1e-5) < epsilon(100, 5.0, 1e-5)  # more noise, less spent
    assert epsilon(0, 1.0, 1e-5) == 0 and epsilon(5, 0.0, 1e-5) == math.inf
    noise = noise_for(8.0, 1000, 1e-5)
    assert epsilon(1000, noise, 1e-5) <= 8.0 < epsilon(1000, noise * 0.99, 1e-5)


def test_a_dp_run_reports_each_regions_epsilon_within_the_target(
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
    assert dp["clip"] == 5.0 and dp["noise"] > 0
    assert sum(v["releases"] for v in dp["regions"].values()) == report["updates"]["published"]
    for v in dp["regions"].values():  # a region that published nothing has spent nothing
        assert (v["epsilon"] > 0) == (v["releases"] > 0) and v["epsilon"] <= 10.0
    assert max(v["epsilon"] for v in dp["regions"].values()) > 0
    assert "epsilon per region" in proc.stdout
    import redis

    from tests.privacy_scan import assert_no_raw_data

    assert_no_raw_data(redis.Redis.from_url(redis_server.url), small_data)
