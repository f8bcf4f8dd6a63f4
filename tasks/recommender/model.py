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

from tasks.recommender.features import ItemFeatures

DAY = 86_400
AGE_EDGES_DAYS = (7.0, 30.0, 90.0, 180.0)
NOT_ON_SALE = -1e9  # finite, so a masked logit never turns a loss into NaN


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
        self.register_buffer(
            "launch_days", _days(torch.as_tensor(features.launch_time)), persistent=False
        )
        edges = torch.tensor((0.0, *AGE_EDGES_DAYS), dtype=torch.float32)
        self.register_buffer("age_edges", edges, persistent=False)

    def item_vectors(self, codes: torch.Tensor | None = None) -> torch.Tensor:
        """Catalogue item vectors (n_items, d); with ``codes``, attribute-only vectors for those."""
        if codes is not None:
            return sum(emb(codes[:, j]) for j, emb in enumerate(self.attributes))
        attrs = sum(emb(self.codes[:, j]) for j, emb in enumerate(self.attributes))
        ids = self.item_id.weight
        if self.training and self.config.id_dropout > 0:
            keep = torch.rand(ids.shape[0], 1, device=ids.device) >= self.config.id_dropout
            ids = ids * keep
        return attrs + ids

    def user_vectors(
        self, items: torch.Tensor, history: torch.Tensor, region: torch.Tensor
    ) -> torch.Tensor:
        """Users from their recent items (right-aligned, -1 padded) and region: (B, d)."""
        padded = torch.cat([items, items.new_zeros(1, items.shape[1])])
        hist = torch.where(history >= 0, history, items.shape[0])
        valid = history >= 0
        h = padded[hist] + self.position[-history.shape[1] :]
        score = self.attention(torch.tanh(h)).squeeze(-1).masked_fill(~valid, -1e4)
        weights = torch.softmax(score, dim=1) * valid.any(dim=1, keepdim=True)
        pooled = (weights.unsqueeze(-1) * h).sum(dim=1)
        last = padded[hist[:, -1]]
        return self.user_mlp(torch.cat([last, pooled, self.region(region)], dim=1))

    def logits(
        self,
        items: torch.Tensor,
        users: torch.Tensor,
        time: torch.Tensor,
        candidates: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Scores (B, n) of the catalogue (or of ``candidates`` (B, c)) at each example's time."""
        if candidates is None:
            scores = users @ items.T + self.item_bias.weight.T
            launch = self.launch_days.unsqueeze(0)
        else:
            scores = (users.unsqueeze(1) * items[candidates]).sum(-1)
            scores = scores + self.item_bias.weight[candidates].squeeze(-1)
            launch = self.launch_days[candidates]
        age = _days(time).unsqueeze(1) - launch
        # bucket 0 is "not on sale yet": a fixed, finite penalty; the others are learned
        bucket = torch.bucketize(age, self.age_edges, right=True)
        table = torch.cat([self.age_bias.new_full((1,), NOT_ON_SALE), self.age_bias])
        return scores + _BucketBias.apply(table, bucket)

    def new_item_logits(
        self, users: torch.Tensor, codes: torch.Tensor, time: torch.Tensor, launch: torch.Tensor
    ) -> torch.Tensor:
        """Scores (B,) of an item outside the catalogue, from its attribute codes alone (the
        way a cold-start item is scored: no id vector, no learned bias), launched at ``launch``.
        """
        vector = self.item_vectors(codes.unsqueeze(0))[0]
        age = _days(time) - _days(launch)
        bucket = torch.bucketize(age, self.age_edges, right=True)
        table = torch.cat([self.age_bias.new_full((1,), NOT_ON_SALE), self.age_bias])
        return users @ vector + table[bucket]

    def forward(
        self, history: torch.Tensor, region: torch.Tensor, time: torch.Tensor
    ) -> torch.Tensor:
        items = self.item_vectors()
        return self.logits(items, self.user_vectors(items, history, region), time)


EPOCH = 946_684_800  # 2000-01-01: days since then fit float32 to well under a minute


def _days(unix_seconds: torch.Tensor) -> torch.Tensor:
    return ((unix_seconds.to(torch.int64) - EPOCH).to(torch.float64) / DAY).to(torch.float32)


class _BucketBias(torch.autograd.Function):
    """``table[bucket]`` whose backward is one bincount.

    The plain gather's backward scatters a (B, n_items) index into a six-entry table and
    dominated training time; a weighted bincount does the same sum in one pass.
    """

    @staticmethod
    def forward(ctx, table: torch.Tensor, bucket: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(bucket)
        ctx.size = table.shape[0]
        return table[bucket]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (bucket,) = ctx.saved_tensors
        sums = torch.bincount(bucket.reshape(-1), weights=grad.reshape(-1), minlength=ctx.size)
        return sums.to(grad.dtype), None


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
