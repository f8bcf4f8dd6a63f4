"""Redis ACL users per role: what each fedq process may read and write, and nothing more.

A federation over a shared Redis is only as safe as its weakest writer, so every process logs in
as its role's user (``Keys``' patterns make the rules exact):

- ``<ns>-worker-<region>``: reads the settings and the models (``%R~``: a worker cannot write,
  expire or delete a model), works its own region's RQ queue, registries and jobs (job ids carry
  the region), keeps its own alive key and data-size count, and may only *append* to its own
  region's update and evaluation streams (``XADD``; a job it refuses is said there too: the
  shared rejections stream is the aggregator's alone) and count (``HINCRBY``/``INCR``) on the
  audit counters, through selectors that allow one command on one key each; it keeps its own
  region's failure streaks (``Keys.failures``). It cannot touch
  another region's queue, jobs, workers or keys, nor another region's workers' command channels.
- ``<ns>-aggregator``: the namespace's keys (it writes models); none of RQ's.
- ``<ns>-coordinator``: the namespace's keys and RQ's (it enqueues jobs in every region and
  cleans up after dead workers).
- ``<ns>-admin``: everything (``fedq run``, ``fedq requeue``, the embedded server's shutdown).
- ``default``: off.

The rules use read-only key patterns and selectors, so they need Redis 7.0 or newer (or Valkey,
which fedq embeds: see ``shared.redis_server``). Passwords are stored
as SHA-256 hashes in the ACL file; the plain passwords stay in the key directory, one file per
user, so a region's worker host receives only its own. Pure text building: no Redis here.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from shared.keys import Keys, check_name

MIN_REDIS = (7, 0)

# commands no role needs, on top of RQ's @dangerous set: listing key names across regions, and
# emptying the script cache (the aggregator's janitor runs by its SHA in the MULTI of its read:
# a region that flushed it would have the next read go unswept) or the functions
_NO_ROLE = ["-@dangerous", "-scan", "-randomkey", "-script|flush", "-function"]
# what every role's connection needs outside its keys (RQ reads the server's version via INFO)
_EVERY_ROLE = ["+info"]


@dataclass(frozen=True)
class Users:
    """The user names of one namespace's roles."""

    namespace: str

    @property
    def admin(self) -> str:
        return f"{self.namespace}-admin"

    @property
    def coordinator(self) -> str:
        return f"{self.namespace}-coordinator"

    @property
    def aggregator(self) -> str:
        return f"{self.namespace}-aggregator"

    def worker(self, region: str) -> str:
        return f"{self.namespace}-worker-{check_name('region', region)}"

    def all(self, regions: list[str] | tuple[str, ...]) -> list[str]:
        return [self.admin, self.coordinator, self.aggregator, *(self.worker(r) for r in regions)]


def password_hash(password: str) -> str:
    """The form an ACL file holds a password in (``#<sha256 hex>``)."""
    return "#" + hashlib.sha256(password.encode()).hexdigest()


def worker_rules(keys: Keys, region: str, rq_prefix: str = "rq") -> list[str]:
    """The key, channel and command rules of ``region``'s workers (no password)."""
    ns, q = keys.namespace, keys.queue(region)
    own = [
        f"~{rq_prefix}:queue:{q}",
        f"~{rq_prefix}:queue:{q}:*",  # its intermediate list
        f"~{rq_prefix}:*:{q}",  # the queue's registries, its worker set, its cleaning lock
        f"~{rq_prefix}:job:{region}-*",  # job ids begin with the region (shared.jobs)
        f"~{rq_prefix}:job::{region}-*",  # RQ spells a job's dependencies key with two colons
        f"~{rq_prefix}:results:{region}-*",
        f"~{rq_prefix}:executions:{region}-*",
        f"~{rq_prefix}:execution:{region}-*",
        f"~{rq_prefix}:worker:{region}.*",  # worker names begin with the region (worker.process)
        f"~{rq_prefix}:workers",
        f"~{keys.alive(region + '.*')}",
        f"~{keys.data_size(region)}",
        f"~{keys.privacy(region)}",  # its budget: no other role may write it
        f"~{keys.failures(region)}",  # its jobs' failures in a row (shared/failures.py)
    ]
    readable = [f"%R~{keys.config}", f"%R~{ns}:model:*", f"%R~{keys.done}", f"%R~{keys.round}",
                f"%R~{keys.data_sizes}",  # counts: a DP worker plans its share of the jobs
                # the region's service (fedq serve) follows the commits and the evaluations
                f"%R~{keys.applies}", f"%R~{keys.pinned}", f"%R~{keys.metrics}",
                f"%R~{keys.quarantined}", f"%R~{ns}:failures:*",  # whose evaluations count
                f"%R~{rq_prefix}:suspended", f"%R~{rq_prefix}:queues",
                f"%R~{rq_prefix}:rl-keys"]  # fmt: skip
    append_only = [
        f"(~{keys.update_stream(region)} ~{keys.evaluation_stream(region)} -@all +xadd)",
        f"(~{keys.published(region)} -@all +hincrby)",
        f"(~{keys.retried} ~{keys.abandoned} -@all +incr +incrby)",
    ]
    channels = [f"&{rq_prefix}:pubsub:{region}.*"]
    return ["resetkeys", "resetchannels", *own, *readable, *channels, "+@all", *_NO_ROLE,
            *_EVERY_ROLE, *append_only]  # fmt: skip


def role_rules(keys: Keys, regions: list[str] | tuple[str, ...], rq_prefix: str = "rq") -> dict:
    """User name -> its rules (no password), for every role of the namespace."""
    users = Users(keys.namespace)
    ns = keys.namespace
    rules = {
        users.admin: ["resetkeys", "resetchannels", "~*", "&*", "+@all"],
        users.coordinator: [
            "resetkeys",
            "resetchannels",
            f"~{ns}:*",
            f"~{rq_prefix}:*",
            f"%R~{keys.privacy_prefix}*",  # the regions' budgets: read, never written
            f"&{rq_prefix}:*",
            "+@all",
            *_NO_ROLE,
            *_EVERY_ROLE,
        ],  # fmt: skip
        users.aggregator: [
            "resetkeys",
            "resetchannels",
            f"~{ns}:*",
            f"%R~{keys.privacy_prefix}*",
            "+@all",
            *_NO_ROLE,
            *_EVERY_ROLE,
        ],  # fmt: skip
    }
    for region in regions:
        rules[users.worker(region)] = worker_rules(keys, region, rq_prefix)
    return rules


def acl_text(
    keys: Keys, regions: list[str] | tuple[str, ...], passwords: dict[str, str],
    rq_prefix: str = "rq",
) -> str:  # fmt: skip
    """An ACL file (``aclfile`` / ``ACL LOAD``) for the namespace: every role with a password."""
    rules = role_rules(keys, regions, rq_prefix)
    missing = sorted(set(rules) - set(passwords))
    if missing:
        raise ValueError(f"no password for user(s): {', '.join(missing)}")
    lines = ["user default off resetkeys resetchannels -@all"]
    for user, rule in rules.items():
        lines.append(" ".join(["user", user, "reset", "on", password_hash(passwords[user]), *rule]))
    return "\n".join(lines) + "\n"
