"""HR@10 against epsilon: the federation without DP and with DP-SGD at several budgets, beside
local-only and centralized training and the popularity ranking (all three non-private).

    python scripts/dp_table.py [--data data] [--epsilons 1,2,4,8] [--versions 3600] [--set K=V]

Each DP run is ``fedq run --dp-epsilon E``: every region's workers train with DP-SGD, one
shopper the unit (sampled per step, clipped to 1, Gaussian noise), each region planning its
noise multiplier to spend at most E by the target at its own delta (a tenth of one over its
shoppers), its budget kept in Redis and composed by Opacus's RDP accountant over every job of
every worker of the region. The baselines come from ``fedq run``'s cache (the first run of the
table computes them). About 40 minutes on 2 cores (the non-private run with its baselines 6,
each DP run 6.5). Prints a Markdown table, and writes it as JSON beside the runs, with each
region's epsilon spent.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SMALLEST = ("in", "jp", "me")  # the default data's three smallest regions


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("data"))
    ap.add_argument("--epsilons", default="1,2,4,8")
    ap.add_argument("--versions", type=int, default=None, help="default: fedq run's target")
    ap.add_argument("--set", dest="task_set", action="append", default=[], metavar="KEY=VALUE",
                    help="a task setting for every run (as fedq run --set)")  # fmt: skip
    ap.add_argument("--out", type=Path, default=Path("runs/dp"))
    args = ap.parse_args()
    rows, baselines = [], {}
    for eps in [None, *(float(e) for e in args.epsilons.split(","))]:
        name = "no-dp" if eps is None else f"eps-{eps:g}"
        out = args.out / name
        cmd = [sys.executable, "-m", "cli", "run", "--data", str(args.data), "--out", str(out),
               *(["--target-versions", str(args.versions)] if args.versions else []),
               *(x for kv in args.task_set for x in ("--set", kv)),
               *([] if eps is None else ["--dp-epsilon", str(eps)])]  # fmt: skip
        if eps is not None:
            cmd.append("--no-baselines")  # the non-private run's are the comparison
        print("$ fedq " + " ".join(cmd[3:]), flush=True)
        done = subprocess.run(cmd, stdout=subprocess.DEVNULL)
        if done.returncode != 0:
            print(f"dp_table: that run failed (exit {done.returncode}); its logs: {out}/logs",
                  file=sys.stderr)  # fmt: skip
            return 1
        report = json.loads((out / "report.json").read_text())
        baselines = report.get("baselines") or baselines
        spent = {
            r: v["epsilon"] for r, v in (report.get("privacy") or {}).get("regions", {}).items()
        }
        rows.append({"name": "no DP" if eps is None else f"epsilon {eps:g}", "epsilon": eps,
                     "overall": report["final"]["overall"]["hr@10"],
                     "regions": {r: m["hr@10"] for r, m in report["final"]["regions"].items()},
                     "epsilon_spent": spent, "versions": report["versions"],
                     "seconds": report["seconds"]})  # fmt: skip
    for mode in ("local", "centralized"):
        if mode in baselines:
            b = baselines[mode]
            rows.append({"name": f"{mode} (no DP)", "epsilon": None,
                         "overall": b["overall"]["hr@10"],
                         "regions": {r: m["hr@10"] for r, m in b["regions"].items()}})  # fmt: skip
    # the floor a private model has to clear: the most bought items, no model, no privacy
    from harness.baselines import run_baseline

    popular = run_baseline("recommender", args.data, "popularity")
    rows.append({"name": "popularity (no DP)", "epsilon": None,
                 "overall": popular.overall["hr@10"],
                 "regions": {r: m["hr@10"] for r, m in popular.regions.items()}})  # fmt: skip
    reference = rows[0]["overall"]
    print("\n| HR@10 | overall | x no-DP | " + " | ".join(SMALLEST) + " | max epsilon spent |")
    print("|---|---:|---:|" + "---:|" * len(SMALLEST) + "---:|")
    for row in rows:
        spent = row.get("epsilon_spent") or {}
        cells = " | ".join(f"{row['regions'][r]:.4f}" for r in SMALLEST)
        most = f"{max(spent.values()):.2f}" if spent else "-"
        print(f"| {row['name']} | {row['overall']:.4f} | {row['overall'] / reference:.2f} | "
              f"{cells} | {most} |")  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "dp_table.json").write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
