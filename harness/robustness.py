"""Regions that sign correctly and lie: whole federations run against a clean one.

``scripts/attack.py --suite regions`` runs one federation per scenario with ``fedq run``'s
secure defaults (ACL users, signed updates, the guard on): a clean run, then each class of
hostile region (``harness.hostile``) in the same settings, and measures what a region with
valid credentials can do to the others:

- the final test headline (the recommender's hit rate at 10), overall, for the other regions'
  shoppers and per region, scored from the final model (not taken from the regions' own
  reports, which a lying region controls: ``tasks/recommender/attacks.py``);
- the share of the other regions' test shoppers shown a promoted product in their top 10;
- whether and at which version each hostile region was flagged (``Keys.guard``);
- the time, the version the run stopped at, the version ``--only-evaluated`` would serve;
- for a flood, Redis's peak memory against its cap, the federation's rate during the flood
  against its rate just before it (one run: this machine's speed drifts), and the roles' peak
  memory against the clean run's.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import redis

from cli.views import quarantine
from coordinator.guard import region_view
from harness.run import Role, RunOptions, run_federation
from serving.follower import EvaluationGate
from shared import federation
from shared.acl import Users
from shared.auth import load_password
from shared.evaluations import latest_validation
from shared.keys import Keys
from shared.settings import FederationSettings
from shared.store import ModelStore
from shared.streams import applied_updates

NAMESPACE = "fedq"
FLOOD_ENTRY = 50 * 1024 * 1024
FLOOD_SECONDS = 20.0


@dataclass(frozen=True)
class Scenario:
    name: str
    hostile: dict[str, str] = field(default_factory=dict)  # region -> attack
    flood: str | None = None  # the region that floods its own stream
    stop_on_metric: bool = False  # run to a validation target (the evaluator classes)
    robust: bool = True  # the guard on (off: what it costs honest regions, and what it stops)
    excluded: tuple[str, ...] = ()  # regions quarantined from the start: none of their data


SCENARIOS = (
    Scenario("clean"),
    Scenario("clean-unguarded", robust=False),
    Scenario("negate-unguarded", {"cn": "negate"}, robust=False),
    Scenario("without-cn", excluded=("cn",)),
    Scenario("negate", {"cn": "negate"}),
    Scenario("scale", {"cn": "scale"}),
    Scenario("promote", {"cn": "promote"}),
    Scenario("drift", {"cn": "drift"}),
    Scenario("collude", {"cn": "negate", "us": "negate"}),
    Scenario("flood", flood="cn"),
    Scenario("clean-target", stop_on_metric=True),
    Scenario("lie", {"cn": "lie"}, stop_on_metric=True),
    Scenario("silent", {"cn": "silent"}, stop_on_metric=True),
)


@dataclass
class Watch:
    """``run_federation``'s ``disturb`` hook: notes when a hostile region is flagged, the
    versions over time, and runs the flood."""

    scenario: Scenario
    out: Path
    flood_at: int
    admin: redis.Redis | None = None
    url: str = ""
    flagged: dict[str, int] = field(default_factory=dict)
    samples: list[tuple[float, int]] = field(default_factory=list)
    flood_window: tuple[float, float] | None = None
    flood_sent: int = 0
    flood_refused: int = 0
    thread: threading.Thread | None = None

    def attach(self, url: str, connection: redis.Redis) -> None:
        self.url, self.admin = url, connection
        for region in self.scenario.excluded:  # before the first job: the best any guard does
            quarantine(connection, Keys(NAMESPACE), region)

    def __call__(self, roles: list[Role], respawn, version: int, done: bool) -> None:
        now = time.monotonic()
        self.samples.append((now, version))
        if self.admin is None:
            return
        watched = [*self.scenario.hostile, *([self.scenario.flood] if self.scenario.flood else [])]
        for region in watched:
            if region not in self.flagged:
                if region_view(self.admin.hget(Keys(NAMESPACE).guard, region))["flagged"]:
                    self.flagged[region] = version
        if self.scenario.flood and self.thread is None and version >= self.flood_at:
            self.thread = threading.Thread(target=self._flood, daemon=True)
            self.thread.start()
        if done and self.thread is not None:
            self.thread.join()

    def _flood(self) -> None:
        """As the region's own workers' ACL user: entries of 50 MB as fast as Redis takes them."""
        region = self.scenario.flood
        assert region is not None
        user = Users(NAMESPACE).worker(region)
        connection = redis.Redis.from_url(
            self.url, username=user, password=load_password(self.out / "keys", user)
        )
        payload = b"\0" * FLOOD_ENTRY
        stream = Keys(NAMESPACE).update_stream(region)
        start = time.monotonic()
        while time.monotonic() - start < FLOOD_SECONDS:
            try:
                connection.xadd(
                    stream, {"u": payload, "id": f"{region}-t0-flood.{self.flood_sent}"}
                )
                self.flood_sent += 1
            except redis.RedisError:
                self.flood_refused += 1  # the memory cap: refused, as it should be
                time.sleep(0.1)
        self.flood_window = (start, time.monotonic())
        connection.close()

    def rate(self, lo: float, hi: float) -> float | None:
        """Versions per second between two moments, from the samples."""
        inside = [(t, v) for t, v in self.samples if lo <= t <= hi]
        if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
            return None
        return (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])


def placement(scenario: Scenario) -> Callable[[str, str | None], list[str]]:
    """Start the hostile regions' workers through ``harness.hostile``."""

    def prefix(kind: str, region: str | None) -> list[str]:
        if kind == "worker" and region in scenario.hostile:
            return [sys.executable, "-m", "harness.hostile", scenario.hostile[region], "--"]
        return []

    return prefix


