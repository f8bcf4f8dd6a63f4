"""Leave-last-out split and training examples."""

from __future__ import annotations

import numpy as np

from tasks.recommender.dataset import Interactions
from tasks.recommender.sequences import split


def _data(rows):
    a = np.array(rows, dtype=np.int64)
    return Interactions(a[:, 0], a[:, 1], a[:, 2])


def test_leave_last_out_by_hand():
    # user 7: items 10,11,12,13 at times 1..4 (given out of order); user 9: two events only
    data = _data([[7, 12, 3], [7, 10, 1], [9, 5, 1], [7, 13, 4], [7, 11, 2], [9, 6, 2]])
    s = split(data, region=2, history=3)
    assert s.sequences.users.tolist() == [7, 9]
    # training targets: user 7 -> item 11 (history [10]); user 9 -> item 6 (history [5])
    assert s.train.target.tolist() == [11, 6]
    assert s.train.history.tolist() == [[-1, -1, 10], [-1, -1, 5]]
    assert s.validation.target.tolist() == [12]
    assert s.validation.history.tolist() == [[-1, 10, 11]]
    assert s.test.target.tolist() == [13]
    assert s.test.history.tolist() == [[10, 11, 12]]
    assert (s.train.region == 2).all() and (s.test.region == 2).all()
    assert [x.tolist() for x in s.seen_before(s.test)] == [[10, 11, 12]]
    assert sorted(s.train_items().tolist()) == [5, 6, 10, 11]


def test_history_keeps_only_the_most_recent_items():
    data = _data([[1, i, i] for i in range(30)])
    s = split(data, history=5)
    assert s.test.history.tolist() == [[24, 25, 26, 27, 28]]
    assert len(s.train) == 27
