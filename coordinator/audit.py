"""The exactly-once audit: does every published update end applied once or rejected?

It reads what the workers say they published (``Keys.published``: id -> copies) and what the
aggregator recorded (applied set, rejected hash, duplicates, the applies stream, the version
counter) and checks, after a federation has drained:

- every published id is applied or rejected, never both, never neither (nothing lost);
- every id is in exactly one applies entry (nothing applied twice);
- every copy is accounted for: settled once, the others dropped as duplicates or still queued;
- the version counter equals the number of applies entries, numbered 1..V without a gap.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

import redis

from shared import federation
from shared.keys import Keys


@dataclass
class Audit:
    published_ids: int = 0
    published_copies: int = 0
    applied: int = 0
    rejected: int = 0
    duplicates: int = 0
    in_stream: int = 0
    versions: int = 0
    applies_entries: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def audit(connection: redis.Redis, keys: Keys) -> Audit:
    published = {k.decode(): int(v) for k, v in connection.hgetall(keys.published).items()}
    applied = {m.decode() for m in connection.smembers(keys.applied)}
    rejected = {k.decode() for k in connection.hkeys(keys.rejected)}
    duplicates = {k.decode(): int(v) for k, v in connection.hgetall(keys.duplicates).items()}
    entries = connection.xrange(keys.applies)
    in_applies = Counter(u["id"] for _, e in entries for u in json.loads(e[b"updates"]))
    fed = federation.read(connection, keys)
    streams = keys.update_streams(fed.regions) if fed else []
    queued = Counter(f.get(b"id", b"").decode() for stream in streams
                     for _, f in connection.xrange(stream))  # fmt: skip
    version = int(connection.get(keys.version) or 0)
    a = Audit(
        published_ids=len(published),
        published_copies=sum(published.values()),
        applied=len(applied & published.keys()),
        rejected=len(rejected & published.keys()),
        duplicates=sum(duplicates.get(i, 0) for i in published),
        in_stream=sum(queued.values()),
        versions=version,
        applies_entries=len(entries),
    )
    lost = sorted(i for i in published if i not in applied and i not in rejected and not queued[i])
    both = sorted(applied & rejected)
    twice = sorted(i for i, n in in_applies.items() if n > 1)
    unrecorded = sorted(i for i in in_applies if i not in applied)
    unaccounted = sorted(
        i for i, n in published.items()
        if n != (i in applied or i in rejected) + duplicates.get(i, 0) + queued[i]
    )  # fmt: skip
    numbers = [int(e[b"version"]) for _, e in entries]
    for what, ids in (("published but neither applied nor rejected", lost),
                      ("both applied and rejected", both),
                      ("applied more than once", twice),
                      ("in an applies entry but not in the applied set", unrecorded),
                      ("with copies not accounted for", unaccounted)):  # fmt: skip
        if ids:
            a.problems.append(f"{len(ids)} update(s) {what}: {', '.join(ids[:5])}")
    if numbers != list(range(1, version + 1)):
        a.problems.append(f"version counter {version} but applies entries number {numbers[:3]}"
                          f"...{numbers[-3:]} ({len(numbers)})")  # fmt: skip
    return a
