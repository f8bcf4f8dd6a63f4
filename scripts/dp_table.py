"""HR@10 against epsilon: the same federation without DP and with it at several budgets.

    python scripts/dp_table.py [--data data] [--versions 1200] [--epsilons 1000,100,20]

Each run is ``fedq run --dp-epsilon E`` (clip 5, the noise multiplier chosen so that the region
with the most data, which publishes the most updates, stays within E at delta 1e-5; see
shared/privacy.py: per-update Gaussian noise, RDP accounting without subsampling credit, so the
epsilons are upper bounds). Prints the table and writes it as JSON beside the runs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("data"))
    ap.add_argument("--versions", type=int, default=1200)
    ap.add_argument("--epsilons", default="1000,100,20")
    ap.add_argument("--out", type=Path, default=Path("runs/dp"))
    args = ap.parse_args()
    rows = []
    for eps in [None, *(float(e) for e in args.epsilons.split(","))]:
        name = "no-dp" if eps is None else f"eps-{eps:g}"
        out = args.out / name
        cmd = [sys.executable, "-m", "cli", "run", "--data", str(args.data), "--no-baselines",
               "--target-versions", str(args.versions), "--out", str(out)]  # fmt: skip
        if eps is not None:
            cmd += ["--dp-epsilon", str(eps)]
        print("$ fedq " + " ".join(cmd[3:]), flush=True)
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        report = json.loads((out / "report.json").read_text())
        dp = report.get("privacy") or {}
        spent = [v["epsilon"] for v in dp.get("regions", {}).values()]
        rows.append({
            "epsilon_target": eps, "noise": dp.get("noise"),
            "epsilon_max_spent": max(spent) if spent else None,
            "hr@10": report["final"]["overall"]["hr@10"],
            **{f"hr@10_{r}": report["final"]["regions"][r]["hr@10"] for r in ("in", "jp", "me")},
            "rejected": report["updates"]["rejected"], "seconds": report["seconds"],
        })  # fmt: skip
    print("\n| epsilon (target) | noise multiplier | max epsilon spent | HR@10 | in | jp | me |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['epsilon_target'] or 'no DP'} | {row['noise'] or 0:.3f} | "
              f"{row['epsilon_max_spent'] if row['epsilon_max_spent'] is not None else '-'} | "
              f"{row['hr@10']:.4f} | {row['hr@10_in']:.4f} | {row['hr@10_jp']:.4f} | "
              f"{row['hr@10_me']:.4f} |")  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "dp_table.json").write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
