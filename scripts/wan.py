"""Regions on separate hosts over an emulated WAN: time to a target HR@10, LAN against WAN.

    python scripts/wan.py [--data data] [--target 0.30] [--only NAME ...] [--budget 420]  (root)

Builds the harness's network (``harness.wan``: a hub namespace with Redis, the aggregator and
the coordinator; one namespace per region with its workers; each region's link emulated packet
by packet), then runs the federation once per scenario on the default data, with the same
settings on every link profile, each until the combined validation HR@10 reaches ``--target``
(the stopping rule ``target_metric``) or ``--budget`` seconds pass:

- ``lan-*``: the same namespaces and devices, no delay, rate or loss;
- ``wan-*``: the hub in the EU; round trips 30 ms in-region (eu), 150-250 ms cross-border,
  10-50 Mbit/s, 0.1-1% loss (``WAN`` below);
- modes async, buffered and sync with fp32 updates; async with fp16 and int8 updates;
- ``wan-lossy``: the WAN with China's link at 3% loss;
- ``wan-partition``: the WAN with China's link black-holed for 30 s once the federation is
  under way, then healed; then ``fedq audit``'s checks (every update applied once or rejected
  with a reason) and China's updates before, during and after the cut.

Prints a table and writes ``--out``/wan.json. Time to target is the commit time (from the
federation's creation) of the first version whose validation HR@10 reached it; its test HR@10
beside it. Every scenario runs two workers per region, each with a job in flight (a job waits
mostly on its link, not on a core), on this machine's 2 cores: the regions' training shares
them, as it would not on separate hosts. ``wan-async-warm-tcp`` turns off Linux's slow start
after idle on every host (``net.ipv4.tcp_slow_start_after_idle=0``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import redis  # noqa: E402

from harness.audit import audit  # noqa: E402
from harness.run import RunOptions, run_federation  # noqa: E402
from harness.wan import HUB_ADDRESS, Link, Network, Profile  # noqa: E402
from shared.errors import FedqError  # noqa: E402
from shared.federation import read as read_federation  # noqa: E402
from shared.keys import Keys  # noqa: E402
from shared.settings import FederationSettings  # noqa: E402

HUB_REGION = "eu"
WAN: dict[str, Link] = {
    "eu": Link(30, 50, 0.1),  # in-region: the hub's own data centre's metro
    "us": Link(150, 50, 0.1),
    "in": Link(180, 20, 0.5),
    "me": Link(200, 20, 0.5),
    "jp": Link(230, 30, 0.3),
    "cn": Link(250, 10, 1.0),  # China-EU across the border: the slowest, lossiest link
}
LOSSY = {**WAN, "cn": Link(250, 10, 3.0)}
PARTITIONED = "cn"
PARTITION_SECONDS = 30.0
PARTITION_AT_VERSION = 100
# each mode's schedule: target versions (the decay's horizon) and versions between evaluations
SCHEDULES = {"async": (3600, 100), "buffered": (600, 20), "sync": (300, 10)}


@dataclass(frozen=True)
class Scenario:
    name: str
    profile: str  # lan | wan | lossy
    mode: str = "async"
    encoding: str = "fp32"
    partition: bool = False
    warm_tcp: bool = False  # net.ipv4.tcp_slow_start_after_idle=0 on every host


SCENARIOS = [  # in the order they run: the most telling first
    Scenario("lan-async", "lan"),
    Scenario("wan-async", "wan"),
    Scenario("wan-partition", "wan", partition=True),
    Scenario("wan-async-warm-tcp", "wan", warm_tcp=True),
    Scenario("wan-async-int8", "wan", encoding="int8"),
    Scenario("wan-lossy", "lossy"),
    Scenario("lan-sync", "lan", "sync"),
    Scenario("wan-sync", "wan", "sync"),
    Scenario("lan-buffered", "lan", "buffered"),
    Scenario("wan-buffered", "wan", "buffered"),
    Scenario("wan-async-fp16", "wan", encoding="fp16"),
    Scenario("lan-async-int8", "lan", encoding="int8"),
    Scenario("lan-async-fp16", "lan", encoding="fp16"),
]


class Partition:
    """The run's disturb hook: cut a region's link at a version, heal it after some seconds."""

    def __init__(self, net: Network, region: str, at_version: int, seconds: float) -> None:
        self.net, self.region, self.at_version, self.seconds = net, region, at_version, seconds
        self.cut_at: float | None = None  # wall clock
        self.healed_at: float | None = None

    def __call__(self, roles, respawn, version: int, done: bool) -> None:
        if self.cut_at is None and version >= self.at_version:
            self.net.partition(self.region)
            self.cut_at = time.time()
        elif self.cut_at and self.healed_at is None and time.time() - self.cut_at >= self.seconds:
            self.net.heal(self.region)
            self.healed_at = time.time()


def profile_of(name: str, regions: list[str]) -> Profile:
    table = {"lan": {}, "wan": WAN, "lossy": LOSSY}[name]
    missing = set(regions) - set(table) if table else set()
    if missing:
        raise FedqError(f"the {name} profile has no link for {sorted(missing)}")
    return {r: table.get(r) for r in regions}


def run_scenario(net: Network, scenario: Scenario, args: argparse.Namespace) -> dict:
    versions, every = SCHEDULES[scenario.mode]
    settings = FederationSettings(
        mode=scenario.mode, encoding=scenario.encoding, target_versions=versions,
        eval_every=every, target_metric=args.target, time_budget=args.budget,
        max_inflight=len(net.regions) * args.workers_per_region,
        inflight_per_region=args.workers_per_region, signed_updates=True,
    )  # fmt: skip
    net.shape(profile_of(scenario.profile, net.regions))
    net.tcp_slow_start_after_idle(not scenario.warm_tcp)
    aggregator_at = args.aggregator_in

    def placement(kind: str, region: str | None) -> list[str]:
        if kind == "worker":
            return net.exec_prefix(region)
        if kind == "aggregator" and aggregator_at:
            return net.exec_prefix(aggregator_at)
        return []  # the driver's own namespace: the hub

    cut = (Partition(net, PARTITIONED, PARTITION_AT_VERSION, PARTITION_SECONDS)
           if scenario.partition else None)  # fmt: skip
    checks: dict = {}

    def on_finish(connection: redis.Redis) -> None:
        keys = Keys(scenario.name)
        checks["audit"] = audit(connection, keys).to_json()
        checks["created_at"] = read_federation(connection, keys).created_at

    before = net.counters()
    options = RunOptions(args.data, settings, args.workers_per_region,
                         out_dir=args.out / scenario.name, namespace=scenario.name, acl=True,
                         redis_host=HUB_ADDRESS, placement=placement)  # fmt: skip
    started = time.monotonic()
    report = run_federation(options, lambda m: None, lambda s: None, cut, on_finish=on_finish)
    after = net.counters()
    result = summarize(scenario, report, args.target, checks)
    result["wall_seconds"] = round(time.monotonic() - started, 1)
    result["link_packets"] = {r: {k: after[r][k] - before[r][k] for k in after[r]}
                              for r in after}  # fmt: skip
    if cut is not None:
        result["partition"] = partition_summary(report, cut, checks["created_at"])
    return result


def summarize(scenario: Scenario, report: dict, target: float, checks: dict) -> dict:
    curve = report["curve"]
    reached = next((p for p in curve if p["validation"]["hr@10"] >= target), None)
    updates = report["updates"]
    return {
        "scenario": scenario.name, "profile": scenario.profile, "mode": scenario.mode,
        "encoding": scenario.encoding, "reached": reached is not None,
        "seconds_to_target": reached["seconds"] if reached else None,
        "version_at_target": reached["version"] if reached else None,
        "test_hr10_at_target": reached["metrics"]["hr@10"] if reached else None,
        "best_validation_hr10": max((p["validation"]["hr@10"] for p in curve), default=None),
        "final_test_hr10": report["final"]["overall"]["hr@10"],
        "versions": report["versions"], "seconds": report["seconds"],
        "applied": updates["applied"], "rejected": updates["rejected"],
        "rejected_by_reason": updates["rejected_by_reason"],
        "jobs_retried": updates["jobs_retried"], "audit_ok": checks["audit"]["ok"],
        "audit_problems": checks["audit"]["problems"],
        "applied_by_region": _count_by_region(report["updates_log"]),
    }  # fmt: skip


def _count_by_region(log: list) -> dict[str, int]:
    out: dict[str, int] = {}
    for _, _, region, _ in log:
        out[region] = out.get(region, 0) + 1
    return out


def partition_summary(report: dict, cut: Partition, created_at: float) -> dict:
    """The cut region's applied updates before, during and after the cut, against the rest."""
    if cut.cut_at is None:
        return {"happened": False}
    start = cut.cut_at - created_at
    end = (cut.healed_at or time.time()) - created_at
    phases = {"before": (0, start), "during": (start, end), "after": (end, float("inf"))}
    out: dict = {"happened": True, "region": cut.region, "cut_at_s": round(start, 1),
                 "healed_at_s": round(end, 1) if cut.healed_at else None}  # fmt: skip
    for phase, (lo, hi) in phases.items():
        mine = sum(1 for at, _, r, _ in report["updates_log"] if lo <= at < hi and r == cut.region)
        every = sum(1 for at, _, _, _ in report["updates_log"] if lo <= at < hi)
        out[phase] = {"region_applied": mine, "all_applied": every}
    after = [at for at, _, r, _ in report["updates_log"] if r == cut.region and at >= end]
    out["first_update_after_heal_s"] = round(min(after) - end, 1) if after else None
    return out