def run_scenario(
    scenario: Scenario,
    data_dir: Path,
    settings: FederationSettings,
    out: Path,
    say: Callable[[str], None],
) -> dict[str, Any]:
    """One federation of ``scenario``; its figures."""
    watch = Watch(scenario, out, flood_at=max(1, settings.target_versions // 3))
    finish: dict[str, Any] = {}

    def finished(connection: redis.Redis) -> None:
        keys = Keys(NAMESPACE)
        fed = federation.read(connection, keys)
        model = ModelStore(connection, keys).read_current()
        gate = EvaluationGate(
            connection, keys, fed.regions, fed.metrics, settings.eval_grace, settings.max_failures
        )
        gate.look(-1)
        finish["served"] = gate.newest(-1)[0]
        finish["validation"] = latest_validation(connection, keys, fed)
        finish["weights"] = model.weights
        finish["guard"] = {r: region_view(connection.hget(keys.guard, r)) for r in fed.regions}
        info = connection.info("memory")
        finish["redis_peak_mb"] = round(info["used_memory_peak"] / 2**20, 1)
        finish["redis_cap_mb"] = round(int(connection.config_get("maxmemory")["maxmemory"]) / 2**20)
        finish["rejected"] = [v.decode() for v in connection.hvals(keys.rejected)]
        finish["timeline"] = timeline(applied_updates(connection, keys))

    options = RunOptions(
        data_dir,
        settings,
        workers_per_region=1,
        out_dir=out,
        acl=True,
        placement=placement(scenario),
    )
    started = time.monotonic()
    report = run_federation(
        options, say, lambda _s: None, watch, on_start=watch.attach, on_finish=finished
    )
    from tasks.recommender.attacks import final_scores
    from tasks.recommender.task import TASK

    scores, promoted = final_scores(
        finish["weights"], data_dir, report["settings"]["task_settings"]
    )
    headline = TASK.metrics.headline
    hostile_regions = set(scenario.hostile) | set(scenario.excluded)
    hostile_regions |= {scenario.flood} if scenario.flood else set()
    others = {r: m for r, m in scores.items() if r not in hostile_regions}
    reasons: dict[str, int] = {}
    for reason in finish["rejected"]:
        reasons[reason] = reasons.get(reason, 0) + 1
    figures = {
        "scenario": scenario.name,
        "hostile": {
            **scenario.hostile,
            **dict.fromkeys(scenario.excluded, "excluded"),
            **({scenario.flood: "flood"} if scenario.flood else {}),
        },
        "seconds": round(time.monotonic() - started, 1),
        "versions": report["versions"],
        "headline": TASK.metrics.combine(scores)[headline],
        "headline_others": TASK.metrics.combine(others)[headline],
        "headline_by_region": {r: m[headline] for r, m in scores.items()},
        "test_users": {r: m["users"] for r, m in scores.items()},
        "promoted_share": promoted,
        "flagged_at": watch.flagged,
        "guard": finish["guard"],
        "served": finish["served"],
        "validation": finish["validation"],
        "rejected": reasons,
        "timeline": finish["timeline"],
        "updates": report["updates"],
        "peak_rss_mb": report["peak_rss_mb"],
        "redis_peak_mb": finish["redis_peak_mb"],
        "redis_cap_mb": finish["redis_cap_mb"],
    }
    if watch.flood_window is not None:
        lo, hi = watch.flood_window
        figures["flood"] = {
            "entries_sent": watch.flood_sent,
            "refused_writes": watch.flood_refused,
            "rate_before": watch.rate(lo - (hi - lo), lo),
            "rate_during": watch.rate(lo, hi),
        }
    return figures


def timeline(applied: list[dict[str, Any]], every: int = 50) -> list[dict[str, Any]]:
    """Per ``every`` versions: each region's applied updates and the sum of their step weights
    (how much of the model each region moved, and when)."""
    out: dict[int, dict[str, list[float]]] = {}
    for u in applied:
        bucket = out.setdefault(u["version"] // every * every, {})
        count = bucket.setdefault(u["region"], [0, 0.0])
        count[0] += 1
        count[1] += u["weight"] or 0.0
    return [
        {"from": v, **{r: [c, round(w, 3)] for r, (c, w) in sorted(b.items())}}
        for v, b in sorted(out.items())
    ]


def suite_settings(versions: int, seed: int) -> FederationSettings:
    from tasks.recommender.task import TASK

    return FederationSettings(
        target_versions=versions,
        seed=seed,
        eval_every=max(1, versions // 12),
        max_inflight=os.cpu_count() or 2,
        signed_updates=True,
        task_settings=TASK.settings({}),
    )


def with_target(settings: FederationSettings, target: float) -> FederationSettings:
    """The evaluator scenarios: stop at a validation target (the version target a cap)."""
    return replace(settings, target_metric=target)
