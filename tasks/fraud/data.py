"""The fraud task's data format and its one deterministic generator.

A data directory holds ``meta.json`` (public: regions, the category and channel vocabularies,
the time cut-offs of the split) and ``<region>/transactions.csv``, one row per card payment in
time order: ``time, amount, category, channel, hour, account_age_days, txn_24h, distance_km,
new_device, foreign, label`` (label 1: confirmed fraud). The split is by time, the same cut-offs
for every region: training before ``validation_from``, validation until ``test_from``, test
after it, so no model ever trains on a payment later than one it is scored on.

The generative model: payments draw a category, a channel, an amount, a local hour, the card's
account age, its payments in the last 24 hours, the distance from home, a new device (online
only) and a foreign merchant, with regional mixes. Fraud follows a logistic rule of patterns
shared by every region (a new device buying big online; a foreign merchant at night; a burst of
payments on a young account; a shop payment far from home) plus one pattern of each region's
own (card testing with tiny digital payments in China, night ATM withdrawals in the EU, ...),
with each region's intercept set so about 1% of its payments are fraud. Regions differ tenfold
in size: the smallest holds a few dozen training frauds, too few to learn the shared patterns.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasks.api import TaskError, read_meta_json

FORMAT = "fedq-fraud/1"
DAY = 86_400
START = 1_714_521_600  # 2024-05-01T00:00:00Z
SPAN_DAYS = 180
VALIDATION_FROM_DAY, TEST_FROM_DAY = 108, 135  # 60% / 15% / 25% of the span
CATEGORIES = ("grocery", "fuel", "restaurant", "fashion", "electronics", "digital", "travel",
              "jewelry", "luxury", "services")  # fmt: skip
CHANNELS = ("pos", "online", "atm")
FIELDS = ("time", "amount", "category", "channel", "hour", "account_age_days", "txn_24h",
          "distance_km", "new_device", "foreign", "label")  # fmt: skip
FRAUD_RATE = 0.01
SCALES = {"small": 0.1, "default": 1.0, "large": 4.0}


@dataclass(frozen=True)
class RegionProfile:
    code: str
    payments: int  # at scale "default"
    category_boost: dict[str, float]  # log-weight boosts of the category mix
    online: float  # share of online payments
    foreign: float  # share of payments at foreign merchants
    own_pattern: str  # the region's own fraud pattern (see ``_own``)


REGIONS: tuple[RegionProfile, ...] = (
    RegionProfile("cn", 90_000, {"digital": 1.0, "electronics": 0.5}, 0.50, 0.03,
                  "card_testing"),
    RegionProfile("us", 70_000, {"electronics": 0.6, "restaurant": 0.4}, 0.40, 0.03,
                  "evening_electronics"),
    RegionProfile("eu", 50_000, {"travel": 0.5, "fashion": 0.4}, 0.35, 0.10, "night_atm"),
    RegionProfile("in", 30_000, {"jewelry": 0.9, "grocery": 0.4}, 0.30, 0.04, "big_jewelry"),
    RegionProfile("jp", 15_000, {"travel": 0.6, "restaurant": 0.5}, 0.30, 0.05,
                  "new_device_travel"),
    RegionProfile("me", 8_000, {"luxury": 1.0, "jewelry": 0.6}, 0.35, 0.12, "foreign_luxury"),
)  # fmt: skip


@dataclass(frozen=True)
class Meta:
    name: str
    regions: tuple[str, ...]
    validation_from: int
    test_from: int
    seed: int | None = None

    def to_json(self) -> dict:
        return {"format": FORMAT, "name": self.name, "regions": list(self.regions),
                "categories": list(CATEGORIES), "channels": list(CHANNELS),
                "validation_from": self.validation_from, "test_from": self.test_from,
                "seed": self.seed}  # fmt: skip


@dataclass(frozen=True)
class Payments:
    """One region's payments as columns (codes for the category and the channel)."""

    time: np.ndarray  # int64
    amount: np.ndarray  # float64, USD
    category: np.ndarray  # int64 into CATEGORIES
    channel: np.ndarray  # int64 into CHANNELS
    hour: np.ndarray  # int64, local
    account_age_days: np.ndarray  # float64
    txn_24h: np.ndarray  # int64
    distance_km: np.ndarray  # float64
    new_device: np.ndarray  # bool
    foreign: np.ndarray  # bool
    label: np.ndarray  # int64 0/1

    def __len__(self) -> int:
        return len(self.label)

    def take(self, idx: np.ndarray) -> Payments:
        return Payments(**{k: getattr(self, k)[idx] for k in self.__dataclass_fields__})


