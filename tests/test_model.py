"""The hybrid model: shapes, no per-user weights, unseen items scored from their attributes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tasks.recommender.evaluate import ModelScorer
from tasks.recommender.local_data import load_region, load_shared
from tasks.recommender.model import build, load_numpy_state, state_to_numpy
from tasks.recommender.sequences import Examples
from tasks.recommender.train import TrainConfig, train_local


@pytest.fixture(scope="module")
def trained(small_data):
    shared = load_shared(small_data)
    data = load_region(small_data, "cn", shared)
    config = shared.model_config(dim=32)
    start = state_to_numpy(build(config, shared.features, seed=1))
    result = train_local(
        config, shared.features, start, data.split.train, TrainConfig(epochs=2, seed=4)
    )
    return shared, data, config, start, result


def test_state_dict_has_no_per_user_weights(trained):
    shared, data, config, start, result = trained
    n_users = len(data.split.sequences.users)
    for name, w in result.weights.items():
        assert n_users not in w.shape, name
    assert result.n_samples == len(data.split.train)
    assert np.isfinite(result.loss)
    assert set(result.weights) == set(start)


def test_training_is_deterministic_under_a_seed(trained):
    shared, data, config, start, result = trained
    again = train_local(
        config, shared.features, start, data.split.train, TrainConfig(epochs=2, seed=4)
    )
    for name in result.weights:
        np.testing.assert_array_equal(again.weights[name], result.weights[name])
    other = train_local(
        config, shared.features, start, data.split.train, TrainConfig(epochs=2, seed=5)
    )
    assert any(not np.array_equal(other.weights[n], result.weights[n]) for n in result.weights)


def test_unseen_item_is_scored_from_its_attributes(trained):
    shared, data, config, start, result = trained
    seen = np.zeros(config.n_items, dtype=bool)
    seen[data.split.train.target] = True
    seen[data.split.train.history[data.split.train.history >= 0]] = True
    unseen = np.flatnonzero(~seen & shared.is_cold(np.arange(config.n_items)))
    assert len(unseen) >= 2
    model = build(config, shared.features)
    load_numpy_state(model, result.weights)
    # its id weights never moved from zero, so its vector is its attributes' vector
    assert np.all(result.weights["item_id.weight"][unseen] == 0)
    with torch.no_grad():
        full = model.item_vectors()[unseen]
        attrs_only = model.item_vectors(torch.as_tensor(shared.features.codes[unseen]))
    torch.testing.assert_close(full, attrs_only)
    # scored at test time (after launch) it gets finite scores that depend on the attributes
    test = data.split.test
    late = Examples(*(getattr(test, f)[:50] for f in ("history", "target", "time", "user",
                                                      "position", "region")))  # fmt: skip
    late = Examples(late.history, late.target, np.full(50, shared.catalogue.launch_time.max() + 1),
                    late.user, late.position, late.region)  # fmt: skip
    scores = ModelScorer(model).scores(late)[:, unseen]
    assert np.isfinite(scores).all() and scores.min() > -1e6
    assert np.ptp(scores, axis=1).min() > 0
    # and an item described by hand, in no catalogue at all, gets a vector too
    codes = shared.features.encode(
        {"category": "ring", "metal": "silver", "gem": "pearl", "colour": "white", "gender": "f"},
        120.0,
    )
    with torch.no_grad():
        vec = model.item_vectors(torch.as_tensor(codes[None, :]))
    assert vec.shape == (1, config.dim) and torch.isfinite(vec).all()


def test_wrong_shapes_are_a_clear_error(trained):
    shared, data, config, start, result = trained
    bad = dict(result.weights)
    bad["item_id.weight"] = bad["item_id.weight"][:-1]
    with pytest.raises(ValueError, match="item_id.weight has shape"):
        load_numpy_state(build(config, shared.features), bad)
    with pytest.raises(ValueError, match="unknown region"):
        config.region_index("mars")


def test_bucket_bias_gradient_matches_finite_differences():
    from tasks.recommender.model import _BucketBias

    table = torch.randn(6, dtype=torch.float64, requires_grad=True)
    bucket = torch.randint(0, 6, (7, 9), generator=torch.Generator().manual_seed(0))
    assert torch.autograd.gradcheck(lambda t: _BucketBias.apply(t, bucket), (table,))


def test_moment_warm_up_moves_no_weight_and_shrinks_the_first_step(trained):
    from tasks.recommender.train import Trainer

    shared, data, config, start, _ = trained
    settings = TrainConfig(batch_size=128, seed=2)
    warm = Trainer(config, shared.features, start, settings)
    warm.warm_up(data.split.train, batches=4)
    for name, value in warm.weights().items():
        np.testing.assert_array_equal(value, start[name])
    steps = {int(s["step"]) for s in warm.optimizer.state_dict()["state"].values()}
    assert steps == {4}
    assert all(g["lr"] == settings.lr for g in warm.optimizer.param_groups)
    # one job from a warmed optimizer moves the model less than one from a fresh optimizer
    few = data.split.train.take(np.arange(256))

    def moved(warmup: int) -> float:
        cfg = TrainConfig(batch_size=128, seed=2, moment_warmup=warmup)
        out = train_local(config, shared.features, start, few, cfg)
        return sum(float(np.abs(out.weights[k] - start[k]).sum()) for k in start)

    assert moved(warmup=8) < moved(warmup=0)
