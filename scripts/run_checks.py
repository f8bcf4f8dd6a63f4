"""The federation goals of a finished ``fedq run``, from its report, for any task.

    python scripts/run_checks.py runs/<run>/report.json [--goal 0.95]

Prints the task's headline overall (federated, local-only, centralized), the federated / centralized
ratio against ``--goal``, and per region the federated figure beside local-only for the three
smallest regions (by the schema's size column), with the run's wall time. Exits 1 if a goal is
missed. The figures come from the report as the run measured them; nothing is recomputed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.api import MetricSchema  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report", type=Path)
    ap.add_argument("--goal", type=float, default=0.95, help="federated / centralized at least")
    args = ap.parse_args()
    report = json.loads(args.report.read_text())
    schema = MetricSchema.from_json(report["metric_schema"])
    head, label = schema.headline, schema.label(schema.headline)
    base = report.get("baselines") or {}
    if not {"local", "centralized"} <= set(base):
        print("the report has no local and centralized baselines (run without --no-baselines)")
        return 1
    fed, loc, cen = report["final"], base["local"], base["centralized"]
    ratio = fed["overall"][head] / cen["overall"][head]
    print(f"task {report['task']} on {report['data']}: {report['versions']} versions in "
          f"{report['seconds']:.0f} s ({report['mode']})")  # fmt: skip
    print(f"{label} overall: federated {fed['overall'][head]:.4f}, local-only "
          f"{loc['overall'][head]:.4f}, centralized {cen['overall'][head]:.4f}")  # fmt: skip
    ok = ratio >= args.goal
    verdict = "met" if ok else "MISSED"
    print(f"federated / centralized: {ratio:.3f} (goal >= {args.goal}): {verdict}")
    sizes = {r: m[schema.size] for r, m in fed["regions"].items()}
    for region in sorted(sizes, key=sizes.get)[:3]:
        f, lo = fed["regions"][region][head], loc["regions"][region][head]
        above = f > lo
        ok &= above
        print(f"{region} ({int(sizes[region])} {schema.label(schema.size)}): federated {f:.4f} "
              f"vs local-only {lo:.4f}: {'above' if above else 'NOT above'}")  # fmt: skip
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
