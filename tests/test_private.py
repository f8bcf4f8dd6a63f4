"""DP-SGD for the recommender: per-shopper sampling, per-example gradient norms, the clipped sum."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from tasks.recommender.local_data import load_region, load_shared
from tasks.recommender.model import build, load_numpy_state, state_to_numpy
from tasks.recommender.private import Batch, ShopperSampler, shopper_gradient_norms
from tasks.recommender.train import TrainConfig, train_local


@pytest.fixture(scope="module")
def setup(small_data):
    """cn's data, a model config and fresh initial weights."""
    shared = load_shared(small_data)
    data = load_region(small_data, "cn", shared)
    config = shared.model_config(dim=16)
    return (shared, data, config), state_to_numpy(build(config, shared.features, seed=1))


@pytest.fixture(scope="module")
def moved(setup):
    """A model a little trained (id vectors and biases no longer zero) and a batch of it."""
    (shared, data, config), start = setup
    result = train_local(config, shared.features, start, data.split.train,
                         TrainConfig(epochs=1, seed=2))  # fmt: skip
    model = build(config, shared.features)
    load_numpy_state(model, result.weights)
    pick = np.random.default_rng(3).choice(len(data.split.train), 24, replace=False)
    return model, data, Batch.of(data.split.train.take(pick))


def _plain_loss(model, batch: Batch, keep):
    """The catalogue cross-entropy with torch's own ops only (bucketing every entry)."""
    items = model.launch_ordered_items(keep)
    ranks = torch.where(batch.history >= 0, model.launch_rank[batch.history.clamp(min=0)], -1)
    users = model.user_vectors(items, ranks, batch.region)
    bias = model.item_bias.weight.index_select(0, model.launch_order).squeeze(1)
    age = batch.time.unsqueeze(1) - model.sorted_launch.unsqueeze(0)
    bucket = (age.unsqueeze(-1) >= model.age_edges).sum(-1)
    logits = users @ items.T + bias + model.age_table()[bucket]
    return F.cross_entropy(logits, model.launch_rank[batch.target])


def _rows(batch: Batch, idx) -> Batch:
    return Batch(*(t[idx] for t in (batch.history, batch.region, batch.time, batch.target)))


def _autograd_norms(model, batch: Batch, keep, slots: torch.Tensor) -> torch.Tensor:
    """Each shopper's gradient norm the slow way: autograd of her slots' weighted loss."""
    n_shoppers, k = slots.shape
    norms = []
    for s in range(n_shoppers):
        model.zero_grad()
        sum(slots[s, i] * _plain_loss(model, _rows(batch, [s * k + i]), keep)
            for i in range(k)).backward()  # fmt: skip
        norms.append(torch.sqrt(sum((p.grad**2).sum() for p in model.parameters())))
    return torch.stack(norms)


@pytest.mark.parametrize("dropout", [False, True])
def test_example_gradient_norms_equal_each_examples_own_autograd(moved, dropout):
    model, _data, batch = moved
    torch.manual_seed(0)
    keep = model.id_keep() if dropout else torch.ones(model.config.n_items, 1)
    assert dropout == bool((keep == 0).any())
    one_each = torch.ones(len(batch.target), 1)
    fast = shopper_gradient_norms(model, batch, keep, one_each)
    slow = _autograd_norms(model, batch, keep, one_each)
    assert fast.shape == (len(batch.target),)
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-6)
    assert float(slow.std()) > 0.01 * float(slow.mean())  # the examples differ: a real check


@pytest.mark.parametrize("dropout", [False, True])
def test_a_shoppers_gradient_norm_is_that_of_her_examples_weighted_sum(moved, dropout):
    """Several examples a shopper, with history items in common between them (a shopper's
    examples share most of their history): the pairwise terms are what is checked."""
    model, data, _batch = moved
    train = data.split.train
    users, counts = np.unique(train.user, return_counts=True)
    picked = [np.flatnonzero(train.user == u)[:3] for u in users[counts >= 3][:8]]
    batch = Batch.of(train.take(np.concatenate(picked)))
    slots = torch.tensor([[0.5, 0.3, 0.2], [1 / 3] * 3, [0.5, 0.5, 0.0], [1.0, 0.0, 0.0]] * 2)
    torch.manual_seed(1)
    keep = model.id_keep() if dropout else torch.ones(model.config.n_items, 1)
    fast = shopper_gradient_norms(model, batch, keep, slots)
    slow = _autograd_norms(model, batch, keep, slots)
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-6)
    # a shopper's norm is not the weighted sum of her examples' own norms: a real check
    alone = shopper_gradient_norms(model, batch, keep, torch.ones(len(batch.target), 1))
    naive = (slots * alone.view(slots.shape)).sum(1)
    assert float((naive - slow).abs().max()) > 1e-3 * float(slow.mean())


