"""Real data into the fedq format: the REES46 jewelry purchases CSV and a generic CSV.

Every row either becomes an interaction or is counted as bad with its line number and reason;
exact duplicates (same user, item and second) are merged and counted. Nothing is dropped without
a line in the report, and a bad row never stops the import.

REES46 "eCommerce purchase history from jewelry store": no header; a row has 13 fields
(event_time, order_id, product_id, quantity, category_id, category_code, brand_id, price, user_id,
gender, colour, metal, gem) or 11, where category_code and brand_id are absent: the price is
the 6th field and the user the 7th, then gender, colour, metal, gem (tests/test_importers.py has
a row as published). The file has no region, so a
user's region comes from a stable hash of the user id (blake2b, 8 bytes, modulo 10,000) placed
into the cumulative shares of ``regions`` (by default the six regions of the generated data,
with its shares). Users and items are renumbered densely; an item's attributes come from its
first row, its price is the median over its rows, its launch time is its first sale.

Generic: ``user_id,item_id,timestamp,region`` with a header (timestamp as Unix seconds or ISO
8601), and optionally an items CSV with ``item_id`` and any of category, metal, gem, colour,
gender, price. A user seen in several regions is kept whole in the region of their first event.

Cold start for imported data: items whose first sale is at or after the cut-off (default: the
time by which 90% of the events had happened).
"""

from __future__ import annotations

import csv
import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from shared.errors import FedqError
from tasks.recommender.dataset import (
    ATTRIBUTES,
    UNKNOWN,
    Catalogue,
    Interactions,
    Meta,
    write_catalogue,
    write_interactions,
    write_meta,
)

DEFAULT_SHARES = {"cn": 30.0, "us": 24.5, "eu": 20.0, "in": 14.0, "jp": 8.8, "me": 2.7}
REGION_CODE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
KEEP_BAD_LINES = 200
CUTOFF_QUANTILE = 0.9


class ImportFailed(FedqError):
    """The source cannot be imported at all (missing file, no usable row); names the reason."""


@dataclass
class ImportReport:
    source: str
    rows_read: int = 0
    rows_imported: int = 0
    bad_rows: int = 0
    duplicates_merged: int = 0
    users_moved: int = 0
    bad_examples: list[tuple[int, str]] = field(default_factory=list)
    regions: dict[str, int] = field(default_factory=dict)
    items: int = 0
    users: int = 0

    def bad(self, line: int, reason: str) -> None:
        self.bad_rows += 1
        if len(self.bad_examples) < KEEP_BAD_LINES:
            self.bad_examples.append((line, reason))

    def to_json(self) -> dict:
        return {
            "source": self.source,
            "rows_read": self.rows_read,
            "rows_imported": self.rows_imported,
            "bad_rows": self.bad_rows,
            "duplicates_merged": self.duplicates_merged,
            "users_moved_to_first_region": self.users_moved,
            "bad_examples": [{"line": n, "reason": r} for n, r in self.bad_examples],
            "regions": self.regions,
            "items": self.items,
            "users": self.users,
        }


@dataclass
class _Row:
    user: str
    item: str
    time: int
    region: str


@dataclass
class _Collected:
    rows: list[_Row] = field(default_factory=list)
    attrs: dict[str, dict[str, str]] = field(default_factory=dict)
    prices: dict[str, list[float]] = field(default_factory=dict)


def import_rees46(
    src: Path, out: Path, shares: dict[str, float] | None = None, cutoff: int | None = None
) -> ImportReport:
    shares = shares or DEFAULT_SHARES
    _check_regions(shares)
    report = ImportReport(source=f"rees46:{Path(src).name}")
    got = _Collected()
    for line, row in _csv_rows(src):
        report.rows_read += 1
        reason = _rees46_row(row, shares, got)
        if reason:
            report.bad(line, reason)
    _finish(got, out, report, list(shares), cutoff, name=f"rees46-{Path(src).stem}")
    return report


