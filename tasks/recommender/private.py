"""DP-SGD for the recommender, with one shopper as the unit of privacy.

Each step samples shoppers (Poisson, rate q), takes up to k of each one's examples
(``dp_examples_per_shopper``), clips each shopper's gradient of her examples' mean loss to
norm C and adds Gaussian noise of standard deviation sigma * C to the sum: the sampled
Gaussian mechanism per step with one shopper's whole contribution bounded, which the region's
accountant composes (``shared/privacy.py``). Clipping a shopper's mean rather than one example
keeps more of the signal: her examples' own directions partly cancel before the clip, so the
clipped vector points more along the true gradient (on the default data, its projection on it
doubles from k = 1 to k = 8).

Opacus adds the noise and takes the step (``DPOptimizerFastGradientClipping``: it expects the
gradient already clipped per shopper), but it cannot find the per-shopper gradients here: every
example's loss is a softmax over the whole catalogue, so each example's gradient reaches every
item vector, and the item vectors are computed once per step, not per example (Opacus's hooks
and its functorch mode both need a batch dimension in a layer's input). The norms are computed
the way ghost clipping does it, without materialising a (S, items, d) tensor: the catalogue
part in closed form from the scores' gradient (outer products with the user vectors, plus the
few history rows), the user tower per example with ``torch.func`` (it sees one user at a time),
and a shopper's squared norm as the sum of her examples' pairwise inner products. Then one
ordinary backward of the loss weighted by each example's slot and clipping factor gives the
clipped sum. ``tests/test_private.py`` checks the norms against per-shopper autograd.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from tasks.recommender.model import (
    Recommender,
    _StepRows,
    _suffix_sums,
    catalogue_log_softmax,
    history_vectors,
    softmax_minus_targets_,
)
from tasks.recommender.sequences import Examples


class ShopperSampler:
    """Poisson sampling of a region's shoppers, then up to k training examples of each sampled
    one (without replacement), in k slots per shopper.

    Its randomness is the OS's, never a job's seed: a sample whoever knows the seed could
    redraw would give no privacy amplification."""

    def __init__(self, examples: Examples) -> None:
        self.order = np.argsort(examples.user, kind="stable")
        users, self.first, self.count = np.unique(
            examples.user[self.order], return_index=True, return_counts=True
        )
        self.shoppers = len(users)
        self.rng = np.random.default_rng()

    def draw(self, rate: float, per_shopper: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """One batch: each shopper in it with probability ``rate``; the indices of her examples
        (S * k, shopper by shopper; an empty slot repeats her first) and each slot's weight
        (S, k): one over her examples taken, 0 for an empty slot, so her part of the loss is
        the mean over her examples."""
        chosen = np.flatnonzero(self.rng.random(self.shoppers) < rate)
        k = per_shopper
        taken = np.minimum(self.count[chosen], k)
        # k distinct offsets per shopper: the ranks of random keys, kept where below her count
        keys = self.rng.random((len(chosen), max(k, int(self.count[chosen].max(initial=1)))))
        keys[np.arange(keys.shape[1]) >= self.count[chosen][:, None]] = 2.0
        offsets = np.argsort(keys, axis=1)[:, :k]
        filled = np.arange(k) < taken[:, None]
        offsets = np.where(filled, offsets, offsets[:, :1])
        rows = self.order[self.first[chosen][:, None] + offsets].reshape(-1)
        slots = np.where(filled, 1.0 / np.maximum(taken, 1)[:, None], 0.0).astype(np.float32)
        return rows, slots


@dataclass(frozen=True)
class Batch:
    history: torch.Tensor
    region: torch.Tensor
    time: torch.Tensor
    target: torch.Tensor

    @staticmethod
    def of(examples: Examples) -> Batch:
        return Batch(*(torch.as_tensor(a) for a in (examples.history, examples.region,
                                                    examples.time, examples.target)))  # fmt: skip


class _Pool(nn.Module):
    """The model's attention pooling as a module of its own, for ``torch.func.functional_call``."""

    def __init__(self, model: Recommender) -> None:
        super().__init__()
        self.model = model

    def forward(self, recent, valid):
        return self.model.pool(recent, valid)


