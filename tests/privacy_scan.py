"""The privacy scan: every key and value in Redis, searched for the regions' raw data."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import redis

from tasks.recommender.dataset import read_interactions, read_meta


def assert_no_raw_data(connection: redis.Redis, data: Path) -> None:
    """No raw record of ``data`` anywhere in the database: for the recommender's data no event
    timestamp and no user's item sequence; for the toy task's no point, as text or as the
    float32 bytes a tensor would hold."""
    blob = _dump(connection)
    if json.loads((Path(data) / "meta.json").read_text()).get("format") == "fedq-toy/1":
        return _assert_no_points(blob, data)
    meta = read_meta(data)
    stamps, sequences = set(), []
    for region in meta.regions:
        events = read_interactions(data, region)
        stamps |= {str(t) for t in events.timestamp.tolist()}
        order = np.lexsort((events.timestamp, events.user_id))
        users, items = events.user_id[order], events.item_id[order]
        for u in np.unique(users)[:200]:
            seq = items[users == u][:4]
            if len(seq) == 4:
                sequences.append(seq.tolist())
    numbers = set(re.findall(rb"\d{9,10}", blob))
    leaked = {s for s in stamps if s.encode() in numbers}
    assert not leaked, f"event timestamps found in Redis: {sorted(leaked)[:5]}"
    for seq in sequences:
        for form in (",".join(map(str, seq)), json.dumps(seq), ", ".join(map(str, seq))):
            assert form.encode() not in blob, f"an interaction sequence {seq} is in Redis"


def _assert_no_points(blob: bytes, data: Path) -> None:
    for region in json.loads((Path(data) / "meta.json").read_text())["regions"]:
        lines = (Path(data) / region / "points.csv").read_text().splitlines()[1:]
        for line in lines[:300]:
            features = line.rsplit(",", 1)[0]
            assert features.encode() not in blob, f"a point of {region} is in Redis: {line}"
            raw = np.array([float(v) for v in features.split(",")], dtype=np.float32).tobytes()
            assert raw not in blob, f"a point of {region} is in Redis as float32: {line}"


def _dump(connection: redis.Redis) -> bytes:
    """Every key and value in the database, as one byte string (tensor bytes included)."""
    parts: list[bytes] = []
    for key in connection.scan_iter("*"):
        kind = connection.type(key)
        parts.append(key)
        if kind == b"string":
            parts.append(connection.get(key) or b"")
        elif kind == b"hash":
            for k, v in connection.hgetall(key).items():
                parts += [k, v]
        elif kind == b"set":
            parts += list(connection.smembers(key))
        elif kind == b"list":
            parts += connection.lrange(key, 0, -1)
        elif kind == b"zset":
            parts += [m for m, _ in connection.zrange(key, 0, -1, withscores=True)]
        elif kind == b"stream":
            for _id, fields in connection.xrange(key):
                for k, v in fields.items():
                    parts += [k, v]
    return b"\n".join(parts)
