"""Aggregation math: pure numpy, checked against hand computations."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from shared import aggregation as agg


def test_module_imports_without_redis_rq_or_torch():
    code = (
        "import sys; import shared.aggregation; "
        "bad = [m for m in ('redis', 'rq', 'torch') if m in sys.modules]; "
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_staleness_functions_by_hand():
    assert agg.Staleness("constant")(7) == 1.0
    poly = agg.Staleness("polynomial", a=0.5)
    assert poly(0) == 1.0
    assert poly(3) == pytest.approx(0.5)  # (3 + 1) ** -0.5
    hinge = agg.hinge(a=10, b=4)
    assert hinge(4) == 1.0
    assert hinge(5) == pytest.approx(1 / 11)
    assert hinge(6) == pytest.approx(1 / 21)
    with pytest.raises(ValueError, match="negative staleness"):
        poly(-1)
    with pytest.raises(ValueError, match="unknown staleness"):
        agg.Staleness("cubic")


def test_mixing_weight_with_samples_and_cap():
    poly = agg.Staleness("polynomial", a=0.5)
    assert agg.mixing_weight(0.6, 3, poly) == pytest.approx(0.3)
    assert agg.mixing_weight(0.6, 3, poly, n_samples=50, n_reference=100) == pytest.approx(0.15)
    assert agg.mixing_weight(0.6, 0, poly, n_samples=500, n_reference=100) == 1.0
    with pytest.raises(ValueError):
        agg.mixing_weight(0.0, 0, poly)


def test_fedasync_mixes_toward_the_client_model():
    w = {"x": np.array([1.0, 2.0], dtype=np.float32)}
    base = {"x": np.array([0.0, 0.0], dtype=np.float32)}
    delta = {"x": np.array([4.0, -2.0], dtype=np.float32)}
    out = agg.fedasync_apply(w, base, delta, 0.25)
    np.testing.assert_allclose(out["x"], [0.75 * 1 + 0.25 * 4, 0.75 * 2 + 0.25 * -2])
    assert out["x"].dtype == np.float32


def test_fedbuff_scales_by_staleness_and_averages():
    w = {"x": np.zeros(2, dtype=np.float32)}
    deltas = [{"x": np.array([2.0, 0.0])}, {"x": np.array([0.0, 4.0])}]
    out = agg.fedbuff_apply(w, deltas, [0, 3], server_lr=2.0)
    # mean of (2, 0) * 1 and (0, 4) * 1/2 = (1, 1); times server lr 2
    np.testing.assert_allclose(out["x"], [2.0, 2.0])


def test_fedavg_weights_by_samples():
    models = [{"x": np.array([1.0])}, {"x": np.array([4.0])}]
    np.testing.assert_allclose(agg.fedavg(models, [3, 1])["x"], [1.75])
    with pytest.raises(ValueError):
        agg.fedavg(models, [0, 0])


def test_shape_and_name_mismatches_are_errors():
    w = {"x": np.zeros(2)}
    with pytest.raises(ValueError, match="shape"):
        agg.fedasync_apply(w, w, {"x": np.zeros(3)}, 0.5)
    with pytest.raises(ValueError, match="missing"):
        agg.add(w, {"y": np.zeros(2)})


def test_delta_problem_names_each_fault_from_one_pass() -> None:
    """One norm pass tells a clean delta; NaN, infinity, a huge finite delta and a wrong shape
    are each named as before (the element-wise look runs only for a non-finite norm)."""
    from coordinator.validation import delta_problem
    from shared.codec import RejectReason

    like = {"w": np.zeros((4, 3), np.float32), "b": np.zeros(3, np.float32)}

    def delta(fill: float, at: tuple = (0, 0)) -> dict:
        d = {"w": np.full((4, 3), 0.1, np.float32), "b": np.full(3, 0.1, np.float32)}
        d["w"][at] = fill
        return d

    problem, clipped_norm, norm = delta_problem(delta(0.1), like, 50.0, "reject")
    assert (problem, clipped_norm) == (None, None) and norm == pytest.approx(0.1 * np.sqrt(15))
    for bad in (np.nan, np.inf, -np.inf):
        (reason, _), _, _ = delta_problem(delta(bad), like, 50.0, "reject")
        assert reason is RejectReason.NON_FINITE
    huge = delta(3e38)  # finite, but its square overflows float32
    assert delta_problem(huge, like, 0.0, "reject")[:2] == (None, None)  # no bound: accepted
    (reason, detail), _, _ = delta_problem(delta(3e38), like, 50.0, "reject")
    assert reason is RejectReason.NORM and "3e+38" in detail  # its true norm, not inf
    clipped_huge = delta(3e38)
    assert delta_problem(clipped_huge, like, 50.0, "clip")[0] is None
    assert np.linalg.norm(clipped_huge["w"].astype(np.float64)) == pytest.approx(50.0, rel=1e-5)
    assert clipped_huge["w"][0, 0] > 0  # scaled to the bound, not zeroed
    (reason, _), _, _ = delta_problem({"w": np.zeros((3, 4), np.float32), "b": like["b"]}, like,
                                      50.0, "reject")  # fmt: skip
    assert reason is RejectReason.SHAPE
    clipped = delta(100.0)
    problem, norm, after = delta_problem(clipped, like, 50.0, "clip")
    assert problem is None and norm > 50 and after == 50.0
    assert np.sqrt(sum(float(np.vdot(t, t)) for t in clipped.values())) == pytest.approx(50.0)