POOL = ("position", "attention.")


def shopper_gradient_norms(
    model: Recommender, batch: Batch, keep: torch.Tensor, slots: torch.Tensor
) -> torch.Tensor:
    """The L2 norm (S,) of each sampled shopper's gradient, over every parameter, of her part
    of the loss ``sum_i slots[s, i] * loss(row s*k + i)``: the batch's rows are S shoppers by k
    slots (``slots`` (S, k): each example's weight in her part, 0 for an empty slot), ``keep``
    that step's id dropout (n, 1; launch order). With k = 1 and weights 1, each example's own.

    Every part of the gradient is a sum over a shopper's examples, so its squared norm is the
    sum of the examples' pairwise inner products: each term below is a (S, k, k) Gram matrix of
    one parameter group's per-example gradients, in the closed forms ghost clipping uses for one
    example (an outer product's inner products factor into two smaller ones)."""
    n_shoppers, k = slots.shape
    with torch.no_grad():
        items = model.launch_ordered_items(keep)
        ranks = torch.where(batch.history >= 0, model.launch_rank[batch.history.clamp(min=0)], -1)
        recent, valid = history_vectors(items, ranks)
        users = model.tower(recent, valid, batch.region)
        steps, starts = model._age_runs(batch.time)
        target = model.launch_rank[batch.target]
        width = model.catalogue_width(starts, target)
        bias = model.item_bias.weight.index_select(0, model.launch_order[:width]).squeeze(1)
        log_p, _u, _i, inside = catalogue_log_softmax(users, items[:width], bias, steps, starts)
        g = softmax_minus_targets_(log_p, target)  # each example's gradient of its scores
        grad_users = g @ items[:width]

    def per(x: torch.Tensor) -> torch.Tensor:  # rows grouped by shopper: (S, k, ...)
        return x.reshape(n_shoppers, k, *x.shape[1:])

    def gram(x: torch.Tensor) -> torch.Tensor:  # each shopper's row inner products (S, k, k)
        f = per(x.flatten(1))
        return f @ f.transpose(1, 2)

    tower, grad_recent = _tower_grams(model, recent, valid, batch.region, grad_users, gram)
    grad_recent = grad_recent * valid.unsqueeze(-1)  # padding reads a zero row, no parameter
    uu = gram(users)
    keep_w = keep[:width, 0]
    # history rows: the columns (launch ranks) an example's recent items add gradient to
    rows = ranks.clamp(min=0)
    inside_rows = (rows < width) & valid
    on_row = keep[rows, 0] * valid  # a history row that has an id vector this step
    # g of example a at the history rows of example b (S, k, k, L)
    g_rows = per(g).unsqueeze(2).expand(-1, -1, k, -1).gather(
        3, per(rows.clamp(max=width - 1)).unsqueeze(1).expand(-1, k, -1, -1)
    ) * per(inside_rows).unsqueeze(1)
    u_recent = torch.einsum("sad,sbld->sabl", per(users), per(grad_recent))  # u_a . r_bl
    # the history parts of two examples meet where they name the same row: per shopper and
    # row she names, each example's gradient at that row (H: rows, k, d), then H H^T summed
    # over her rows (her examples' histories are windows of one sequence: few distinct rows)
    history_len = rows.shape[1]
    shopper_of = torch.arange(n_shoppers).repeat_interleave(k * history_len)
    slot_of = torch.arange(k).repeat_interleave(history_len).repeat(n_shoppers)
    named, which = torch.unique(shopper_of * len(keep) + rows.flatten(), return_inverse=True)
    at_row = grad_recent.new_zeros(len(named), k, grad_recent.shape[-1])
    at_row.index_put_((which, slot_of), (grad_recent * on_row.unsqueeze(-1)).flatten(0, 1),
                      accumulate=True)  # fmt: skip
    history = uu.new_zeros(n_shoppers, k, k).index_add_(
        0, named // len(keep), at_row @ at_row.transpose(1, 2)
    )
    # id vectors: keep_j * (g_aj u_a + the history's gradient at row j), a's against b's
    cross = (g_rows * u_recent * per(on_row).unsqueeze(1)).sum(-1)
    ids = uu * gram(g * keep_w) + cross + cross.transpose(1, 2) + history
    # attribute tables: their 0/1 matrix (items x table rows) carries the same gradient back
    attributes = model.launch_ordered_attributes
    a = g @ attributes[:width]
    q = (attributes[rows] * valid.unsqueeze(-1)).transpose(1, 2) @ grad_recent  # (B, R, d)
    q_u = torch.einsum("sbrd,sad->sbra", per(q), per(users))  # Q_b u_a, one matmul a shopper
    a_q = torch.einsum("sar,sbra->sab", per(a), q_u)
    attrs = gram(a) * uu + a_q + a_q.transpose(1, 2) + gram(q)
    # age buckets: each learned bucket's gradient is the sum of g over its run of columns
    ends = starts.clamp(max=width - 1)
    suffix = _suffix_sums(g, ends, _StepRows.BLOCK) * inside
    age = gram(suffix[:, :-1] - suffix[:, 1:])
    pairs = tower + ids + attrs + gram(g) + age  # the item biases' part is gram(g)
    square = torch.einsum("sa,sab,sb->s", slots, pairs, slots)
    return square.clamp(min=0).sqrt().detach()