def test_weighted_loss_is_the_weighted_sum_of_each_examples_gradient(moved):
    """The clipped sum comes from one backward of the loss weighted per example."""
    model, _data, batch = moved
    keep = torch.ones(model.config.n_items, 1)
    weights = torch.linspace(0.1, 1.0, len(batch.target))
    model.zero_grad()
    model.loss(batch.history, batch.region, batch.time, batch.target, keep=keep,
               weights=weights).backward()  # fmt: skip
    fused = {n: p.grad.clone() for n, p in model.named_parameters()}
    expected = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for b in range(len(batch.target)):
        one = Batch(*(t[b : b + 1] for t in (batch.history, batch.region, batch.time,
                                              batch.target)))  # fmt: skip
        model.zero_grad()
        _plain_loss(model, one, keep).backward()
        for n, p in model.named_parameters():
            expected[n] += weights[b] * p.grad
    for n in fused:
        torch.testing.assert_close(fused[n], expected[n], rtol=1e-4, atol=1e-6, msg=n)


@pytest.mark.parametrize("per_shopper", [1, 4])
def test_shopper_sampler_takes_up_to_k_distinct_examples_per_shopper(moved, per_shopper):
    _model, data, _batch = moved
    train = data.split.train
    sampler = ShopperSampler(train)
    assert sampler.shoppers == len(np.unique(train.user))
    count = dict(zip(*np.unique(train.user, return_counts=True), strict=True))
    sizes = []
    for _ in range(50):
        rows, slots = sampler.draw(0.2, per_shopper)
        assert rows.shape == (slots.size,) and slots.shape[1] == per_shopper
        users = train.user[rows].reshape(slots.shape)
        assert len(np.unique(users[:, 0])) == len(users)  # each shopper once
        assert (users == users[:, :1]).all()  # a shopper's slots are hers
        for shopper, row_ids, weights in zip(users[:, 0], rows.reshape(slots.shape), slots,
                                             strict=True):  # fmt: skip
            taken = min(count[shopper], per_shopper)
            assert len(set(row_ids[:taken])) == taken  # without replacement
            np.testing.assert_allclose(weights, [1 / taken] * taken + [0] * (per_shopper - taken))
        sizes.append(len(slots))
    # Poisson sampling: the batch size varies around rate x shoppers
    assert abs(np.mean(sizes) / (0.2 * sampler.shoppers) - 1) < 0.1
    assert np.std(sizes) > 0
    assert len(sampler.draw(0.0)[1]) == 0 and len(sampler.draw(1.0)[1]) == sampler.shoppers


def _dp_job(moved_data, start, privacy, **config):
    shared, data, model_config = moved_data
    return train_local(model_config, shared.features, start, data.split.train,
                       TrainConfig(seed=7, privacy=privacy, **config))  # fmt: skip


@pytest.mark.parametrize("per_shopper", [1, 4])
def test_dp_jobs_move_the_model_and_their_noise_is_not_the_seeds(setup, per_shopper):
    from shared.privacy import DPSGD

    moved_data, start = setup
    job = DPSGD(noise=1.0, clip=1.0, rate=0.2, steps=3)
    first, second = (_dp_job(moved_data, start, job, dp_examples_per_shopper=per_shopper)
                     for _ in range(2))  # fmt: skip
    assert np.isfinite(first.loss) and first.n_samples > 0
    for name in start:
        assert np.all(np.isfinite(first.weights[name])), name
    assert any(not np.array_equal(first.weights[n], start[n]) for n in start)
    # same seed, same weights: a non-private job repeats exactly, a private one never does
    assert all(not np.array_equal(first.weights[n], second.weights[n]) for n in start)


def test_the_noise_of_a_dp_step_has_the_stated_size(setup):
    """An (almost surely) empty batch: the step's gradient is the noise alone, N(0, (sigma C)^2)
    over the expected batch size; with SGD at lr = that size, each weight moves by the noise."""
    from shared.privacy import DPSGD

    moved_data, start = setup
    shoppers = len(np.unique(moved_data[1].split.train.user))
    rate = 1e-7
    job = DPSGD(noise=0.7, clip=2.0, rate=rate, steps=1)
    result = _dp_job(moved_data, start, job, optimizer="sgd", lr=rate * shoppers)
    moved = (result.weights["item_id.weight"] - start["item_id.weight"]).ravel()
    assert moved.size > 5_000
    assert np.std(moved) == pytest.approx(0.7 * 2.0, rel=0.03)
    assert abs(np.mean(moved)) < 0.05