def import_generic(
    src: Path, out: Path, items: Path | None = None, cutoff: int | None = None
) -> ImportReport:
    report = ImportReport(source=f"generic:{Path(src).name}")
    got = _Collected()
    rows = _csv_rows(src)
    header = next(rows, None)
    expected = ["user_id", "item_id", "timestamp", "region"]
    if header is None or [h.strip() for h in header[1]] != expected:
        raise ImportFailed(f"{src}: header must be {','.join(expected)}")
    regions: list[str] = []
    for line, row in rows:
        report.rows_read += 1
        if len(row) != 4:
            report.bad(line, f"{len(row)} fields, expected 4")
            continue
        user, item, stamp, region = (x.strip() for x in row)
        when = _parse_time(stamp)
        if not user or not item:
            report.bad(line, "empty user_id or item_id")
        elif when is None:
            report.bad(line, f"bad timestamp {stamp!r}")
        elif not REGION_CODE.match(region):
            report.bad(line, f"bad region {region!r} (lowercase letters, digits, - and _)")
        else:
            got.rows.append(_Row(user, item, when, region))
            if region not in regions:
                regions.append(region)
    if items is not None:
        _read_items(items, got, report)
    _finish(got, out, report, sorted(regions), cutoff, name=f"generic-{Path(src).stem}")
    return report


def _rees46_row(row: list[str], shares: dict[str, float], got: _Collected) -> str | None:
    if len(row) not in (11, 13):
        return f"{len(row)} fields, expected 13 or 11"
    fields = [x.strip() for x in row]
    if len(fields) == 11:  # no category_code, no brand_id: put empty ones in their places
        fields = fields[:5] + ["", ""] + fields[5:]
    stamp, _order, product, quantity, _cat_id, cat_code, _brand, price, user = fields[:9]
    gender, colour, metal, gem = fields[9:13]
    when = _parse_time(stamp)
    if when is None:
        return f"bad event_time {stamp!r}"
    if not product or not user:
        return "empty product_id or user_id"
    try:
        if quantity and int(float(quantity)) < 1:
            return f"bad quantity {quantity!r}"
        price_value = float(price) if price else None
    except ValueError:
        return f"bad quantity or price ({quantity!r}, {price!r})"
    if price_value is not None and not (np.isfinite(price_value) and price_value >= 0):
        return f"bad price {price!r}"
    got.rows.append(_Row(user, product, when, _hash_region(user, shares)))
    if product not in got.attrs:
        category = cat_code.split(".")[-1] if cat_code else ""
        got.attrs[product] = {
            "category": category,
            "metal": metal,
            "gem": gem,
            "colour": "" if colour == "unknown-color" else colour,
            "gender": gender,
        }
    if price_value is not None:
        got.prices.setdefault(product, []).append(price_value)
    return None


def _read_items(path: Path, got: _Collected, report: ImportReport) -> None:
    rows = _csv_rows(path)
    header = next(rows, None)
    if header is None or "item_id" not in [h.strip() for h in header[1]]:
        raise ImportFailed(f"{path}: the items CSV needs a header with item_id")
    names = [h.strip() for h in header[1]]
    for line, row in rows:
        if len(row) != len(names):
            report.bad(line, f"{path.name}: {len(row)} fields, expected {len(names)}")
            continue
        rec = dict(zip(names, (x.strip() for x in row), strict=True))
        item = rec["item_id"]
        got.attrs[item] = {a: rec.get(a, "") for a in ATTRIBUTES}
        if rec.get("price"):
            try:
                got.prices[item] = [float(rec["price"])]
            except ValueError:
                report.bad(line, f"{path.name}: bad price {rec['price']!r}")


