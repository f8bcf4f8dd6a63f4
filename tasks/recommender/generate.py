"""A generative model of cross-border jewelry commerce, deterministic for a seed.

The model, in the order it draws:

1. **Catalogue.** Each item draws a category, a metal, a gem, a colour and a target gender from
   fixed marginals, a price from a log-normal whose mean depends on metal, gem and category, a
   hidden *style* vector (unit, 8-d; partly set by category and metal, partly the item's own),
   a global appeal (log-normal popularity skew) and a launch time: most items are on sale from
   the start, some launch during the year, and a few only after the training cut-off (the
   cold-start items).
2. **Regions.** Six regions of very different sizes, each with a taste: log-weight boosts on
   attribute values (jade and 24k gold in China, diamonds and rings in the US, minimalist silver
   in the EU, pearls in Japan, heavy 21-22k gold in the Middle East and India) and a price
   preference.
3. **Users.** A user belongs to one region; the user's taste is the regional taste plus a personal
   Gaussian deviation on every attribute value and on price. The number of events is 3 plus a
   negative binomial draw. Event times are spread over the user's active span before the cut-off;
   the last two events fall after it (the evaluation period).
4. **Events.** The first event, and later ones with probability ``1 - p_sequential``, draw an item
   from the user's taste (taste + appeal + novelty). Otherwise the next item follows the last one:
   a neighbour in style space (complements and variations of what was just bought), still weighed
   by taste. Only items on sale at the event time can be drawn; items launched in the last 30 days
   get a novelty boost.

Structure a model can learn: regional tastes (from the region and the history), personal taste
(from the history), item-to-item transitions shared by all regions (learned best from pooled data:
the reason to federate), novelty (from launch times), and attributes (for cold-start items).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasks.recommender.dataset import (
    Catalogue,
    Interactions,
    Meta,
    write_catalogue,
    write_interactions,
)
from tasks.recommender.dataset import write_meta as _write_meta

DAY = 86_400
START = 1_704_067_200  # 2024-01-01T00:00:00Z
SPAN_DAYS = 365
CUTOFF_DAY = 330

CATEGORIES = ("ring", "earring", "pendant", "necklace", "bracelet", "brooch", "stud", "souvenir")
CATEGORY_P = (0.22, 0.2, 0.15, 0.12, 0.12, 0.04, 0.1, 0.05)
METALS = ("gold24k", "gold22k", "gold18k", "gold14k", "silver", "platinum")
METAL_P = (0.12, 0.14, 0.2, 0.14, 0.3, 0.1)
GEMS = (
    "none", "diamond", "jade", "pearl", "ruby", "sapphire", "emerald",
    "amethyst", "topaz", "garnet", "fianit", "turquoise", "onyx",
)  # fmt: skip
GEM_P = (0.25, 0.14, 0.07, 0.08, 0.06, 0.06, 0.06, 0.05, 0.05, 0.04, 0.08, 0.03, 0.03)
COLOURS = ("yellow", "white", "red", "green", "black")
GENDERS = ("f", "m", "unisex")
GENDER_P = (0.7, 0.1, 0.2)

METAL_PRICE = {"gold24k": 1.2, "gold22k": 1.0, "gold18k": 0.7, "gold14k": 0.4, "silver": -0.8,
               "platinum": 1.1}  # fmt: skip
GEM_PRICE = {"none": -0.3, "diamond": 1.2, "jade": 0.4, "pearl": 0.2, "ruby": 0.8, "sapphire": 0.8,
             "emerald": 0.8, "fianit": -0.4}  # fmt: skip
CATEGORY_PRICE = {"necklace": 0.5, "bracelet": 0.3, "ring": 0.2, "stud": -0.4, "souvenir": -0.6}
METAL_COLOUR = {"gold24k": "yellow", "gold22k": "yellow", "gold18k": "yellow", "gold14k": "white",
                "silver": "white", "platinum": "white"}  # fmt: skip
GEM_COLOUR = {"jade": "green", "emerald": "green", "ruby": "red", "garnet": "red", "onyx": "black"}


@dataclass(frozen=True)
class RegionProfile:
    code: str
    name: str
    share: float
    taste: dict[str, float]  # "attribute=value" -> log-weight boost
    price_pref: float  # + likes expensive, - likes cheap (per unit of log price, standardised)


REGIONS: tuple[RegionProfile, ...] = (
    RegionProfile("cn", "China", 0.300, {"gem=jade": 2.2, "metal=gold24k": 2.0, "colour=red": 0.6,
                  "category=pendant": 0.8, "category=bracelet": 0.8, "colour=green": 0.8}, 0.2),
    RegionProfile("us", "United States", 0.245, {"gem=diamond": 2.0, "category=ring": 1.2,
                  "metal=platinum": 1.0, "metal=gold14k": 1.0, "colour=white": 0.6}, 0.3),
    RegionProfile("eu", "European Union", 0.200, {"metal=silver": 2.0, "gem=none": 1.4,
                  "category=stud": 0.8, "category=earring": 0.6, "gem=fianit": 0.5}, -0.6),
    RegionProfile("in", "India", 0.140, {"metal=gold22k": 2.2, "category=earring": 0.8,
                  "category=necklace": 0.8, "gem=ruby": 0.8, "gem=emerald": 0.6,
                  "colour=red": 0.5}, 0.2),
    RegionProfile("jp", "Japan", 0.088, {"gem=pearl": 2.4, "metal=silver": 0.8,
                  "metal=platinum": 0.8, "category=necklace": 0.8, "gem=none": 0.4}, -0.2),
    RegionProfile("me", "Middle East", 0.027, {"metal=gold22k": 1.8, "metal=gold24k": 1.2,
                  "category=necklace": 1.0, "category=bracelet": 1.0, "gem=emerald": 0.8,
                  "gem=ruby": 0.6}, 0.8),
)  # fmt: skip


@dataclass(frozen=True)
class Scale:
    users: int
    items: int
    mean_events: float


SCALES = {
    "small": Scale(users=2_400, items=600, mean_events=12.0),
    "default": Scale(users=30_000, items=3_000, mean_events=13.3),
    "large": Scale(users=120_000, items=8_000, mean_events=14.0),
}


@dataclass(frozen=True)
class Knobs:
    """Strengths of the generative model's effects (the defaults are what ``generate`` uses)."""

    personal_sd: float = 0.7
    appeal_sd: float = 1.0
    style_dim: int = 8
    style_own: float = 0.8  # weight of the item's own style against its category/metal style
    style_sharpness: float = 9.0
    p_sequential: float = 0.6
    neighbours: int = 60
    pool: int = 200
    novelty_boost: float = 1.5
    novelty_days: int = 30
    share_launched_later: float = 0.22
    share_cold: float = 0.05


