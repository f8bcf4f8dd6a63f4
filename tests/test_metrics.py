"""Ranking metrics on rankings computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tasks.recommender import metrics


def test_ranks_count_higher_and_tied_candidates_only():
    scores = np.array(
        [
            [0.9, 0.1, 0.5, 0.7],  # target col 2 (0.5): beaten by 0.9 and 0.7 -> rank 2
            [0.3, 0.3, 0.2, 0.1],  # target col 0 (0.3): tie with col 1 counts against -> rank 1
            [0.1, 0.8, 0.9, 0.2],  # target col 0, but cols 1,2 are not candidates -> rank 1 (col 3)
        ]
    )
    candidate = np.array(
        [[True, True, True, True], [True, True, True, True], [True, False, False, True]]
    )
    got = metrics.ranks(scores, np.array([2, 0, 0]), candidate)
    assert got.tolist() == [2, 1, 1]


def test_target_competes_even_when_marked_non_candidate():
    scores = np.array([[0.5, 0.9]])
    got = metrics.ranks(scores, np.array([0]), np.array([[False, True]]))
    assert got.tolist() == [1]


def test_hit_rate_and_ndcg_by_hand():
    rank = np.array([0, 3, 9, 10, 50])
    assert metrics.hit_rate(rank, 10) == pytest.approx(3 / 5)
    expected = (1 / math.log2(2) + 1 / math.log2(5) + 1 / math.log2(11)) / 5
    assert metrics.ndcg(rank, 10) == pytest.approx(expected)
    assert metrics.hit_rate(rank, 1) == pytest.approx(1 / 5)


def test_random_hit_rate_and_weighted_mean():
    assert metrics.random_hit_rate(np.array([100, 5])) == pytest.approx((0.1 + 1.0) / 2)
    got = metrics.weighted_mean({"a": 0.5, "b": 0.1, "c": float("nan")}, {"a": 1, "b": 3, "c": 9})
    assert got == pytest.approx((0.5 + 0.3) / 4)


def test_empty_inputs_are_nan_not_errors():
    assert math.isnan(metrics.hit_rate(np.array([], dtype=int)))
    assert math.isnan(metrics.ndcg(np.array([], dtype=int)))
