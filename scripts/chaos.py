"""Chaos runner: a federation whose roles are killed (-9) and restarted, checked for exactly-once.

    python scripts/chaos.py --faults 20 [--seed 0] [--data data] [--versions 1200]

Runs the same federation twice on one redis-server of its own, in two namespaces: undisturbed,
then with ``--faults`` SIGKILLs of workers, the aggregator and the coordinator at seeded moments
(``harness.chaos``), each restarted 0-3 s later. Then it checks the invariants on the
disturbed run (``harness.audit``): every published update applied once or rejected with a
reason, every copy accounted for, the version counter equal to the number of applies; and final
overall HR@10 within 5% of the undisturbed run's. Prints a table; exits 1 if a check fails.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import redis  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from harness.audit import audit  # noqa: E402
from harness.chaos import Chaos  # noqa: E402
from harness.run import RunOptions, run_federation  # noqa: E402
from shared.keys import Keys  # noqa: E402
from shared.redis_server import RedisServer  # noqa: E402
from shared.settings import FederationSettings  # noqa: E402

TOLERANCE = 0.05


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--faults", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0, help="seed of the faults and the federation")
    ap.add_argument("--data", type=Path, default=Path("data"))
    ap.add_argument("--versions", type=int, default=1200, help="target versions of each run")
    ap.add_argument("--workers-per-region", type=int, default=2)
    ap.add_argument("--mode", default="async", choices=("async", "buffered", "sync"))
    ap.add_argument("--kinds", default="worker=0.6,aggregator=0.2,coordinator=0.2",
                    help="which roles to kill, with weights")  # fmt: skip
    ap.add_argument("--out", type=Path, default=Path("runs/chaos"))
    args = ap.parse_args()
    if not (args.data / "meta.json").exists():
        from tasks.recommender.task import TASK

        print(f"generating the built-in data set in {args.data}", flush=True)
        TASK.generate(args.data, seed=0)
    settings = FederationSettings(mode=args.mode, target_versions=args.versions, seed=args.seed,
                                  eval_every=0, max_inflight=os.cpu_count() or 2)  # fmt: skip
    console = Console()
    server = RedisServer(args.out / "redis").start()
    try:
        reports = {}
        kinds = {k: float(w) for k, _, w in (p.partition("=") for p in args.kinds.split(","))}
        chaos = Chaos(args.faults, args.seed, args.versions, kinds)
        for name, disturb in (("undisturbed", None), ("chaos", chaos)):
            console.print(f"[bold]{name}[/]: {args.versions} versions, seed {args.seed}")
            options = RunOptions(args.data, settings, args.workers_per_region,
                                 out_dir=args.out / name, redis_url=server.url,
                                 namespace=name)  # fmt: skip
            reports[name] = run_federation(options, lambda m: None, lambda s: None, disturb)
        connection = redis.Redis.from_url(server.url)
        results = {name: audit(connection, Keys(name)) for name in reports}
    finally:
        server.stop()
    return _report(console, chaos, reports, results)


def _report(console: Console, chaos: Chaos, reports: dict, results: dict) -> int:
    calm, wild = reports["undisturbed"], reports["chaos"]
    hr_calm, hr_wild = calm["final"]["overall"]["hr@10"], wild["final"]["overall"]["hr@10"]
    gap = abs(hr_wild - hr_calm) / hr_calm
    kinds = chaos.by_kind()
    table = Table(title="chaos run")
    table.add_column("figure")
    table.add_column("undisturbed", justify="right")
    table.add_column("chaos", justify="right")
    rows = [
        ("faults injected (SIGKILL)", "0",
         f"{len(chaos.injected)}: " + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items()))),
        ("train jobs retried", calm["updates"]["jobs_retried"], wild["updates"]["jobs_retried"]),
        ("jobs abandoned (dead worker)", calm["updates"]["jobs_abandoned"],
         wild["updates"]["jobs_abandoned"]),
        ("update copies published", calm["updates"]["published"], wild["updates"]["published"]),
        ("updates applied", calm["updates"]["applied"], wild["updates"]["applied"]),
        ("updates rejected", calm["updates"]["rejected"],
         f"{wild['updates']['rejected']} {wild['updates']['rejected_by_reason'] or ''}"),
        ("duplicates dropped", calm["updates"]["duplicates"], wild["updates"]["duplicates"]),
        ("versions", calm["versions"], wild["versions"]),
        ("seconds", f"{calm['seconds']:.0f}", f"{wild['seconds']:.0f}"),
        ("final HR@10", f"{hr_calm:.4f}", f"{hr_wild:.4f}"),
    ]  # fmt: skip
    for row in rows:
        table.add_row(*(str(x) for x in row))
    console.print(table)
    checks = [
        (f"all {chaos.faults} faults injected", len(chaos.injected) == chaos.faults),
        *((f"{name}: every published update applied once or rejected, every copy accounted "
           "for, version counter = applies entries", result.ok)
          for name, result in results.items()),
        (f"final HR@10 within {TOLERANCE:.0%} of undisturbed (gap {gap:.1%})", gap <= TOLERANCE),
    ]  # fmt: skip
    for name, result in results.items():
        for problem in result.problems:
            console.print(f"  [red]{name}: {problem}[/]")
    for text, ok in checks:
        console.print(f"{'[green]PASS[/]' if ok else '[red]FAIL[/]'} {text}")
    console.print("faults: " + "; ".join(
        f"v{i.version} {i.role} (back after {i.fault.restart_after:.1f}s)" for i in chaos.injected
    ))  # fmt: skip
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