def clipping_weights(model: Recommender, batch: Batch, keep: torch.Tensor, slots: torch.Tensor,
                     clip: float) -> torch.Tensor:  # fmt: skip
    """Each row's weight in the loss (B,): its slot weight times its shopper's factor that
    scales her gradient to norm ``clip`` at most."""
    norms = shopper_gradient_norms(model, batch, keep, slots)
    return (slots * (clip / norms.clamp(min=clip)).unsqueeze(1)).flatten()


def _tower_grams(model, recent, valid, region, grad_users, gram):
    """Per shopper: the Gram matrix (S, k, k) of her examples' gradients of the tower's
    parameters, given each example's gradient of its user vector; and each example's gradient
    of its recent items' vectors.

    The MLP sees one row per example, so the inner products of two examples' gradients are
    products of two vectors' inner products (ghost clipping's rule for a linear layer: the
    gradient of W is the outer product of the output's gradient and the input); the attention
    pooling, which mixes an example's positions, runs per example with ``torch.func``."""
    d = recent.shape[-1]
    first, act, second = model.user_mlp
    with torch.no_grad():
        pooled = model.pool(recent, valid)
    x = torch.cat([recent[:, -1], pooled, model.region.weight[region]], dim=1).detach()
    with torch.enable_grad():
        x.requires_grad_(True)
        hidden = first(x)
        out = second(act(hidden))
        grad_hidden, grad_x = torch.autograd.grad(out, [hidden, x], grad_outputs=grad_users)
    with torch.no_grad():
        inner = act(hidden)
    pairs = gram(grad_users) * (1 + gram(inner))  # second layer
    pairs = pairs + gram(grad_hidden) * (1 + gram(x))  # first layer
    same_region = gram(nn.functional.one_hot(region, model.region.num_embeddings).float())
    pairs = pairs + gram(grad_x[:, 2 * d :]) * same_region  # the region's embedding row
    pool = _Pool(model)
    params = {name: p.detach() for name, p in pool.named_parameters()
              if name.removeprefix("model.").startswith(POOL)}  # fmt: skip

    def one(p, recent_b, valid_b, grad_b):
        def pooled_b(p, r):
            return torch.func.functional_call(pool, p, (r[None], valid_b[None]))[0]

        _out, pull = torch.func.vjp(pooled_b, p, recent_b)
        return pull(grad_b)

    grads, grad_recent = torch.func.vmap(one, in_dims=(None, 0, 0, 0))(
        params, recent, valid, grad_x[:, d : 2 * d]
    )
    grad_recent = grad_recent.clone()
    grad_recent[:, -1] += grad_x[:, :d]  # the last item also enters the MLP directly
    pairs = pairs + sum(gram(g) for g in grads.values())
    return pairs, grad_recent.detach()
