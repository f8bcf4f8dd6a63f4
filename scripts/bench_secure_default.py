"""What least privilege by default costs: `fedq run` as it is against the same run without it.

    python scripts/bench_secure_default.py [--data data] [--versions 3600]
                                           [--plain-server /path/to/redis-server]

Runs, back to back on this machine, the default ``fedq run`` (its embedded Valkey with one ACL
user per role, signed updates and jobs) and ``fedq run --no-acl --no-signed-updates`` (the
default before issue 11; with ``--plain-server`` that run uses another server binary, e.g. the
Redis 6.2 the default embedded before). Prints seconds, versions per second and final HR@10 of
each, and their ratios. Figures of one run each: these machines are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

FEDQ = [sys.executable, "-m", "cli"]


def _run(name: str, data: Path, versions: int, extra: list[str], env: dict) -> dict:
    out = Path(tempfile.mkdtemp(prefix=f"fedq-{name.replace(' ', '-')}-"))
    cmd = [*FEDQ, "run", "--data", str(data), "--no-baselines", "--target-versions",
           str(versions), "--out", str(out), *extra]  # fmt: skip
    print(f"{name}: {' '.join(cmd[2:])}", flush=True)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed: {proc.stderr.strip().splitlines()[-1:]}")
    report = json.loads((out / "report.json").read_text())
    return {"seconds": report["seconds"], "versions": report["versions"],
            "hr@10": report["final"]["overall"]["hr@10"],
            "rejected": report["updates"]["rejected"]}  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("data"))
    ap.add_argument("--versions", type=int, default=3600)
    ap.add_argument(
        "--plain-server",
        default=None,
        help="server binary of the run without ACL users [default: the embedded]",
    )
    args = ap.parse_args()
    if not (args.data / "meta.json").exists():
        raise SystemExit(f"{args.data}: no data set (fedq data generate --out {args.data})")
    env = {k: v for k, v in os.environ.items() if k not in ("FEDQ_REDIS_URL", "FEDQ_KEYS")}
    plain_env = {**env, "FEDQ_REDIS_SERVER": args.plain_server} if args.plain_server else env
    secure = _run("secure default", args.data, args.versions, [], env)
    plain = _run("plain", args.data, args.versions, ["--no-acl", "--no-signed-updates"],
                 plain_env)  # fmt: skip
    print(f"{'run':<16} {'seconds':>8} {'versions/s':>11} {'HR@10':>7} {'rejected':>9}")
    for name, r in (("secure default", secure), ("plain", plain)):
        print(f"{name:<16} {r['seconds']:>8.0f} {r['versions'] / r['seconds']:>11.2f} "
              f"{r['hr@10']:>7.4f} {r['rejected']:>9}")  # fmt: skip
    print(
        f"secure / plain: time {secure['seconds'] / plain['seconds']:.3f}, "
        f"HR@10 {secure['hr@10'] / plain['hr@10']:.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