def read_meta(root: Path) -> Meta:
    path = Path(root) / "meta.json"
    raw = read_meta_json(root, FORMAT, "fraud")
    if raw.get("categories") != list(CATEGORIES) or raw.get("channels") != list(CHANNELS):
        raise TaskError(f"{path}: categories or channels differ from this version of fedq's")
    try:
        regions = tuple(str(r) for r in raw["regions"])
        cuts = int(raw["validation_from"]), int(raw["test_from"])
        return Meta(str(raw["name"]), regions, *cuts, raw.get("seed"))
    except (KeyError, TypeError, ValueError) as exc:
        raise TaskError(f"{path}: missing or bad field ({exc})") from None


def read_payments(root: Path, region: str) -> Payments:
    """A region's payments; a bad row is an error naming its line."""
    path = Path(root) / region / "transactions.csv"
    cats = {c: i for i, c in enumerate(CATEGORIES)}
    chans = {c: i for i, c in enumerate(CHANNELS)}
    columns: list[list] = [[] for _ in FIELDS]
    try:
        with path.open(newline="") as f:
            reader = csv.reader(f)
            if tuple(next(reader, ())) != FIELDS:
                raise TaskError(f"{path}: header is not {','.join(FIELDS)}")
            for line, row in enumerate(reader, start=2):
                try:
                    values = (int(row[0]), float(row[1]), cats[row[2]], chans[row[3]],
                              int(row[4]), float(row[5]), int(row[6]), float(row[7]),
                              row[8] == "1", row[9] == "1", int(row[10]))  # fmt: skip
                except (ValueError, KeyError, IndexError):
                    raise TaskError(f"{path}:{line}: bad row {','.join(row)[:80]!r}") from None
                for column, value in zip(columns, values, strict=True):
                    column.append(value)
    except FileNotFoundError:
        raise TaskError(f"{path}: not found") from None
    kinds = (np.int64, np.float64, np.int64, np.int64, np.int64, np.float64, np.int64,
             np.float64, bool, bool, np.int64)  # fmt: skip
    arrays = [np.asarray(c, dtype=k) for c, k in zip(columns, kinds, strict=True)]
    payments = Payments(*arrays)
    finite = np.isfinite(payments.amount) & np.isfinite(payments.distance_km)
    if not finite.all() or ((payments.label != 0) & (payments.label != 1)).any():
        raise TaskError(f"{path}: non-finite amounts or distances, or labels other than 0/1")
    return payments


