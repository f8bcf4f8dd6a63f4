"""The hybrid jewelry recommender (torch).

Item side: an id embedding plus one embedding per catalogue attribute (category, metal, gem,
colour, gender, price band). Id embeddings and the per-item bias start at zero, so an item nobody
has bought is scored from its attributes alone; id dropout in training teaches the attribute part
to carry the signal. An item's age (time since launch) adds a learned bias per age bucket, and an
item not yet on sale cannot be recommended.

User side: computed, never stored. The user's recent items (encoded by the same item side) with
position embeddings, attention-pooled, beside the most recent item and the region's embedding,
through a small MLP. There are no per-user parameters: every weight can travel between regions
without carrying anyone's identity, and the state_dict holds trainable weights only (catalogue
codes and launch times are non-persistent buffers every host derives from the public catalogue).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from tasks.recommender.features import ItemFeatures

DAY = 86_400
AGE_EDGES_DAYS = (7.0, 30.0, 90.0, 180.0)
NOT_ON_SALE = -1e9


@dataclass(frozen=True)
class ModelConfig:
    n_items: int
    feature_sizes: tuple[int, ...]
    regions: tuple[str, ...]
    dim: int = 64
    history: int = 20
    id_dropout: float = 0.15

    def to_json(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_json(raw: dict) -> ModelConfig:
        return ModelConfig(
            n_items=int(raw["n_items"]),
            feature_sizes=tuple(int(x) for x in raw["feature_sizes"]),
            regions=tuple(str(r) for r in raw["regions"]),
            dim=int(raw["dim"]),
            history=int(raw["history"]),
            id_dropout=float(raw["id_dropout"]),
        )

    def region_index(self, region: str) -> int:
        try:
            return self.regions.index(region)
        except ValueError:
            raise ValueError(
                f"unknown region {region!r}; the model knows: {', '.join(self.regions)}"
            ) from None


def model_config(features: ItemFeatures, regions: tuple[str, ...], **overrides) -> ModelConfig:
    return ModelConfig(features.n_items, features.sizes(), tuple(regions), **overrides)


class Recommender(nn.Module):
    def __init__(self, config: ModelConfig, features: ItemFeatures) -> None:
        super().__init__()
        if features.n_items != config.n_items or features.sizes() != config.feature_sizes:
            raise ValueError(
                f"catalogue has {features.n_items} items with feature sizes {features.sizes()}, "
                f"the model expects {config.n_items} and {config.feature_sizes}"
            )
        d = config.dim
        self.config = config
        self.item_id = nn.Embedding(config.n_items, d)
        self.item_bias = nn.Embedding(config.n_items, 1)
        nn.init.zeros_(self.item_id.weight)
        nn.init.zeros_(self.item_bias.weight)
        self.attributes = nn.ModuleList(nn.Embedding(n, d) for n in config.feature_sizes)
        for emb in self.attributes:
            nn.init.normal_(emb.weight, std=0.1)
        self.position = nn.Parameter(torch.zeros(config.history, d))
        self.region = nn.Embedding(len(config.regions), d)
        nn.init.normal_(self.region.weight, std=0.1)
        self.attention = nn.Linear(d, 1)
        self.user_mlp = nn.Sequential(nn.Linear(3 * d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
        self.age_bias = nn.Parameter(torch.zeros(len(AGE_EDGES_DAYS) + 1))
        self.register_buffer("codes", torch.as_tensor(features.codes), persistent=False)
        offsets = np.cumsum((0, *config.feature_sizes[:-1]))
        self.register_buffer("attribute_offsets", torch.as_tensor(offsets), persistent=False)
        self.register_buffer(
            "launch_time",
            torch.as_tensor(features.launch_time, dtype=torch.int64),
            persistent=False,
        )
        # ages in whole seconds: a bucket never depends on how an age was computed
        edges = torch.tensor([round(d * DAY) for d in (0.0, *AGE_EDGES_DAYS)])
        self.register_buffer("age_edges", edges, persistent=False)
        # the catalogue oldest launch first: at any moment an age bucket is a run of columns
        order = torch.argsort(self.launch_time, stable=True)
        self.register_buffer("launch_order", order, persistent=False)
        self.register_buffer("launch_rank", torch.argsort(order), persistent=False)
        self.register_buffer("sorted_launch", self.launch_time[order], persistent=False)
        # the catalogue's attributes as a fixed 0/1 matrix over the attribute tables side by
        # side, rows in launch order: its attribute vectors are one small matmul, forward and
        # back (an embedding bag's backward sorted its indices: a seventh of a worker's step)
        hot = torch.zeros(config.n_items, sum(config.feature_sizes))
        hot.scatter_(1, self.codes + self.attribute_offsets, 1.0)
        self.register_buffer("launch_ordered_attributes", hot[order], persistent=False)

    def item_vectors(self, codes: torch.Tensor | None = None) -> torch.Tensor:
        """Catalogue item vectors (n_items, d); with ``codes``, attribute-only vectors for those."""
        if codes is not None:
            return self.attribute_vectors(codes)
        return self.launch_ordered_items()[self.launch_rank]

    def launch_ordered_items(self, keep: torch.Tensor | None = None) -> torch.Tensor:
        """The catalogue's item vectors, oldest launch first (training scores in that order);
        ``keep`` (n, 1) in launch order says whose id vector counts (id dropout): in training
        drawn afresh unless given."""
        attrs = self.launch_ordered_attributes @ self._attribute_tables()
        ids = self.item_id.weight.index_select(0, self.launch_order)
        if keep is None and self.training and self.config.id_dropout > 0:
            keep = self.id_keep()
        return attrs + (ids if keep is None else ids * keep)

    def id_keep(self) -> torch.Tensor:
        """A draw of id dropout (n, 1), launch order: each item's draw as in catalogue order."""
        keep = torch.rand(self.config.n_items, 1) >= self.config.id_dropout
        return keep[self.launch_order].to(self.item_id.weight.dtype)

    def attribute_vectors(self, codes: torch.Tensor) -> torch.Tensor:
        """The sum of each item's attribute embeddings (items outside the catalogue)."""
        return F.embedding_bag(codes + self.attribute_offsets, self._attribute_tables(),
                               mode="sum")  # fmt: skip

    def _attribute_tables(self) -> torch.Tensor:
        return torch.cat([emb.weight for emb in self.attributes])

    def user_vectors(
        self, items: torch.Tensor, history: torch.Tensor, region: torch.Tensor
    ) -> torch.Tensor:
        """Users from their recent items (rows of ``items``, right-aligned, -1 padded) and
        region: (B, d)."""
        recent, valid = history_vectors(items, history)
        return self.tower(recent, valid, region)

    def tower(
        self, recent: torch.Tensor, valid: torch.Tensor, region: torch.Tensor
    ) -> torch.Tensor:
        """Users (B, d) from the vectors of their recent items (B, L, d; zero where ``valid``
        is False) and their region: the part of the model that sees one user at a time."""
        pooled = self.pool(recent, valid)
        return self.user_mlp(torch.cat([recent[:, -1], pooled, self.region(region)], dim=1))

    def pool(self, recent: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """The recent items with their positions, attention-pooled (B, d)."""
        h = recent + self.position[-recent.shape[1] :]
        score = self.attention(torch.tanh(h)).squeeze(-1).masked_fill(~valid, -1e4)
        weights = torch.softmax(score, dim=1) * valid.any(dim=1, keepdim=True)
        return (weights.unsqueeze(-1) * h).sum(dim=1)

    def logits(
        self,
        items: torch.Tensor,
        users: torch.Tensor,
        time: torch.Tensor,
        candidates: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Scores (B, n) of the catalogue (or of ``candidates`` (B, c)) at each example's time."""
        if candidates is None:
            ordered = items[self.launch_order]
            return self.launch_ordered_logits(ordered, users, time)[:, self.launch_rank]
        scores = (users.unsqueeze(1) * items[candidates]).sum(-1)
        scores = scores + self.item_bias.weight[candidates].squeeze(-1)
        age = time.to(torch.int64).unsqueeze(1) - self.launch_time[candidates]
        return scores + self.age_table()[torch.bucketize(age, self.age_edges, right=True)]

    def age_table(self) -> torch.Tensor:
        """The bias per age bucket: bucket 0 is "not on sale yet", a fixed and finite penalty
        (a masked logit never turns a loss into NaN); the others are learned."""
        return torch.cat([self.age_bias.new_full((1,), NOT_ON_SALE), self.age_bias])

    def launch_ordered_logits(
        self, items: torch.Tensor, users: torch.Tensor, time: torch.Tensor
    ) -> torch.Tensor:
        """Catalogue scores (B, n) with the columns in ``launch_order`` (``items`` in that
        order too).

        Training computes a (B, n) score matrix per step, and bucketing each of its entries by
        age (then summing the bucket gradients back) took over half a step. With the columns
        oldest launch first, each row's age buckets are runs of columns whose bounds are five
        binary searches per row: the age bias is a cumulative sum of five steps per row and
        "not on sale" is a prefix mask, both single passes. Same scores as bucketing each entry.
        """
        bias = self.item_bias.weight.index_select(0, self.launch_order)
        scores = torch.addmm(bias.T, users, items.T)
        steps, starts = self._age_runs(time)
        return scores + _StepRows.apply(steps, starts, scores.shape[1])

    def _age_runs(self, time: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's age buckets as runs of launch-ordered columns: the bias step at each
        run's start (6,) and the starts (B, 6), oldest bucket first, "not on sale" last."""
        # column j is in bucket >= k (age >= edge k-1) iff j < ends[:, k-1]
        cutoffs = time.to(torch.int64).unsqueeze(1) - self.age_edges.unsqueeze(0)  # (B, 5)
        ends = torch.searchsorted(self.sorted_launch, cutoffs, right=True)
        starts = torch.cat([ends.new_zeros(len(ends), 1), ends.flip(1)], dim=1)
        table = self.age_table().flip(0)
        return torch.diff(table, prepend=table.new_zeros(1)), starts

    def loss(
        self,
        history: torch.Tensor,
        region: torch.Tensor,
        time: torch.Tensor,
        target: torch.Tensor,
        keep: torch.Tensor | None = None,
        weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mean cross-entropy of the targets against the whole catalogue at each example's time
        (with ``weights`` (B,), the weighted sum: DP-SGD's clipped per-example gradients; with
        ``keep``, that draw of id dropout).

        The same loss as ``F.cross_entropy`` of ``launch_ordered_logits``, computed without
        the columns no row has on sale yet (the newest launches: their probability is exactly
        0) and fused (``_CatalogueCrossEntropy``): a step's (B, n) passes are most of its time.
        """
        items = self.launch_ordered_items(keep)
        ranks = torch.where(history >= 0, self.launch_rank[history.clamp(min=0)], -1)
        users = self.user_vectors(items, ranks, region)
        steps, starts = self._age_runs(time)
        target = self.launch_rank[target]
        width = self.catalogue_width(starts, target)
        bias = self.item_bias.weight.index_select(0, self.launch_order[:width]).squeeze(1)
        if weights is None:
            weights = users.new_full((len(users),), 1.0 / len(users))
        return _CatalogueCrossEntropy.apply(users, items[:width], bias, steps, starts, target,
                                            weights)  # fmt: skip

    def catalogue_width(self, starts: torch.Tensor, target: torch.Tensor) -> int:
        """The launch-ordered columns on sale for some row of a batch (the rest score 0)."""
        return int(max(starts[:, -1].max(), target.max() + 1))

    def new_item_logits(
        self, users: torch.Tensor, codes: torch.Tensor, time: torch.Tensor, launch: torch.Tensor
    ) -> torch.Tensor:
        """Scores (B,) of an item outside the catalogue, from its attribute codes alone (the
        way a cold-start item is scored: no id vector, no learned bias), launched at ``launch``.
        """
        vector = self.item_vectors(codes.unsqueeze(0))[0]
        age = time.to(torch.int64) - launch.to(torch.int64)
        return users @ vector + self.age_table()[torch.bucketize(age, self.age_edges, right=True)]

    def forward(
        self, history: torch.Tensor, region: torch.Tensor, time: torch.Tensor
    ) -> torch.Tensor:
        items = self.item_vectors()
        return self.logits(items, self.user_vectors(items, history, region), time)


def history_vectors(
    items: torch.Tensor, history: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows of ``items`` a history names (right-aligned, -1 padded), zeros for the
    padding, and which positions are real."""
    padded = torch.cat([items, items.new_zeros(1, items.shape[1])])
    return padded[torch.where(history >= 0, history, items.shape[0])], history >= 0


class _StepRows(torch.autograd.Function):
    """A (B, width) matrix whose row b steps by ``steps[k]`` at column ``starts[b, k]``.

    The forward is one scatter of the steps and one cumulative sum per row. The backward
    needs the gradient summed from each start to the row's end: sums over blocks of columns
    plus the few columns of each start's own block, instead of a cumulative sum of every row.
    """

    BLOCK = 32  # measured fastest for a 3,000-item catalogue

    @staticmethod
    def forward(ctx, steps: torch.Tensor, starts: torch.Tensor, width: int) -> torch.Tensor:
        rows, inside = _step_rows(steps, starts, width)
        ctx.save_for_backward(starts, inside)
        return rows

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        starts, inside = ctx.saved_tensors
        return _step_gradient(grad, starts, inside), None, None


def _step_rows(
    steps: torch.Tensor, starts: torch.Tensor, width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The step matrix (one scatter, one in-place cumulative sum per row) and which starts fall
    inside the row (a run starting at the end is empty)."""
    inside = starts < width
    rows = steps.new_zeros(len(starts), width)
    rows.scatter_add_(1, starts.clamp(max=width - 1), steps.expand(len(starts), -1) * inside)
    return rows.cumsum_(1), inside


def _step_gradient(grad: torch.Tensor, starts: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
    """The steps' gradient: ``grad`` summed from each start to its row's end (empty runs' sums
    dropped)."""
    ends_inside = starts.clamp(max=grad.shape[1] - 1)
    return (_suffix_sums(grad, ends_inside, _StepRows.BLOCK) * inside).sum(0)


class _CatalogueCrossEntropy(torch.autograd.Function):
    """Cross-entropy of ``users @ items.T + bias + age steps`` at ``target`` columns, summed
    with a weight per row (1/B: the mean), in
    one (B, width) buffer: the age steps, the scores added onto them by the matrix product,
    their log-softmax and, in the backward, the softmax minus the targets, all in place
    (torch's path wrote five such matrices and two zero ones).

    The bias rides in the product as one more column of the items against a column of ones
    of the users, and its gradient comes out of the backward's product the same way: a
    separate bias pass over the buffer cost a tenth of a 1,024-row step.
    """

    @staticmethod
    def forward(ctx, users, items, bias, steps, starts, target, weights):
        log_p, users_1, items_bias, inside = catalogue_log_softmax(users, items, bias, steps,
                                                                   starts)  # fmt: skip
        ctx.save_for_backward(users_1, items_bias, log_p, starts, inside, target, weights)
        return -(log_p.gather(1, target.unsqueeze(1)).squeeze(1) * weights).sum()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        users_1, items_bias, log_p, starts, inside, target, weights = ctx.saved_tensors
        g = softmax_minus_targets_(log_p, target)  # backward runs once: the buffer is free
        g.mul_((grad * weights).unsqueeze(1))
        grad_users, grad_items = g @ items_bias, g.T @ users_1
        return (grad_users[:, :-1], grad_items[:, :-1], grad_items[:, -1],
                _step_gradient(g, starts, inside), None, None, None)  # fmt: skip


def catalogue_log_softmax(users, items, bias, steps, starts):
    """The log-softmax (B, width) of ``users @ items.T + bias + age steps`` in one buffer, with
    the users and items extended by the bias column and which run starts fall inside a row."""
    logits, inside = _step_rows(steps, starts, len(items))
    users_1 = torch.cat([users, users.new_ones(len(users), 1)], dim=1)
    items_bias = torch.cat([items, bias.unsqueeze(1)], dim=1)
    logits.addmm_(users_1, items_bias.T)
    return torch.log_softmax(logits, 1, out=logits), users_1, items_bias, inside


def softmax_minus_targets_(log_p: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Each row's gradient of its cross-entropy by its scores, in ``log_p``'s buffer."""
    g = log_p.exp_()
    g[torch.arange(len(g)), target] -= 1.0
    return g


def _suffix_sums(values: torch.Tensor, starts: torch.Tensor, block: int) -> torch.Tensor:
    """``out[b, k] = values[b, starts[b, k]:].sum()`` (each start a column of the row) without
    a cumulative sum over every row."""
    rows, width = values.shape
    full = width // block
    per_block = values[:, : full * block].unflatten(1, (full, block)).sum(-1)  # a view, no copy
    ragged = values[:, full * block :].sum(1, keepdim=True)
    # the blocks after each start's block, then the start's own block from the start on
    after = torch.cat([per_block, ragged], dim=1).flip(1).cumsum(1).flip(1)
    after = torch.cat([after, after.new_zeros(rows, 1)], dim=1)  # after[b, i]: blocks i.. summed
    first = starts // block
    columns = first.unsqueeze(-1) * block + torch.arange(block, device=values.device)
    keep = (columns >= starts.unsqueeze(-1)) & (columns < width)
    window = values.gather(1, columns.clamp(max=width - 1).view(rows, -1)).view(keep.shape)
    return after.gather(1, first + 1) + (window * keep).sum(-1)


def build(config: ModelConfig, features: ItemFeatures, seed: int = 0) -> Recommender:
    """A freshly initialised model; the seed makes the initial weights the same on every host."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Recommender(config, features)


def state_to_numpy(model: nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def load_numpy_state(model: nn.Module, state: dict[str, np.ndarray]) -> None:
    """Load weights given as numpy arrays; shapes must match exactly (a clear error otherwise)."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    if missing or extra:
        raise ValueError(f"weights do not fit the model: missing {missing}, unexpected {extra}")
    for name, tensor in own.items():
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise ValueError(
                f"weights do not fit the model: {name} has shape {tuple(state[name].shape)}, "
                f"expected {tuple(tensor.shape)}"
            )
    # decoded messages are read-only views of their bytes: torch gets its own copy
    model.load_state_dict({k: torch.tensor(np.asarray(v)) for k, v in state.items()})