def _finish(
    got: _Collected, out: Path, report: ImportReport, regions: list[str], cutoff: int | None,
    name: str,
) -> None:  # fmt: skip
    if not got.rows:
        raise ImportFailed(f"{report.source}: no usable row ({report.bad_rows} bad rows)")
    # a user belongs to one region: the region of their first event
    first: dict[str, tuple[int, str]] = {}
    for r in got.rows:
        if r.user not in first or r.time < first[r.user][0]:
            first[r.user] = (r.time, r.region)
    moved = {r.user for r in got.rows if r.region != first[r.user][1]}
    report.users_moved = len(moved)
    seen: set[tuple[str, str, int]] = set()
    kept: list[_Row] = []
    for r in got.rows:
        key = (r.user, r.item, r.time)
        if key in seen:
            report.duplicates_merged += 1
            continue
        seen.add(key)
        kept.append(r)
    item_ids = sorted({r.item for r in kept}, key=lambda s: (len(s), s))
    item_index = {s: i for i, s in enumerate(item_ids)}
    user_ids = sorted({r.user for r in kept}, key=lambda s: (len(s), s))
    user_index = {s: i + 1 for i, s in enumerate(user_ids)}
    launch = np.full(len(item_ids), np.iinfo(np.int64).max, dtype=np.int64)
    for r in kept:
        i = item_index[r.item]
        launch[i] = min(launch[i], r.time)
    times = np.array([r.time for r in kept], dtype=np.int64)
    if cutoff is None:
        cutoff = int(np.quantile(times, CUTOFF_QUANTILE))
    catalogue = Catalogue(
        attributes={
            a: np.array([got.attrs.get(s, {}).get(a) or UNKNOWN for s in item_ids], dtype=object)
            for a in ATTRIBUTES
        },
        price=np.array([float(np.median(got.prices.get(s, [0.0]))) for s in item_ids]),
        launch_time=launch,
        source_id=np.array(item_ids, dtype=object),
    )
    out = Path(out)
    write_meta(out, Meta(name=name, source=report.source, regions=tuple(regions), cutoff=cutoff))
    write_catalogue(out, catalogue)
    for region in regions:
        mine = [r for r in kept if first[r.user][1] == region]
        write_interactions(
            out,
            region,
            Interactions(
                np.array([user_index[r.user] for r in mine], dtype=np.int64),
                np.array([item_index[r.item] for r in mine], dtype=np.int64),
                np.array([r.time for r in mine], dtype=np.int64),
            ),
        )
        report.regions[region] = len(mine)
    report.rows_imported = len(kept)
    report.items = len(item_ids)
    report.users = len(user_ids)


def _hash_region(user: str, shares: dict[str, float]) -> str:
    digest = hashlib.blake2b(user.encode(), digest_size=8).digest()
    point = int.from_bytes(digest, "big") % 10_000 / 10_000 * sum(shares.values())
    acc = 0.0
    for region, share in shares.items():
        acc += share
        if point < acc:
            return region
    return list(shares)[-1]


def _check_regions(shares: dict[str, float]) -> None:
    for region, share in shares.items():
        if not REGION_CODE.match(region) or not share > 0:
            raise ImportFailed(f"bad region share {region}={share} (code: lowercase; share > 0)")


def parse_shares(text: str) -> dict[str, float]:
    """``cn=30,us=24.5`` -> {"cn": 30.0, "us": 24.5}."""
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        code, _, value = part.partition("=")
        try:
            out[code.strip()] = float(value)
        except ValueError:
            raise ImportFailed(f"bad region share {part!r}; write code=share, e.g. cn=30") from None
    _check_regions(out)
    return out


def _parse_time(text: str) -> int | None:
    text = text.strip()
    if not text:
        return None
    if re.fullmatch(r"-?\d+(\.\d+)?", text):
        return int(float(text))
    cleaned = text.removesuffix(" UTC").replace("Z", "+00:00")
    try:
        when = datetime.fromisoformat(cleaned)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp())


def _csv_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) for every non-empty line; undecodable bytes are replaced, not fatal."""
    try:
        fh = Path(path).open(newline="", encoding="utf-8", errors="replace")
    except OSError as exc:
        raise ImportFailed(f"{path}: {exc.strerror}") from None
    with fh:
        reader = csv.reader(fh)
        try:
            for row in reader:
                if row and any(x.strip() for x in row):
                    yield reader.line_num, row
        except csv.Error as exc:
            raise ImportFailed(f"{path}:{reader.line_num}: unreadable CSV ({exc})") from None
