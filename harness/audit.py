"""The exactly-once audit: does every published update end applied once or rejected?

It reads what the workers say they published (``Keys.published``: per region, update id ->
copies), what the coordinator issued (``Keys.issued``) and what the aggregator recorded (the
applied set and jobs, the rejected hash and the rejections stream, duplicates, the applies
stream, the version counter) and checks:

- every published update (one attempt of a job) is applied, rejected or dropped as a duplicate
  of its job's applied attempt, and never both applied and rejected (nothing lost);
- every update is in at most one applies entry, and every job has at most one applied attempt
  (nothing applied twice);
- every applied update belongs to a train job the coordinator issued, to the region it came
  from (nothing steered in from outside);
- every copy its region's workers published is accounted for: applied, rejected, dropped as a
  duplicate, or still queued;
- the version counter equals the number of applies entries, numbered 1..V without a gap.

Everything is read in one MULTI, so the audit sees one moment of a running federation: every
writer's step is atomic (a worker's publish and its count, the commit script, a rejection or a
duplicate with its acknowledgement), and an audit that read the applies stream before a commit
and the version counter after it reported a federation at work as broken. An update in flight
is then simply still queued.

Copies beyond the count its region's workers published are that region's replays: only the
region (its ACL user) can append to its stream, and its workers count every copy they send in
the same MULTI. A replay is no failure of exactly-once as long as it was dropped (or rejected)
and nothing was applied twice; it is reported per region. So are the guard's figures
(suspicion, the updates each of its checks refused, the applied updates it scaled or
down-weighted) and the operator's quarantine: information, never a reason for ``ok`` to be
false. Forged or broken entries (rejected before they could be tied to a job) are counted apart.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field

import redis

from coordinator.guard import region_view
from shared import federation
from shared.codec import RejectReason
from shared.jobs import job_of, job_region, parse_issued
from shared.keys import Keys

NOT_A_COPY = {"replayed", "job_refused"}  # rejections-stream entries that settle no copy
# the rejection reasons that are the guard's (or the operator's) doing, shown per region
GUARD_REASONS = (
    RejectReason.DIRECTION,
    RejectReason.INFLUENCE,
    RejectReason.SUSPECTED,
    RejectReason.QUARANTINED,
)


@dataclass
class RegionAudit:
    """What one region did and what was done to it: information, not a check."""

    suspicion: float = 0.0  # the guard's (0..1)
    flagged: bool = False  # suspicion from the guard's threshold on
    refused: dict[str, int] = field(default_factory=dict)  # guard reason -> updates refused
    down_weighted: int = 0  # applied updates the guard scaled down or gave less weight
    quarantined: bool = False  # an operator quarantined it (``fedq quarantine``)
    replays: int = 0  # copies of its updates beyond what its workers published

    def line(self, region: str) -> str:
        refused = ", ".join(f"{k} {v}" for k, v in self.refused.items())
        flagged = " (FLAGGED)" if self.flagged else ""
        quarantined = ", QUARANTINED" if self.quarantined else ""
        return (
            f"{region}: suspicion {self.suspicion:.3f}{flagged}{quarantined}; refused: {refused}; "
            f"down-weighted {self.down_weighted}; replays {self.replays}"
        )


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
    replays: int = 0  # copies beyond the published counts, every region (see ``regions``)
    regions: dict[str, RegionAudit] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict:
        return {**asdict(self), "ok": self.ok}

    def lines(self) -> list[str]:
        """The text ``fedq audit`` prints: the figures, each region, the problems, the verdict."""
        figures = {k: v for k, v in asdict(self).items() if k not in ("problems", "regions")}
        out = [", ".join(f"{k.replace('_', ' ')} {v}" for k, v in figures.items())]
        out += [self.regions[region].line(region) for region in self.regions]
        out += [f"PROBLEM: {problem}" for problem in self.problems]
        out.append("audit: ok" if self.ok else f"audit: {len(self.problems)} problem(s)")
        return out


@dataclass
class _Snapshot:
    """Everything the audit reads, as one MULTI returned it."""

    issued: dict[str, dict]
    published: dict[str, dict[str, int]]  # region -> update id -> copies
    applied: set[str]
    rejected: dict[str, str]  # update id (or entry ref) -> reason
    duplicates: dict[str, int]
    rejections: list[dict[bytes, bytes]]
    applies: list[dict[bytes, bytes]]
    queued: Counter[str]  # update id -> copies still on the update streams
    version: int
    guard: dict[str, bytes]  # region -> the guard's record (JSON)
    quarantined: set[str]


def _snapshot(connection: redis.Redis, keys: Keys, regions: tuple[str, ...]) -> _Snapshot:
    text = lambda b: b.decode(errors="replace")  # noqa: E731
    streams = keys.update_streams(regions)
    with connection.pipeline(transaction=True) as pipe:
        pipe.hgetall(keys.issued)
        for region in regions:
            pipe.hgetall(keys.published(region))
        pipe.smembers(keys.applied)
        pipe.hgetall(keys.rejected)
        pipe.hgetall(keys.duplicates)
        pipe.xrange(keys.rejections)
        pipe.xrange(keys.applies)
        for stream in streams:
            pipe.xrange(stream)
        pipe.get(keys.version)
        pipe.hgetall(keys.guard)
        pipe.smembers(keys.quarantined)
        rows = iter(pipe.execute())
    issued = {text(k): parse_issued(v) for k, v in next(rows).items()}
    published = {region: {text(k): int(v) for k, v in next(rows).items()} for region in regions}
    applied = {text(m) for m in next(rows)}
    rejected = {text(k): text(v) for k, v in next(rows).items()}
    duplicates = {text(k): int(v) for k, v in next(rows).items()}
    rejections = [f for _, f in next(rows)]
    applies = [f for _, f in next(rows)]
    queued: Counter[str] = Counter()
    for _stream in streams:
        queued.update(text(f.get(b"id", b"")) for _, f in next(rows))
    version = int(next(rows) or 0)
    guard = {text(k): v for k, v in next(rows).items()}
    quarantined = {text(m) for m in next(rows)}
    return _Snapshot(
        issued,
        published,
        applied,
        rejected,
        duplicates,
        rejections,
        applies,
        queued,
        version,
        guard,
        quarantined,
    )


def audit(connection: redis.Redis, keys: Keys) -> Audit:
    fed = federation.read(connection, keys)
    regions = fed.regions if fed else ()
    snap = _snapshot(connection, keys, regions)

    def issued_to(update_id: str, region: str) -> bool:
        record = snap.issued.get(job_of(update_id)) or {}
        return record.get("kind") == "train" and record.get("region") == region

    # a region's workers count their own copies; ids of jobs never issued to that region are
    # claims nobody can check (a hostile worker may write any), reported apart, not as lost
    published: dict[str, int] = {}
    unknown_claims = 0
    for region, by_id in snap.published.items():
        for update_id, n in by_id.items():
            if issued_to(update_id, region):
                published[update_id] = n
            else:
                unknown_claims += n
    applied, duplicates, queued = snap.applied, snap.duplicates, snap.queued
    rejected = set(snap.rejected)
    settled_copies: Counter[str] = Counter()  # rejections of each update id
    forged = 0
    for f in snap.rejections:
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
    in_applies: Counter[str] = Counter()
    down_weighted: Counter[str] = Counter()
    for e in snap.applies:
        for u in json.loads(e[b"updates"]):
            in_applies[u["id"]] += 1
            if u.get("guard"):
                down_weighted[u.get("region") or job_region(u["id"])] += 1
    per_job = Counter(job_of(u) for u in applied)
    # copies beyond what the region's workers published are its replays; fewer, copies lost
    received = {
        i: (i in applied) + settled_copies[i] + duplicates.get(i, 0) + queued[i] for i in published
    }
    replays: Counter[str] = Counter()
    for i, n in published.items():
        replays[job_region(i)] += max(0, received[i] - n)
    a = Audit(
        published_ids=len(published),
        published_copies=sum(published.values()),
        applied=len(applied & published.keys()),
        rejected=len(rejected & published.keys()),
        duplicates=sum(duplicates.get(i, 0) for i in published),
        in_stream=sum(queued.values()),
        versions=snap.version,
        applies_entries=len(snap.applies),
        jobs_applied=len(per_job),
        forged_or_broken=forged,
        unknown_claims=unknown_claims,
        replays=sum(replays.values()),
        regions=_regions(regions, snap, down_weighted, replays),
    )
    lost = sorted(i for i in published if i not in applied and not settled_copies[i]
                  and not duplicates.get(i) and not queued[i])  # fmt: skip
    both = sorted(applied & rejected)
    twice = sorted(i for i, n in in_applies.items() if n > 1)
    job_twice = sorted(j for j, n in per_job.items() if n > 1)
    unrecorded = sorted(i for i in in_applies if i not in applied)
    never_issued = sorted(u for u in applied if not issued_to(u, job_region(u)))
    unaccounted = sorted(i for i, n in published.items() if 0 < received[i] < n)
    numbers = [int(e[b"version"]) for e in snap.applies]
    for what, ids in (("published but neither applied nor rejected", lost),
                      ("both applied and rejected", both),
                      ("applied more than once", twice),
                      ("(jobs) with more than one applied attempt", job_twice),
                      ("applied whose train job the coordinator never issued", never_issued),
                      ("in an applies entry but not in the applied set", unrecorded),
                      ("with copies not accounted for", unaccounted)):  # fmt: skip
        if ids:
            a.problems.append(f"{len(ids)} update(s) {what}: {', '.join(ids[:5])}")
    if numbers != list(range(1, snap.version + 1)):
        a.problems.append(
            f"version counter {snap.version} but applies entries number "
            f"{numbers[:3]}...{numbers[-3:]} ({len(numbers)})"
        )
    return a


def _regions(
    regions: tuple[str, ...], snap: _Snapshot, down_weighted: Counter[str], replays: Counter[str]
) -> dict[str, RegionAudit]:
    """Each region's guard figures, quarantine and replays (the guard's refusals are counted
    from the rejected hash: the reason each authentic update of an issued job was refused)."""
    refused: Counter[tuple[str, str]] = Counter(
        (job_region(i), reason)
        for i, reason in snap.rejected.items()
        if reason in GUARD_REASONS and not i.startswith("entry:")
    )
    out = {}
    for region in regions:
        view = region_view(snap.guard.get(region))
        out[region] = RegionAudit(
            suspicion=float(view["suspicion"]),
            flagged=bool(view["flagged"]),
            refused={r.value: refused[(region, r.value)] for r in GUARD_REASONS},
            down_weighted=down_weighted[region],
            quarantined=region in snap.quarantined,
            replays=replays[region],
        )
    return out