@dataclass(frozen=True)
class Generated:
    meta: Meta
    catalogue: Catalogue
    regions: dict[str, Interactions]


def generate(
    seed: int = 0,
    scale: str = "default",
    knobs: Knobs | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Generated:
    """Draw a whole data set in memory; ``write`` puts it on disk."""
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; choose one of {', '.join(SCALES)}")
    k = knobs or Knobs()
    sc = SCALES[scale]
    rng = np.random.default_rng(seed)
    cutoff = START + CUTOFF_DAY * DAY
    end = START + SPAN_DAYS * DAY

    items = _draw_catalogue(rng, sc.items, k, cutoff, end)
    onehot, value_index = _attribute_onehot(items.catalogue)

    shares = np.array([r.share for r in REGIONS])
    n_users = np.maximum(1, np.round(shares / shares.sum() * sc.users)).astype(int)
    user_region = np.repeat(np.arange(len(REGIONS)), n_users)
    total_users = len(user_region)

    taste = np.zeros((len(REGIONS), onehot.shape[1]))
    for r, profile in enumerate(REGIONS):
        for key, boost in profile.taste.items():
            taste[r, value_index[key]] = boost
    user_taste = taste[user_region] + rng.normal(0, k.personal_sd, (total_users, onehot.shape[1]))
    price_pref = np.array([p.price_pref for p in REGIONS])[user_region]
    price_pref = price_pref + rng.normal(0, 0.4, total_users)

    extra = sc.mean_events - 3
    counts = 3 + rng.negative_binomial(2, 2 / (2 + extra), total_users)
    counts = np.minimum(counts, 120)
    times = _draw_times(rng, counts, cutoff, end)

    pools = _user_pools(rng, user_taste, onehot, items, price_pref, k.pool)
    neighbours, neighbour_affinity = _style_neighbours(items.style, k.neighbours)
    item_cols = np.stack(_item_columns(onehot), axis=1)

    chosen = _draw_events(rng, k, items, item_cols, user_taste, price_pref, pools, neighbours,
                          neighbour_affinity, counts, times, progress)  # fmt: skip

    user_ids = np.arange(total_users, dtype=np.int64) + 1
    offsets = np.concatenate([[0], np.cumsum(counts)])
    regions: dict[str, Interactions] = {}
    for r, profile in enumerate(REGIONS):
        users = np.flatnonzero(user_region == r)
        idx = np.concatenate([np.arange(offsets[u], offsets[u + 1]) for u in users])
        regions[profile.code] = Interactions(
            np.repeat(user_ids[users], counts[users]), chosen[idx].astype(np.int64), times[idx]
        )
    meta = Meta(
        name=f"jewelry-{scale}-seed{seed}",
        source="generated",
        regions=tuple(r.code for r in REGIONS),
        cutoff=cutoff,
        seed=seed,
        extra={"scale": scale, "region_names": {r.code: r.name for r in REGIONS}},
    )
    return Generated(meta, items.catalogue, regions)


def write(generated: Generated, out: Path) -> None:
    out = Path(out)
    _write_meta(out, generated.meta)
    write_catalogue(out, generated.catalogue)
    for code, data in generated.regions.items():
        write_interactions(out, code, data)


@dataclass(frozen=True)
class _Items:
    catalogue: Catalogue
    style: np.ndarray
    appeal: np.ndarray
    log_price_z: np.ndarray


def _draw_catalogue(rng: np.random.Generator, n: int, k: Knobs, cutoff: int, end: int) -> _Items:
    category = rng.choice(len(CATEGORIES), n, p=CATEGORY_P)
    metal = rng.choice(len(METALS), n, p=METAL_P)
    gem = rng.choice(len(GEMS), n, p=GEM_P)
    gender = rng.choice(len(GENDERS), n, p=GENDER_P)
    cat_s = np.array(CATEGORIES, dtype=object)[category]
    metal_s = np.array(METALS, dtype=object)[metal]
    gem_s = np.array(GEMS, dtype=object)[gem]
    colour = np.array(
        [GEM_COLOUR.get(g, METAL_COLOUR[m]) for g, m in zip(gem_s, metal_s, strict=True)],
        dtype=object,
    )
    recolour = rng.random(n) < 0.15  # rose gold, oxidised silver, enamel: colour is not just metal
    colour[recolour] = np.array(COLOURS, dtype=object)[
        rng.integers(0, len(COLOURS), recolour.sum())
    ]

    log_price = (
        5.0
        + np.array([METAL_PRICE[m] for m in metal_s])
        + np.array([GEM_PRICE.get(g, 0.3) for g in gem_s])
        + np.array([CATEGORY_PRICE.get(c, 0.0) for c in cat_s])
        + rng.normal(0, 0.45, n)
    )
    price = np.round(np.exp(log_price), 2)

    base_style = rng.normal(0, 1, (len(CATEGORIES), k.style_dim))
    metal_style = rng.normal(0, 1, (len(METALS), k.style_dim))
    own = rng.normal(0, 1, (n, k.style_dim))
    style = base_style[category] + 0.7 * metal_style[metal] + k.style_own * own * 1.6
    style /= np.linalg.norm(style, axis=1, keepdims=True)

    launch = np.full(n, START - 30 * DAY, dtype=np.int64)
    u = rng.random(n)
    later = u < k.share_launched_later
    launch[later] = START + rng.integers(0, cutoff - START, later.sum())
    cold = u > 1 - k.share_cold
    launch[cold] = cutoff + rng.integers(0, (end - cutoff) // 2, cold.sum())

    catalogue = Catalogue(
        attributes={
            "category": cat_s,
            "metal": metal_s,
            "gem": gem_s,
            "colour": colour,
            "gender": np.array(GENDERS, dtype=object)[gender],
        },
        price=price,
        launch_time=launch,
        source_id=np.array([f"gen-{i:06d}" for i in range(n)], dtype=object),
    )
    appeal = rng.normal(0, k.appeal_sd, n)
    log_price_z = (log_price - log_price.mean()) / log_price.std()
    return _Items(catalogue, style, appeal, log_price_z)


def _attribute_onehot(catalogue: Catalogue) -> tuple[np.ndarray, dict[str, int]]:
    """Items x attribute-values indicator, and the column of each "attribute=value"."""
    value_index: dict[str, int] = {}
    for name, vocab in (("category", CATEGORIES), ("metal", METALS), ("gem", GEMS),
                        ("colour", COLOURS), ("gender", GENDERS)):  # fmt: skip
        for v in vocab:
            value_index[f"{name}={v}"] = len(value_index)
    onehot = np.zeros((len(catalogue), len(value_index)))
    for name, values in catalogue.attributes.items():
        cols = np.array([value_index[f"{name}={v}"] for v in values])
        onehot[np.arange(len(catalogue)), cols] = 1.0
    return onehot, value_index


def _draw_times(rng: np.random.Generator, counts: np.ndarray, cutoff: int, end: int) -> np.ndarray:
    """Sorted event times per user, flattened; the last two of each user fall after the cut-off."""
    n_users = len(counts)
    start = START + rng.integers(0, int((cutoff - START) * 0.7), n_users)
    out = np.empty(int(counts.sum()), dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    n_train = counts - 2
    span = cutoff - start
    u_train = rng.random(int(n_train.sum()))
    u_eval = np.sort(rng.random((n_users, 2)), axis=1)
    train_owner = np.repeat(np.arange(n_users), n_train)
    train_times = start[train_owner] + (u_train * span[train_owner]).astype(np.int64)
    # sort within user: owner major, time minor
    order = np.lexsort((train_times, train_owner))
    train_times = train_times[order]
    train_pos = np.concatenate(
        [np.arange(offsets[i], offsets[i] + n_train[i]) for i in range(n_users)]
    )
    out[train_pos] = train_times
    eval_times = cutoff + (u_eval * (end - cutoff)).astype(np.int64)
    out[offsets[1:] - 2] = eval_times[:, 0]
    out[offsets[1:] - 1] = eval_times[:, 1]
    return out


def _item_columns(onehot: np.ndarray) -> list[np.ndarray]:
    """For each attribute, the one-hot column each item sets (items x attributes, as columns)."""
    rows, cols = np.nonzero(onehot)
    per_item = cols.reshape(onehot.shape[0], -1)  # np.nonzero is row-major: one row per item
    return [per_item[:, a] for a in range(per_item.shape[1])]


def _static_logits(items: _Items, price_pref: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """Appeal plus the user's price preference, for candidates ``cand`` (users x c)."""
    return items.appeal[cand] + price_pref[:, None] * items.log_price_z[cand]


def _user_pools(
    rng: np.random.Generator,
    taste: np.ndarray,
    onehot: np.ndarray,
    items: _Items,
    price_pref: np.ndarray,
    size: int,
) -> np.ndarray:
    """Each user's candidate pool for taste-driven draws: Gumbel top-k of the full taste logits."""
    n_users, n_items = len(taste), len(onehot)
    size = min(size, n_items)
    every = np.arange(n_items)[None, :]
    pools = np.empty((n_users, size), dtype=np.int64)
    for lo in range(0, n_users, 2048):
        hi = min(n_users, lo + 2048)
        logits = taste[lo:hi] @ onehot.T + _static_logits(items, price_pref[lo:hi], every)
        logits += rng.gumbel(size=logits.shape)
        pools[lo:hi] = np.argpartition(-logits, size - 1, axis=1)[:, :size]
    return pools


def _style_neighbours(style: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Each item's ``m`` nearest items in style space, and their cosine similarity."""
    sim = style @ style.T
    np.fill_diagonal(sim, -np.inf)
    m = min(m, len(style) - 1)
    idx = np.argpartition(-sim, m - 1, axis=1)[:, :m]
    return idx, np.take_along_axis(sim, idx, axis=1)


def _draw_events(
    rng: np.random.Generator,
    k: Knobs,
    items: _Items,
    item_cols: np.ndarray,
    taste: np.ndarray,
    price_pref: np.ndarray,
    pools: np.ndarray,
    neighbours: np.ndarray,
    neighbour_affinity: np.ndarray,
    counts: np.ndarray,
    times: np.ndarray,
    progress: Callable[[int, int], None] | None,
) -> np.ndarray:
    """Draw every user's items step by step, all users of a step at once (Gumbel-max)."""
    launch = items.catalogue.launch_time
    offsets = np.concatenate([[0], np.cumsum(counts)])
    chosen = np.empty(int(counts.sum()), dtype=np.int64)
    last = np.full(len(counts), -1, dtype=np.int64)
    m = neighbours.shape[1]
    n_steps = int(counts.max())
    for step in range(n_steps):
        users = np.flatnonzero(counts > step)
        t = times[offsets[users] + step]
        seq = (last[users] >= 0) & (rng.random(len(users)) < k.p_sequential)
        cand = pools[users].copy()
        cand[seq, :m] = neighbours[last[users[seq]]]
        logits = _static_logits(items, price_pref[users], cand)
        user_taste = taste[users]
        for a in range(item_cols.shape[1]):
            logits += np.take_along_axis(user_taste, item_cols[cand, a], axis=1)
        logits[seq, :m] += k.style_sharpness * neighbour_affinity[last[users[seq]]]
        logits[seq, m:] = -np.inf  # sequential draws choose among the neighbours only
        age_days = (t[:, None] - launch[cand]) / DAY
        logits += np.where((age_days >= 0) & (age_days < k.novelty_days), k.novelty_boost, 0.0)
        logits[age_days < 0] = -np.inf
        logits[cand == last[users][:, None]] = -np.inf
        logits += rng.gumbel(size=logits.shape)
        pick = cand[np.arange(len(users)), np.argmax(logits, axis=1)]
        dead = ~np.isfinite(logits.max(axis=1))  # nothing on sale among the candidates
        for row in np.flatnonzero(dead):
            on_sale = np.flatnonzero(launch <= t[row])
            pick[row] = on_sale[np.argmax(items.appeal[on_sale])]
        chosen[offsets[users] + step] = pick
        last[users] = pick
        if progress is not None:
            progress(step + 1, n_steps)
    return chosen