def write(root: Path, meta: Meta, regions: dict[str, Payments]) -> None:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / "meta.json").write_text(json.dumps(meta.to_json(), indent=2) + "\n")
    for code, p in regions.items():
        (root / code).mkdir(exist_ok=True)
        with (root / code / "transactions.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(FIELDS)
            for i in range(len(p)):
                writer.writerow((int(p.time[i]), f"{p.amount[i]:.2f}", CATEGORIES[p.category[i]],
                                 CHANNELS[p.channel[i]], int(p.hour[i]),
                                 f"{p.account_age_days[i]:.1f}", int(p.txn_24h[i]),
                                 f"{p.distance_km[i]:.1f}", int(p.new_device[i]),
                                 int(p.foreign[i]), int(p.label[i])))  # fmt: skip


def generate(seed: int = 0, scale: str = "default",
             progress: Callable[[int, int], None] | None = None
             ) -> tuple[Meta, dict[str, Payments]]:  # fmt: skip
    if scale not in SCALES:
        raise TaskError(f"unknown scale {scale!r}; choose one of {', '.join(SCALES)}")
    rng = np.random.default_rng(seed)
    regions = {}
    for i, profile in enumerate(REGIONS):
        regions[profile.code] = _region(
            rng, profile, max(200, int(profile.payments * SCALES[scale]))
        )
        if progress is not None:
            progress(i + 1, len(REGIONS))
    meta = Meta(f"fraud-{scale}-seed{seed}", tuple(regions), START + VALIDATION_FROM_DAY * DAY,
                START + TEST_FROM_DAY * DAY, seed)  # fmt: skip
    return meta, regions


BASE_CATEGORY = np.log([0.22, 0.12, 0.15, 0.12, 0.08, 0.07, 0.06, 0.04, 0.03, 0.11])
CATEGORY_AMOUNT = np.log([35, 45, 30, 80, 250, 15, 400, 300, 900, 60])  # median USD
HOUR_WEIGHT = np.array([0.6, 0.4, 0.3, 0.25, 0.25, 0.4, 1, 2, 3, 3.5, 4, 4.5, 5, 5, 4.5, 4.5,
                        4.5, 5, 5.5, 5.5, 5, 4, 2.5, 1.2])  # fmt: skip


def _region(rng: np.random.Generator, p: RegionProfile, n: int) -> Payments:
    time = np.sort(rng.integers(START, START + SPAN_DAYS * DAY, n))
    logits = BASE_CATEGORY + np.array([p.category_boost.get(c, 0.0) for c in CATEGORIES])
    category = rng.choice(len(CATEGORIES), n, p=np.exp(logits) / np.exp(logits).sum())
    u = rng.random(n)
    channel = np.where(u < p.online, 1, np.where(u < p.online + 0.07, 2, 0))
    amount = np.exp(CATEGORY_AMOUNT[category] + rng.normal(0, 0.9, n))
    amount = np.where(channel == 2, np.round(np.exp(rng.normal(np.log(120), 0.6, n)), -1), amount)
    hour = rng.choice(24, n, p=HOUR_WEIGHT / HOUR_WEIGHT.sum())
    account_age = 1 + rng.exponential(900, n)
    txn_24h = rng.poisson(1.5, n)
    distance = np.exp(rng.normal(np.log(8), 1.3, n))
    new_device = (channel == 1) & (rng.random(n) < 0.15)
    foreign = rng.random(n) < p.foreign
    night = hour <= 5
    patterns = (
        (new_device & (amount > 150)),
        (foreign & night),
        ((txn_24h >= 4) & (account_age < 180)),
        ((channel == 0) & (distance > 250)),
    )
    shared = 5.5 * np.sum(patterns, axis=0) + 0.2 * np.log(amount / 50)
    logit = shared + 5.5 * _own(p.own_pattern, category, channel, amount, hour, new_device,
                                foreign) + rng.normal(0, 0.5, n)  # fmt: skip
    intercept = _intercept(logit, FRAUD_RATE)
    label = (rng.random(n) < 1 / (1 + np.exp(-(logit + intercept)))).astype(np.int64)
    return Payments(
        time.astype(np.int64),
        np.round(amount, 2),
        category.astype(np.int64),
        channel.astype(np.int64),
        hour.astype(np.int64),
        np.round(account_age, 1),
        txn_24h.astype(np.int64),
        np.round(distance, 1),
        new_device,
        foreign,
        label,
    )


def _own(pattern: str, category, channel, amount, hour, new_device, foreign) -> np.ndarray:
    c = {name: category == i for i, name in enumerate(CATEGORIES)}
    rules = {
        "card_testing": c["digital"] & (amount < 4),
        "evening_electronics": c["electronics"] & (channel == 1) & (hour >= 19),
        "night_atm": (channel == 2) & (hour <= 4),
        "big_jewelry": c["jewelry"] & (amount > 900),
        "new_device_travel": c["travel"] & new_device,
        "foreign_luxury": c["luxury"] & foreign,
    }
    return rules[pattern].astype(np.float64)


def _intercept(logit: np.ndarray, rate: float) -> float:
    """The intercept at which the mean fraud probability is ``rate`` (bisection)."""
    lo, hi = -30.0, 10.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if np.mean(1 / (1 + np.exp(-(logit + mid)))) > rate:
            hi = mid
        else:
            lo = mid
    return (lo + hi) / 2
