"""DP-SGD for the recommender, with one shopper as the unit of privacy.

Each step samples shoppers (Poisson, rate q), takes one example of each, clips each example's
whole gradient to norm C and adds Gaussian noise of standard deviation sigma * C to the sum:
the sampled Gaussian mechanism per step, which the region's accountant composes
(``shared/privacy.py``).

Opacus adds the noise and takes the step (``DPOptimizerFastGradientClipping``: it expects the
gradient already clipped per example), but it cannot find the per-example gradients here: every
example's loss is a softmax over the whole catalogue, so each example's gradient reaches every
item vector, and the item vectors are computed once per step, not per example (Opacus's hooks
and its functorch mode both need a batch dimension in a layer's input). The norms are computed
the way ghost clipping does it, without materialising a (B, items, d) tensor: the catalogue
part in closed form from the scores' gradient (an outer product with the user vector, plus the
few history rows), the user tower per example with ``torch.func`` (it sees one user at a time).
Then one ordinary backward of the loss weighted by each example's clipping factor gives the
clipped sum. ``tests/test_private.py`` checks the norms against per-example autograd.
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
    """Poisson sampling of a region's shoppers, then one training example of each sampled one.

    Its randomness is the OS's, never a job's seed: a sample whoever knows the seed could
    redraw would give no privacy amplification."""

    def __init__(self, examples: Examples) -> None:
        self.order = np.argsort(examples.user, kind="stable")
        users, self.first, self.count = np.unique(
            examples.user[self.order], return_index=True, return_counts=True
        )
        self.shoppers = len(users)
        self.rng = np.random.default_rng()

    def draw(self, rate: float) -> np.ndarray:
        """Indices of the examples of one batch: each shopper in it with probability ``rate``."""
        chosen = np.flatnonzero(self.rng.random(self.shoppers) < rate)
        offset = (self.rng.random(len(chosen)) * self.count[chosen]).astype(np.int64)
        return self.order[self.first[chosen] + offset]


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


def example_gradient_norms(model: Recommender, batch: Batch, keep: torch.Tensor) -> torch.Tensor:
    """The L2 norm (B,) of each example's gradient of its own loss over every parameter, with
    ``keep`` that step's id dropout (n, 1; launch order)."""
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
    tower_sq, grad_recent = _tower_gradients(model, recent, valid, batch.region, grad_users)
    grad_recent = grad_recent * valid.unsqueeze(-1)  # padding reads a zero row, no parameter
    users_sq = (users * users).sum(1)
    keep_w = keep[:width, 0]
    # history rows: the columns (launch ranks) an example's recent items add gradient to
    rows = ranks.clamp(min=0)
    g_at = torch.where(rows < width, g.gather(1, rows.clamp(max=width - 1)), 0.0) * valid
    keep_at = keep[rows, 0] * valid
    along_user = torch.einsum("bld,bd->bl", grad_recent, users)
    same_row = (rows.unsqueeze(2) == rows.unsqueeze(1)) & valid.unsqueeze(2) & valid.unsqueeze(1)
    gram = grad_recent @ grad_recent.transpose(1, 2)
    # id vectors: keep_j * (g_bj u_b + the history's gradient at row j), squared and summed
    ids_sq = (users_sq * ((g * g) @ keep_w) + 2 * (keep_at * g_at * along_user).sum(1)
              + (gram * same_row * keep_at.unsqueeze(2)).sum((1, 2)))  # fmt: skip
    # attribute tables: their 0/1 matrix (items x table rows) carries the same gradient back
    attributes = model.launch_ordered_attributes
    a = g @ attributes[:width]
    q = (attributes[rows] * valid.unsqueeze(-1)).transpose(1, 2) @ grad_recent
    attr_sq = ((a * a).sum(1) * users_sq + 2 * torch.einsum("br,brd,bd->b", a, q, users)
               + (q * q).sum((1, 2)))  # fmt: skip
    bias_sq = (g * g).sum(1)
    # age buckets: each learned bucket's gradient is the sum of g over its run of columns
    ends = starts.clamp(max=width - 1)
    suffix = _suffix_sums(g, ends, _StepRows.BLOCK) * inside
    age_sq = ((suffix[:, :-1] - suffix[:, 1:]) ** 2).sum(1)
    return (tower_sq + ids_sq + attr_sq + bias_sq + age_sq).clamp(min=0).sqrt().detach()


def clipping_weights(model: Recommender, batch: Batch, keep: torch.Tensor, clip: float):
    """Each example's factor (B,) that scales its gradient to norm ``clip`` at most."""
    norms = example_gradient_norms(model, batch, keep)
    return clip / norms.clamp(min=clip)


def _tower_gradients(model, recent, valid, region, grad_users):
    """Per example: the squared norm of the tower parameters' gradient and the gradient of the
    recent items' vectors, given the gradient of the user vector.

    The MLP sees one row per example, so its norms are products of two vectors' norms (ghost
    clipping's rule for a linear layer: the gradient of W is the outer product of the output's
    gradient and the input); the attention pooling, which mixes an example's positions, runs per
    example with ``torch.func``."""
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
    square = (grad_users * grad_users).sum(1) * (1 + (inner * inner).sum(1))  # second layer
    square = square + (grad_hidden * grad_hidden).sum(1) * (1 + (x * x).sum(1))  # first layer
    square = square + (grad_x[:, 2 * d :] ** 2).sum(1)  # the region's embedding row
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
    square = square + sum((g * g).flatten(1).sum(1) for g in grads.values())
    return square, grad_recent.detach()
