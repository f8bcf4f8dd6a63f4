"""Async against sync with one slow region: wall time to reach sync's final HR@10.

    python scripts/bench_async_vs_sync.py [--data DIR] [--slow me=10] [--rounds 12]

Runs ``fedq run --mode sync`` for ``--rounds`` rounds with one region's workers ``FACTOR``
times slower, takes its final overall HR@10 (full ranking) and the time it reached it, then runs
``fedq run --mode async`` with the same slowdown and reports when its learning curve first
reached that HR@10. Both times are measured from the federation's creation, in one invocation
(the machine is noisy: compare the ratio, not the seconds). Sync is evaluated once, at its end;
async every ``--async-eval-every`` versions, and those evaluations run on the same cores, so
the async time is an upper bound. Goal: async needs at most 1/3 of sync's time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path


def run(data: Path, out: Path, mode: str, slow: str, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "cli", "run", "--data", str(data), "--mode", mode,
           "--slowdown", slow, "--no-baselines", "--out", str(out), *extra]  # fmt: skip
    print("$ fedq " + " ".join(cmd[3:]), flush=True)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return json.loads((out / "report.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("data"))
    ap.add_argument("--slow", default="me=10", help="REGION=FACTOR")
    ap.add_argument("--rounds", type=int, default=40, help="sync rounds (versions)")
    ap.add_argument("--async-versions", type=int, default=1500)
    ap.add_argument("--async-eval-every", type=int, default=100)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sync = run(args.data, Path(tmp) / "sync", "sync", args.slow,
                   ["--target-versions", str(args.rounds), "--eval-every", "0"])  # fmt: skip
        goal = sync["final"]["overall"]["hr@10"]
        sync_time = next(p["seconds"] for p in sync["curve"] if p["version"] == sync["versions"])
        every = max(1, args.async_versions // 40)
        asyn = run(
            args.data,
            Path(tmp) / "async",
            "async",
            args.slow,
            ["--target-versions", str(args.async_versions), "--eval-every", str(every)],
        )
    reached = next((p for p in asyn["curve"] if p["metrics"]["hr@10"] >= goal), None)
    print(f"sync: {sync['versions']} rounds, final HR@10 {goal:.4f} at {sync_time:.1f}s")
    if reached is None:
        best = max(p["metrics"]["hr@10"] for p in asyn["curve"])
        print(f"async: never reached {goal:.4f} in {asyn['versions']} versions (best {best:.4f})")
        return
    ratio = reached["seconds"] / sync_time
    print(f"async: HR@10 {reached['metrics']['hr@10']:.4f} at version {reached['version']}, "
          f"{reached['seconds']:.1f}s")  # fmt: skip
    print(f"async time / sync time: {ratio:.2f} (goal <= 0.33)")


if __name__ == "__main__":
    main()
