"""The built-in fraud task: its metrics, its generator, its data checks, and that it learns."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.api import Step, TaskError
from tasks.fraud import data as fraud_data
from tasks.fraud import metrics
from tasks.fraud.task import TASK


def test_average_precision_by_hand():
    # ranked: pos, neg, pos, neg -> precision at the positives 1/1 and 2/3
    ap = metrics.average_precision(np.array([0.9, 0.8, 0.7, 0.1]), np.array([1, 0, 1, 0]))
    assert ap == pytest.approx((1 + 2 / 3) / 2)
    # a tie of a positive and a negative is one step: precision 1/2 for that positive
    assert metrics.average_precision(np.array([0.5, 0.5]), np.array([1, 0])) == pytest.approx(0.5)
    assert np.isnan(metrics.average_precision(np.array([0.1]), np.array([0])))


def test_roc_auc_and_recall_at_fpr_by_hand():
    scores, labels = np.array([0.9, 0.3, 0.6, 0.3, 0.1]), np.array([1, 1, 0, 0, 0])
    # pairs (pos, neg): 0.9 beats all 3; 0.3 beats 0.1, ties 0.3, loses to 0.6 -> (3 + 1.5) / 6
    assert metrics.roc_auc(scores, labels) == pytest.approx(4.5 / 6)
    # no negative may score above the threshold at 1% of 3 negatives: threshold 0.6
    assert metrics.recall_at_fpr(scores, labels, 0.01) == pytest.approx(0.5)
    assert metrics.recall_at_fpr(scores, labels, 0.34) == pytest.approx(0.5)  # 1 negative: 0.3
    assert metrics.roc_auc(np.array([1.0, 2.0]), np.array([0, 0])) != metrics.roc_auc(
        np.array([1.0, 2.0]), np.array([0, 1]))  # fmt: skip


@pytest.fixture(scope="module")
def fraud_small(tmp_path_factory):
    out = tmp_path_factory.mktemp("fraud") / "small"
    TASK.generate(out, seed=1, scale="small")
    return out


def test_the_generator_is_deterministic_and_about_one_percent_fraud(fraud_small, tmp_path):
    TASK.generate(tmp_path / "again", seed=1, scale="small")
    for region in ("cn", "me"):
        a = (fraud_small / region / "transactions.csv").read_bytes()
        assert a == (tmp_path / "again" / region / "transactions.csv").read_bytes()
    sizes = {}
    for region in TASK.describe(fraud_small).regions:
        p = fraud_data.read_payments(fraud_small, region)
        assert 0.004 < p.label.mean() < 0.02
        assert np.all(np.diff(p.time) >= 0)  # time order: the split is by time
        sizes[region] = len(p)
    assert sizes["cn"] > 8 * sizes["me"]  # regions of very different sizes


def test_the_split_is_by_time(fraud_small):
    meta = fraud_data.read_meta(fraud_small)
    payments = fraud_data.read_payments(fraud_small, "us")
    data = TASK.load_region(fraud_small, "us")
    n_train = int((payments.time < meta.validation_from).sum())
    assert TASK.data_size(data) == n_train
    assert sum(len(y) for _, y in data.parts.values()) == len(payments)


def test_bad_data_gets_an_error_naming_the_line(fraud_small, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(fraud_small, bad)
    path = bad / "me" / "transactions.csv"
    lines = path.read_text().splitlines()
    lines[3] = lines[3].replace(lines[3].split(",")[2], "casino", 1)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(TaskError, match=r"transactions.csv:4: bad row"):
        TASK.load_region(bad, "me")
    with pytest.raises(TaskError, match="unknown region 'xx'"):
        TASK.load_region(bad, "xx")
    with pytest.raises(TaskError, match="not a fraud data set"):
        (bad / "meta.json").write_text('{"format": "fedq-data/1"}')
        TASK.describe(bad)


def test_the_fraud_model_learns_from_pooled_data(fraud_small):
    settings = TASK.settings({})
    regions = [TASK.load_region(fraud_small, r) for r in TASK.describe(fraud_small).regions]
    pooled = TASK.pool(regions)
    weights = TASK.initial_weights(fraud_small, settings, 0)
    before = TASK.evaluate(weights, regions[0], settings, "test", 0)
    state = None
    for epoch in range(4):
        trained = TASK.train(weights, pooled, settings, Step(seed=epoch, whole_data=True), state)
        weights, state = trained.weights, trained.state
    after = TASK.evaluate(weights, regions[0], settings, "test", 0)
    assert after["roc_auc"] > before["roc_auc"] + 0.1 and after["roc_auc"] > 0.75
    assert TASK.metrics.check(after, "test") == after
