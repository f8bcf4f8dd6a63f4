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


def _scoring_model(trained):
    """The trained model with distinct age biases, in eval mode: no id dropout, so two ways of
    computing its scores see the same item vectors."""
    shared, _data, config, _start, result = trained
    model = build(config, shared.features)
    load_numpy_state(model, result.weights)
    model.eval()
    with torch.no_grad():
        model.age_bias.copy_(torch.tensor([0.5, -0.25, 0.125, 1.0, -2.0]))
    return model


def test_catalogue_scores_match_bucketing_every_entry_by_age(trained):
    """The launch-ordered scores (age buckets as runs of columns) against the plain definition:
    every (example, item) bucketed by its age, the bucket's bias added, unsellable items at
    NOT_ON_SALE; and the same loss gradient for the age biases."""
    from torch.nn import functional as F

    from tasks.recommender.model import NOT_ON_SALE

    shared, data, _config, _start, _result = trained
    model = _scoring_model(trained)
    test = data.split.test
    # times from before the first launch to after the last, so every bucket and run occurs
    launch = shared.catalogue.launch_time
    times = np.linspace(launch.min() - 86_400, launch.max() + 400 * 86_400, len(test))
    times = np.concatenate([times, launch[:40], launch[:40] + 7 * 86_400]).astype(np.int64)
    pick = np.arange(len(times)) % len(test)
    history, target = (torch.as_tensor(getattr(test, f)[pick]) for f in ("history", "target"))
    region = torch.as_tensor(test.region[pick])
    time = torch.as_tensor(times)
    items = model.item_vectors()
    users = model.user_vectors(items, history, region)
    age = time[:, None] - torch.as_tensor(launch, dtype=torch.int64)[None, :]
    bucket = torch.bucketize(age, model.age_edges, right=True)
    assert set(bucket.unique().tolist()) == set(range(6))
    expected = users @ items.T + model.item_bias.weight.T + model.age_table()[bucket]
    got = model.logits(items, users, time)
    sellable = bucket > 0
    assert torch.equal(got <= NOT_ON_SALE / 2, ~sellable)
    torch.testing.assert_close(got[sellable], expected[sellable])
    (want,) = torch.autograd.grad(F.cross_entropy(expected, target), model.age_bias)
    (have,) = torch.autograd.grad(model.loss(history, region, time, target), model.age_bias)
    torch.testing.assert_close(have, want)


def test_the_fused_training_loss_is_the_cross_entropy_of_the_catalogue_scores(trained):
    """``Recommender.loss`` (the never-on-sale columns left out, one fused autograd function)
    against torch's cross-entropy of the whole launch-ordered score matrix: the same loss and
    the same gradient for every parameter."""
    from torch.nn import functional as F

    shared, data, config, _start, _result = trained
    model = _scoring_model(trained)
    with torch.no_grad():
        model.item_bias.weight.normal_(0, 0.5)
    train = data.split.train.take(np.arange(min(300, len(data.split.train))))
    history, region, time, target = (torch.as_tensor(getattr(train, f))
                                     for f in ("history", "region", "time", "target"))  # fmt: skip
    on_sale = int(np.searchsorted(np.sort(shared.catalogue.launch_time), train.time.max(), "right"))
    assert on_sale < config.n_items  # some columns are left out
    items = model.launch_ordered_items()
    ranks = torch.where(history >= 0, model.launch_rank[history.clamp(min=0)], -1)
    logits = model.launch_ordered_logits(items, model.user_vectors(items, ranks, region), time)
    want = F.cross_entropy(logits, model.launch_rank[target])
    params = [p for p in model.parameters()]
    want_grads = torch.autograd.grad(want, params)
    have = model.loss(history, region, time, target)
    have_grads = torch.autograd.grad(have, params)
    torch.testing.assert_close(have, want)
    for p, g_have, g_want in zip(params, have_grads, want_grads, strict=True):
        torch.testing.assert_close(g_have, g_want, atol=1e-6, rtol=1e-4, msg=str(p.shape))


def test_step_rows_gradient_matches_finite_differences():
    from tasks.recommender.model import _StepRows

    gen = torch.Generator().manual_seed(0)
    steps = torch.randn(4, dtype=torch.float64, requires_grad=True)
    # starts inside the row, at its first column and at its end (an empty run)
    starts = torch.sort(torch.randint(0, 131, (9, 4), generator=gen), dim=1).values
    starts[0], starts[1] = torch.tensor([0, 0, 64, 130]), torch.tensor([1, 129, 130, 130])
    weights = torch.randn(9, 130, dtype=torch.float64, generator=gen)
    check = lambda s: (_StepRows.apply(s, starts, 130) * weights).sum()  # noqa: E731
    assert torch.autograd.gradcheck(check, (steps,))


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


def test_a_carried_trainer_continues_exactly_like_its_saved_optimizer_state(trained):
    """A worker's next job reuses its model and Adam (``Trainer.restart``): the same weights
    as a fresh trainer given the optimizer's saved state and the job's learning rate (loading a
    saved state alone kept the first job's rate: the federation's decay never reached a
    worker); a failed call is not continued."""
    import copy

    from tasks.recommender.train import Trainer

    shared, data, config, start, _ = trained
    few = data.split.train.take(np.arange(512))
    first = train_local(config, shared.features, start, few, TrainConfig(batch_size=128, seed=1))
    saved = copy.deepcopy(first.trainer.optimizer.state_dict())
    job = TrainConfig(batch_size=128, seed=2, lr=1e-3)
    carried = train_local(config, shared.features, first.weights, few, job, carried=first.trainer)
    assert carried.trainer is first.trainer
    fresh = Trainer(config, shared.features, first.weights, job)
    fresh.optimizer.load_state_dict(saved)  # loads the first job's learning rate too
    for group in fresh.optimizer.param_groups:
        group["lr"] = job.lr  # the job's own: the federation's decay reaches the worker
    fresh.run_epoch(few)
    for name, value in fresh.weights().items():
        np.testing.assert_array_equal(carried.weights[name], value)
    assert all(g["lr"] == 1e-3 for g in carried.trainer.optimizer.param_groups)
    carried.trainer.usable = False  # what a call that raised leaves behind
    again = train_local(config, shared.features, first.weights, few, job, carried=carried.trainer)
    assert again.trainer is not carried.trainer
