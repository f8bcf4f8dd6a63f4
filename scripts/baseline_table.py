"""Run the three baselines on one data set and print the README's table and its checks.

    python scripts/baseline_table.py --data data --out runs/baselines

Writes one JSON per mode (the ``fedq baseline --json`` shape) and prints a Markdown table of
overall and per-region HR@10 plus the acceptance ratios: centralized against popularity, local
against centralized on the three smallest regions, cold-start against random.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.baselines import FitSettings, modes, run_baseline  # noqa: E402
from tasks.api import load_task  # noqa: E402

TASK = load_task("recommender")
MODES = modes(TASK)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path("runs/baselines"))
    ap.add_argument("--epochs", type=int, default=None, help="default: per mode")
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--reuse", action="store_true", help="keep JSON reports already in --out")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    settings = FitSettings(threads=args.threads, max_epochs=args.epochs)
    reports = {}
    for mode in MODES:
        path = args.out / f"{mode}.json"
        if args.reuse and path.exists():
            reports[mode] = json.loads(path.read_text())
            continue
        report = run_baseline(TASK, args.data, mode, settings,
                              say=lambda m: print(m, file=sys.stderr))  # fmt: skip
        reports[mode] = report.to_json()
        (args.out / f"{mode}.json").write_text(json.dumps(reports[mode], indent=2) + "\n")
        print(f"{mode}: {report.seconds:.0f}s", file=sys.stderr)

    regions = list(reports["centralized"]["regions"])
    users = {r: reports["centralized"]["regions"][r]["users"] for r in regions}
    print("| HR@10 (full ranking) | " + " | ".join(regions) + " | overall |")
    print("|---|" + "---:|" * (len(regions) + 1))
    for mode in MODES:
        cells = [f"{reports[mode]['regions'][r]['hr@10']:.4f}" for r in regions]
        print(f"| {mode} | " + " | ".join(cells) + f" | {reports[mode]['overall']['hr@10']:.4f} |")
    print()
    keys = ("hr@10", "ndcg@10", "hr@10_sampled", "ndcg@10_sampled", "cold_start.hr@10")
    print("| overall | " + " | ".join(keys) + " | seconds |")
    print("|---|" + "---:|" * (len(keys) + 1))
    for mode in MODES:
        o = reports[mode]["overall"]
        cells = " | ".join(f"{o[k]:.4f}" for k in keys)
        print(f"| {mode} | {cells} | {reports[mode]['seconds']:.0f} |")
    print()
    cen, pop, loc = (reports[m] for m in ("centralized", "popularity", "local"))
    print(
        f"centralized / popularity HR@10: {cen['overall']['hr@10'] / pop['overall']['hr@10']:.2f}x"
    )
    for r in sorted(regions, key=users.get)[:3]:
        a, b = loc["regions"][r]["hr@10"], cen["regions"][r]["hr@10"]
        print(f"{r} ({int(users[r])} users): local {a:.4f} vs centralized {b:.4f}"
              f" -> {'below' if a < b else 'NOT below'}")  # fmt: skip
    cold, rnd = cen["overall"]["cold_start.hr@10"], cen["overall"]["cold_start.random_hr@10"]
    print(f"cold-start HR@10 {cold:.4f} vs random {rnd:.4f}: {cold / rnd:.1f}x")


if __name__ == "__main__":
    main()