def print_table(results: list[dict], target: float) -> None:
    print(f"\ntime to validation HR@10 >= {target} (from the federation's creation)")
    print("| scenario | mode | updates | seconds to target | version | test HR@10 there | "
          "final test HR@10 | applied / rejected | audit |")  # fmt: skip
    print("|---|---|---|---:|---:|---:|---:|---:|---|")
    for r in results:
        best = r["best_validation_hr10"]
        when = (f"{r['seconds_to_target']:.0f}" if r["reached"]
                else f"not in {r['seconds']:.0f} (best {best:.4f})")  # fmt: skip
        print(f"| {r['scenario']} | {r['mode']} | {r['encoding']} | {when} | "
              f"{r['version_at_target'] or '-'} | {_four(r['test_hr10_at_target'])} | "
              f"{r['final_test_hr10']:.4f} | {r['applied']} / {r['rejected']} | "
              f"{'ok' if r['audit_ok'] else 'FAILED'} |")  # fmt: skip
    for r in results:
        if "partition" in r:
            p = r["partition"]
            print(f"\n{r['scenario']}: {json.dumps(p)}")
        if r["audit_problems"]:
            print(f"{r['scenario']} audit: {r['audit_problems']}")


def _four(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("data"))
    ap.add_argument("--target", type=float, default=0.30, help="validation HR@10 to reach")
    ap.add_argument("--budget", type=float, default=420.0, help="seconds per scenario at most")
    ap.add_argument("--only", nargs="*", help="scenario names (default: all)")
    ap.add_argument("--workers-per-region", type=int, default=2,
                    help="workers per region, each with a job in flight")  # fmt: skip
    ap.add_argument("--aggregator-in", default=None, help="run the aggregator in this region")
    ap.add_argument("--out", type=Path, default=Path("runs/wan"))
    args = ap.parse_args()
    scenarios = [s for s in SCENARIOS if not args.only or s.name in args.only]
    unknown = set(args.only or ()) - {s.name for s in SCENARIOS}
    if unknown:
        raise FedqError(
            f"unknown scenarios {sorted(unknown)} (choose {[s.name for s in SCENARIOS]})"
        )
    if not (args.data / "meta.json").exists():
        from tasks.recommender.task import TASK

        print(f"generating the built-in data set in {args.data}", flush=True)
        TASK.generate(args.data, seed=0)
    from tasks.api import load_task

    regions = list(load_task("recommender").describe(args.data).regions)
    args.data = args.data.resolve()
    args.out = args.out.resolve()
    results: list[dict] = []
    began = time.monotonic()
    with Network(regions) as net:
        net.enter_hub()  # Redis, the aggregator and the coordinator start from here
        for scenario in scenarios:
            print(f"{scenario.name}: {scenario.mode}, {scenario.encoding}, "
                  f"{scenario.profile} links", flush=True)  # fmt: skip
            result = run_scenario(net, scenario, args)
            results.append(result)
            brief = ("seconds_to_target", "version_at_target", "final_test_hr10", "applied",
                     "rejected", "audit_ok")  # fmt: skip
            print(f"  {json.dumps({k: result[k] for k in brief})}", flush=True)
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "wan.json").write_text(json.dumps(
                {"target": args.target, "links": {r: link.describe() for r, link in WAN.items()},
                 "results": results}, indent=2) + "\n")  # fmt: skip
    print_table(results, args.target)
    print(
        f"\n{len(results)} scenarios in {time.monotonic() - began:.0f} s; {args.out / 'wan.json'}"
    )
    return 0 if all(r["audit_ok"] for r in results) else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except FedqError as exc:
        sys.exit(f"wan: {exc}")
