"""The exactly-once audit: does every published update end applied once or rejected?

It reads what the workers say they published (``Keys.published``: per region, update id ->
copies), what the coordinator issued (``Keys.issued``) and what the aggregator recorded (the
applied set and jobs, the rejected hash and the rejections stream, duplicates, the applies
stream, the version counter) and checks, after a federation has drained:

- every published update (one attempt of a job) is applied, rejected or dropped as a duplicate
  of its job's applied attempt, and never both applied and rejected (nothing lost);
- every update is in at most one applies entry, and every job has at most one applied attempt
  (nothing applied twice);
- every applied update belongs to a train job the coordinator issued, to the region it came
  from (nothing steered in from outside);
- every copy is accounted for: applied, rejected, dropped as a duplicate, or still queued;
- the version counter equals the number of applies entries, numbered 1..V without a gap.

Forged or broken entries (rejected before they could be tied to a job) are counted apart.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field

import redis

from shared import federation
from shared.jobs import job_of, job_region, parse_issued
from shared.keys import Keys
from shared.streams import published_copies

NOT_A_COPY = {"replayed", "job_refused"}  # rejections-stream entries that settle no copy


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
    jobs_applied: int = 0
    forged_or_broken: int = 0  # entries rejected before they could be tied to a job
    unknown_claims: int = 0  # copies counted under ids of jobs never issued to that region
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict:
        return {**asdict(self), "ok": self.ok}


def audit(connection: redis.Redis, keys: Keys) -> Audit:
    fed = federation.read(connection, keys)
    regions = fed.regions if fed else ()
    issued = {k.decode(): parse_issued(v) for k, v in connection.hgetall(keys.issued).items()}

    def issued_to(update_id: str, region: str) -> bool:
        record = issued.get(job_of(update_id)) or {}
        return record.get("kind") == "train" and record.get("region") == region

    # a region's workers count their own copies; ids of jobs never issued to that region are
    # claims nobody can check (a hostile worker may write any), reported apart, not as lost
    published: dict[str, int] = {}
    unknown_claims = 0
    for region, by_id in published_copies(connection, keys, regions).items():
        for update_id, n in by_id.items():
            if issued_to(update_id, region):
                published[update_id] = n
            else:
                unknown_claims += n
    applied = {m.decode() for m in connection.smembers(keys.applied)}
    rejected = {k.decode() for k in connection.hkeys(keys.rejected)}
    duplicates = {k.decode(): int(v) for k, v in connection.hgetall(keys.duplicates).items()}
    settled_copies: Counter[str] = Counter()  # rejections of each update id
    forged = 0
    for _, f in connection.xrange(keys.rejections):
        if f.get(b"reason", b"").decode() in NOT_A_COPY:
            continue
        claimed = f.get(b"claimed")
        if claimed is None:
            settled_copies[f.get(b"id", b"").decode(errors="replace")] += 1
            continue
        forged += 1
        # an entry rejected before it was tied to its job settles a copy of the id it claimed
        # only if it came on that id's region's stream (anything else is another's forgery)
        stream = f.get(b"id", b"").decode(errors="replace").removeprefix("entry:").split(" ")[0]
        claimed_id = claimed.decode(errors="replace")
        try:
            own = stream == keys.update_stream(job_region(claimed_id))
        except ValueError:  # the claimed id names no region at all
            own = False
        settled_copies[claimed_id] += own
    entries = connection.xrange(keys.applies)
    in_applies = Counter(u["id"] for _, e in entries for u in json.loads(e[b"updates"]))
    streams = keys.update_streams(regions)
    queued = Counter(f.get(b"id", b"").decode() for stream in streams
                     for _, f in connection.xrange(stream))  # fmt: skip
    version = int(connection.get(keys.version) or 0)
    per_job = Counter(job_of(u) for u in applied)
    a = Audit(
        published_ids=len(published),
        published_copies=sum(published.values()),
        applied=len(applied & published.keys()),
        rejected=len(rejected & published.keys()),
        duplicates=sum(duplicates.get(i, 0) for i in published),
        in_stream=sum(queued.values()),
        versions=version,
        applies_entries=len(entries),
        jobs_applied=len(per_job),
        forged_or_broken=forged,
        unknown_claims=unknown_claims,
    )
    lost = sorted(i for i in published if i not in applied and not settled_copies[i]
                  and not duplicates.get(i) and not queued[i])  # fmt: skip
    both = sorted(applied & rejected)
    twice = sorted(i for i, n in in_applies.items() if n > 1)
    job_twice = sorted(j for j, n in per_job.items() if n > 1)
    unrecorded = sorted(i for i in in_applies if i not in applied)
    never_issued = sorted(u for u in applied if not issued_to(u, job_region(u)))
    unaccounted = sorted(
        i for i, n in published.items()
        if n != (i in applied) + settled_copies[i] + duplicates.get(i, 0) + queued[i]
    )  # fmt: skip
    numbers = [int(e[b"version"]) for _, e in entries]
    for what, ids in (("published but neither applied nor rejected", lost),
                      ("both applied and rejected", both),
                      ("applied more than once", twice),
                      ("(jobs) with more than one applied attempt", job_twice),
                      ("applied whose train job the coordinator never issued", never_issued),
                      ("in an applies entry but not in the applied set", unrecorded),
                      ("with copies not accounted for", unaccounted)):  # fmt: skip
        if ids:
            a.problems.append(f"{len(ids)} update(s) {what}: {', '.join(ids[:5])}")
    if numbers != list(range(1, version + 1)):
        a.problems.append(f"version counter {version} but applies entries number {numbers[:3]}"
                          f"...{numbers[-3:]} ({len(numbers)})")  # fmt: skip
    return a
