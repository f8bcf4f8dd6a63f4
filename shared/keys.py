"""Every Redis key, stream and queue name fedq uses, built in this one place.

All names live under a namespace (``fedq`` unless told otherwise), so several federations can
share one Redis, and an ACL can grant a role exactly the patterns it needs. RQ's own keys
(``rq:queue:<name>``, ``rq:job:<id>``, registries) are RQ's; fedq only names its queues.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_NAMESPACE = "fedq"
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
AGGREGATOR_GROUP = "aggregators"


def check_name(kind: str, value: str) -> str:
    """Region codes and namespaces become parts of key names: lowercase, digits, - and _."""
    if not _NAME.match(value):
        raise ValueError(f"bad {kind} {value!r}: use lowercase letters, digits, - and _ (max 32)")
    return value


@dataclass(frozen=True)
class Keys:
    namespace: str = DEFAULT_NAMESPACE

    def __post_init__(self) -> None:
        check_name("namespace", self.namespace)

    def _k(self, *parts: object) -> str:
        return ":".join((self.namespace, *(str(p) for p in parts)))

    # --- RQ queues (RQ stores them as rq:queue:<name>) ---
    def queue(self, region: str) -> str:
        return self._k("region", check_name("region", region))

    # --- the federation's settings and membership ---
    @property
    def config(self) -> str:
        """Hash: the run's settings (mode, regions, model config, targets), written once."""
        return self._k("config")

    # --- model store ---
    @property
    def version(self) -> str:
        """String: the current global model version (an integer)."""
        return self._k("model", "version")

    def model(self, version: int) -> str:
        """String: the msgpack blob of one version (immutable once written)."""
        return self._k("model", int(version))

    def staged_model(self, version: int, writer: str) -> str:
        """String with a TTL: ``writer``'s blob for ``version``, renamed to ``model`` on commit."""
        return self._k("staged", int(version), writer)

    def model_info(self, version: int) -> str:
        """Hash: when a version was made and from what (update ids, staleness, mode)."""
        return self._k("model", int(version), "info")

    # --- updates and their outcomes ---
    def update_stream(self, region: str) -> str:
        """Stream: encoded updates published by ``region``'s workers (field ``u``).

        One stream per region, so a region's ACL user can append to its own only and the
        aggregator can hold every update to the region of the stream it came on.
        """
        return self._k("updates", check_name("region", region))

    def update_streams(self, regions: list[str] | tuple[str, ...]) -> list[str]:
        return [self.update_stream(r) for r in regions]

    def published(self, region: str) -> str:
        """Hash: update id -> copies ``region``'s workers published (an audit trail: ids only).

        One hash per region, so a region's ACL user can count only its own copies.
        """
        return self._k("published", check_name("region", region))

    @property
    def applied(self) -> str:
        """Set: ids of updates that were applied (exactly once)."""
        return self._k("applied")

    @property
    def applied_jobs(self) -> str:
        """Hash: job id -> the id of the one update (attempt) of it that was applied."""
        return self._k("applied", "jobs")

    @property
    def rejected(self) -> str:
        """Hash: update id -> rejection reason, for authentic updates of issued jobs; an entry
        that could not be tied to its job (unsigned, forged, unknown job) is recorded under
        ``entry:<stream> <entry id>``, so a forgery never marks an honest id."""
        return self._k("rejected")

    @property
    def issued(self) -> str:
        """Hash: job id -> what the coordinator issued (kind, region, version, round; JSON).

        Only an update of an issued train job, on its region's stream, can be applied."""
        return self._k("issued")

    @property
    def clipped(self) -> str:
        """Hash: update id -> its L2 norm before it was scaled down to ``max_update_norm``."""
        return self._k("clipped")

    @property
    def guard(self) -> str:
        """Hash: region -> what the aggregator's guard learned of it (recent norms and
        cosines, suspicion, the checks that acted; JSON, coordinator/guard.py)."""
        return self._k("guard")

    @property
    def quarantined(self) -> str:
        """Set: regions an operator quarantined (``fedq quarantine``): their updates are
        refused, no train job is issued to them, their evaluation figures do not count."""
        return self._k("quarantined")

    @property
    def duplicates(self) -> str:
        """Hash: update id -> how many extra copies of it arrived (acknowledged, not applied)."""
        return self._k("duplicates")

    @property
    def handling(self) -> str:
        """Hash: stream entry re-read after a crash -> handlings of it that never returned (an
        entry that kills the aggregator is rejected after a few, so no restart loop exists)."""
        return self._k("handling")

    @property
    def rejections(self) -> str:
        """Stream: one entry per rejection, with reason and detail (headers only)."""
        return self._k("rejections")

    @property
    def applies(self) -> str:
        """Stream: one entry per new version (version, update ids, regions, staleness, weight)."""
        return self._k("applies")

    @property
    def pinned(self) -> str:
        """Hash: version -> its scheduled evaluation jobs (JSON list): the version's blob is kept
        past the window until they are done."""
        return self._k("pinned")

    @property
    def evaluated(self) -> str:
        """Set: versions whose federated evaluation the dispatcher has scheduled."""
        return self._k("evaluated")

    # --- evaluation and jobs ---
    @property
    def metrics(self) -> str:
        """Stream: accepted evaluation results (version, region, ``m``), written only by the
        aggregator after checking them (``shared.evaluations``); what curves and views read."""
        return self._k("metrics")

    def evaluation_stream(self, region: str) -> str:
        """Stream: evaluation results ``region``'s workers publish (``m``, ``id``, ``sig``); one
        per region, so a region's ACL user can append to its own only."""
        return self._k("evaluations", check_name("region", region))

    def inflight(self, region: str) -> str:
        """Hash: this region's train jobs the dispatcher counts as in flight -> dispatch time."""
        return self._k("inflight", check_name("region", region))

    @property
    def dispatched(self) -> str:
        """Counter: train jobs dispatched so far (all regions)."""
        return self._k("dispatched")

    @property
    def dispatched_by_region(self) -> str:
        """Hash: region -> train jobs dispatched to it (for proportional dispatch)."""
        return self._k("dispatched", "by-region")

    def data_size(self, region: str) -> str:
        """String: training examples the region holds, as its workers announce (a count only).

        One key per region (not one hash) so a region's ACL user can write its own count only.
        """
        return self._k("data-size", check_name("region", region))

    @property
    def data_sizes(self) -> str:
        """The pattern of every region's data-size key (workers read them all to plan DP)."""
        return self._k("data-size", "*")

    def privacy(self, region: str) -> str:
        """Hash: the region's privacy accountant (shared/privacy.py): the DP-SGD steps of every
        job of every worker of the region, its delta and the epsilon spent.

        Outside ``<ns>:*`` (a dot cannot be part of a namespace): the coordinator's and the
        aggregator's ACL patterns cover ``<ns>:*``, and only the region's own user may write
        its budget."""
        return f"{self.privacy_prefix}{check_name('region', region)}"

    @property
    def privacy_prefix(self) -> str:
        """Every region's budget key begins so (``+ "*"``: the ACL pattern of them all)."""
        return f"{self.namespace}.privacy:"

    @property
    def round(self) -> str:
        """Hash: sync mode's current round (number, base version, deadline, regions)."""
        return self._k("round")

    @property
    def done(self) -> str:
        """String: set when the coordinator reached its target (reason)."""
        return self._k("done")

    def heartbeat(self, role: str) -> str:
        return self._k("heartbeat", check_name("role", role))

    def alive(self, worker_name: str) -> str:
        """String with a short TTL: the worker process is alive (refreshed by a thread)."""
        return self._k("alive", worker_name)

    @property
    def abandoned(self) -> str:
        """Counter: started jobs whose worker died, given up by the dispatcher."""
        return self._k("abandoned")

    def failures(self, region: str) -> str:
        """Hash: ``<source>:<kind>`` -> the region's jobs of that kind that failed the same way
        in a row (JSON: cause, count, at, job; ``shared.failures``). Written by the region's
        workers (``job``: the job raised) and the coordinator (``rejected``: the aggregator
        refused the job's output); one per region, so a region's ACL user writes only its own."""
        return self._k("failures", check_name("region", region))

    @property
    def failures_folded(self) -> str:
        """Hash: stream -> the last entry of it the coordinator folded into the ``rejected``
        failure streaks (the rejections, applies and metrics streams)."""
        return self._k("failures-folded")

    @property
    def retried(self) -> str:
        """Counter: train jobs re-queued (same id) after their worker died or failed them."""
        return self._k("retried")

    def lease(self, role: str) -> str:
        """String with a TTL: ``"<fencing token> <holder>"`` of the role's active instance."""
        return self._k("lease", check_name("role", role))

    def fence(self, role: str) -> str:
        """Counter: the role's last fencing token (grows with every new lease holder)."""
        return self._k("lease", check_name("role", role), "fence")

    def pattern(self) -> str:
        """Every fedq key of this namespace (for inspection and cleanup)."""
        return self._k("*")
