"""The on-disk data set: one public catalogue, one folder per region.

Layout (``fedq-data/1``)::

    DIR/meta.json              name, source, regions, cutoff, seed
    DIR/catalogue.csv          item_id,category,metal,gem,colour,gender,price,launch_time,source_id
    DIR/<region>/interactions.csv   user_id,item_id,timestamp

A regional host needs only ``meta.json``, ``catalogue.csv`` and its own region's folder: the
loaders never open another region's folder, which is what keeps raw behaviour data in place.
Timestamps are Unix seconds (UTC). Item ids are dense indices into the catalogue.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from shared.errors import FedqError

FORMAT = "fedq-data/1"
ATTRIBUTES = ("category", "metal", "gem", "colour", "gender")
CATALOGUE_FIELDS = ("item_id", *ATTRIBUTES, "price", "launch_time", "source_id")
INTERACTION_FIELDS = ("user_id", "item_id", "timestamp")
UNKNOWN = "unknown"


class DataError(FedqError):
    """A data set on disk is missing, malformed or inconsistent; the message names the file."""


@dataclass(frozen=True)
class Meta:
    name: str
    source: str
    regions: tuple[str, ...]
    cutoff: int
    seed: int | None = None
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "name": self.name,
            "source": self.source,
            "regions": list(self.regions),
            "cutoff": self.cutoff,
            "seed": self.seed,
            **({"extra": self.extra} if self.extra else {}),
        }


@dataclass(frozen=True)
class Catalogue:
    """Items with their public attributes, as strings; features.py turns them into codes."""

    attributes: dict[str, np.ndarray]  # name -> array of str, one per item
    price: np.ndarray  # float64, shop currency
    launch_time: np.ndarray  # int64, Unix seconds the item went on sale
    source_id: np.ndarray  # str, the id in the source data

    def __len__(self) -> int:
        return len(self.price)

    def describe(self, item: int) -> dict:
        return {
            "item_id": int(item),
            **{name: str(values[item]) for name, values in self.attributes.items()},
            "price": float(self.price[item]),
            "launch_time": int(self.launch_time[item]),
        }


@dataclass(frozen=True)
class Interactions:
    """One region's events; rows in no particular order."""

    user_id: np.ndarray  # int64
    item_id: np.ndarray  # int64
    timestamp: np.ndarray  # int64

    def __len__(self) -> int:
        return len(self.user_id)

    @staticmethod
    def concat(parts: list[Interactions]) -> Interactions:
        return Interactions(
            np.concatenate([p.user_id for p in parts]),
            np.concatenate([p.item_id for p in parts]),
            np.concatenate([p.timestamp for p in parts]),
        )


def region_dir(root: Path, region: str) -> Path:
    return Path(root) / region


def write_meta(root: Path, meta: Meta) -> None:
    Path(root).mkdir(parents=True, exist_ok=True)
    (Path(root) / "meta.json").write_text(json.dumps(meta.to_json(), indent=2) + "\n")


def read_meta(root: Path) -> Meta:
    path = Path(root) / "meta.json"
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: not found (is this a fedq data directory?)") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if raw.get("format") != FORMAT:
        raise DataError(f"{path}: format {raw.get('format')!r}, expected {FORMAT!r}")
    try:
        return Meta(
            name=str(raw["name"]),
            source=str(raw["source"]),
            regions=tuple(str(r) for r in raw["regions"]),
            cutoff=int(raw["cutoff"]),
            seed=raw.get("seed"),
            extra=dict(raw.get("extra", {})),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{path}: missing or bad field ({exc})") from None


def write_catalogue(root: Path, catalogue: Catalogue) -> None:
    path = Path(root) / "catalogue.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(CATALOGUE_FIELDS)
        columns = [catalogue.attributes[a] for a in ATTRIBUTES]
        for i in range(len(catalogue)):
            out.writerow(
                [
                    i,
                    *(c[i] for c in columns),
                    f"{catalogue.price[i]:.2f}",
                    int(catalogue.launch_time[i]),
                    catalogue.source_id[i],
                ]
            )


def read_catalogue(root: Path) -> Catalogue:
    path = Path(root) / "catalogue.csv"
    rows = _read_csv(path, CATALOGUE_FIELDS)
    for expected, row in enumerate(rows):
        if int(row[0]) != expected:
            raise DataError(
                f"{path}: item_id {row[0]} on data row {expected + 1}, expected {expected}"
            )
    attributes = {
        name: np.array([r[1 + k] or UNKNOWN for r in rows], dtype=object)
        for k, name in enumerate(ATTRIBUTES)
    }
    try:
        price = np.array([float(r[6]) for r in rows], dtype=np.float64)
        launch = np.array([int(r[7]) for r in rows], dtype=np.int64)
    except ValueError as exc:
        raise DataError(f"{path}: bad number ({exc})") from None
    return Catalogue(attributes, price, launch, np.array([r[8] for r in rows], dtype=object))


def write_interactions(root: Path, region: str, data: Interactions) -> None:
    folder = region_dir(root, region)
    folder.mkdir(parents=True, exist_ok=True)
    order = np.lexsort((data.item_id, data.timestamp, data.user_id))
    table = np.stack([data.user_id[order], data.item_id[order], data.timestamp[order]], axis=1)
    with (folder / "interactions.csv").open("w", newline="") as fh:
        fh.write(",".join(INTERACTION_FIELDS) + "\n")
        np.savetxt(fh, table, fmt="%d", delimiter=",")


def read_interactions(root: Path, region: str, n_items: int | None = None) -> Interactions:
    path = region_dir(root, region) / "interactions.csv"
    rows = _read_csv(path, INTERACTION_FIELDS)
    try:
        table = np.array(rows, dtype=np.int64).reshape(-1, 3)
    except ValueError as exc:
        raise DataError(f"{path}: non-integer field ({exc})") from None
    data = Interactions(table[:, 0].copy(), table[:, 1].copy(), table[:, 2].copy())
    if (
        n_items is not None
        and len(data)
        and (data.item_id.min() < 0 or data.item_id.max() >= n_items)
    ):
        raise DataError(f"{path}: item_id outside the catalogue's 0..{n_items - 1}")
    return data


def _read_csv(path: Path, fields: tuple[str, ...]) -> list[list[str]]:
    try:
        with path.open(newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None or tuple(header) != fields:
                raise DataError(f"{path}: header {header}, expected {list(fields)}")
            rows = list(reader)
    except FileNotFoundError:
        raise DataError(f"{path}: not found") from None
    for n, row in enumerate(rows, start=2):
        if len(row) != len(fields):
            raise DataError(f"{path}:{n}: {len(row)} fields, expected {len(fields)}")
    return rows
