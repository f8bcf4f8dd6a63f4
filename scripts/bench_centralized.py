"""Time centralized training on the default data (goal: under 3 minutes on 2 CPU cores).

    python scripts/bench_centralized.py [--data DIR]

Generates the default data (seed 0) if no directory is given, then runs the centralized
baseline exactly as ``fedq baseline --mode centralized`` does and prints the wall time of the
training-and-evaluation part and of the whole command.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.baselines import FitSettings, run_baseline  # noqa: E402
from tasks.api import load_task  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path)
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    args = ap.parse_args()
    task = load_task("recommender")
    with tempfile.TemporaryDirectory() as tmp:
        root = args.data
        if root is None:
            started = time.perf_counter()
            root = Path(tmp) / "data"
            task.generate(root, seed=0)
            print(f"generate default data: {time.perf_counter() - started:.1f}s")
        started = time.perf_counter()
        report = run_baseline(task, root, "centralized", FitSettings(threads=args.threads),
                              say=print)  # fmt: skip
        total = time.perf_counter() - started
    print(f"centralized: {report.epochs['all']} best epoch, HR@10 {report.overall['hr@10']:.4f}")
    print(f"centralized training + evaluation: {total:.1f}s on {args.threads} threads "
          f"({os.cpu_count()} cores); goal < 180s")  # fmt: skip


if __name__ == "__main__":
    main()
