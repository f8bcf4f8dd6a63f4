"""Throughput and latency of the regional service's /recommend, with and without live model swaps.

    python scripts/bench_serve.py [--seconds 10] [--swap-seconds 35] [--data data]

Starts its own redis-server on a free loopback port, a federation of the recommender on the
built-in data (generated first if ``data/`` is empty), a real ``fedq aggregator`` and
``fedq serve --region cn`` as separate processes. Then, for concurrency 1, 8 and 32, it keeps
that many requests in flight (aiohttp, one keep-alive connection each) asking for top-10 items of
random shoppers of the region, first with the model fixed, then while a new version is committed
every second (a small synthetic update published as a region's worker would, applied by the
aggregator; the service swaps each one in). It prints requests/s, p50 and p99 latency as the
client sees it, failed requests (anything but a 200 with items, or no answer) and the swaps the
service made (its /readyz) for each run. Client and service share the machine's cores. Everything
it started is stopped at the end; it only talks to 127.0.0.1.

Goals (issue 14): >= 1,000 requests/s in total, p99 <= 20 ms at concurrency 8, no failed request
across 100 swaps.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import redis  # noqa: E402

from coordinator import service  # noqa: E402
from harness.serving import commit_synthetic_update, get, start_service  # noqa: E402
from shared.keys import Keys  # noqa: E402
from shared.processes import stop_processes  # noqa: E402
from shared.redis_server import RedisServer  # noqa: E402
from shared.settings import FederationSettings  # noqa: E402
from shared.store import ModelStore  # noqa: E402

REGION = "cn"
NAMESPACE = "bench-serve"
CONCURRENCY = (1, 8, 32)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path("data"))
    parser.add_argument("--seconds", type=float, default=10.0, help="each run without swaps")
    parser.add_argument(
        "--swap-seconds",
        type=float,
        default=35.0,
        help="each run with a swap a second (3 runs: about 100 swaps)",
    )
    args = parser.parse_args()
    try:
        import aiohttp  # noqa: F401
    except ImportError:
        print("bench_serve: needs aiohttp (pip install -e '.[test]')", file=sys.stderr)
        return 1
    data = _data(args.data)
    shoppers = _shoppers(data)
    with tempfile.TemporaryDirectory(prefix="fedq-bench-serve-") as tmp:
        server = RedisServer(Path(tmp) / "redis").start()
        procs: list[subprocess.Popen] = []
        try:
            r = server.client()
            keys = Keys(NAMESPACE)
            service.initialise(r, keys, data, FederationSettings(task="recommender", eval_every=0))
            env = {**os.environ, "FEDQ_REDIS_URL": server.url, "FEDQ_NAMESPACE": NAMESPACE,
                   "PYTHONUNBUFFERED": "1"}  # fmt: skip
            with (Path(tmp) / "aggregator.log").open("wb") as log:
                procs.append(subprocess.Popen([sys.executable, "-m", "cli", "aggregator"],
                                              env=env, stdout=log, stderr=log))  # fmt: skip
            proc, url = start_service(["--region", REGION, "--data", str(data), "--poll", "1"],
                                      env, Path(tmp) / "serve.log")  # fmt: skip
            procs.append(proc)
            rows = []
            for swapping in (False, True):
                for c in CONCURRENCY:
                    seconds = args.swap_seconds if swapping else args.seconds
                    rows.append(_measure(r, keys, url, shoppers, c, seconds, swapping))
                    print(_line(rows[-1]), flush=True)
            _table(rows)
            if any(p.poll() is not None for p in procs):
                print("bench_serve: a process died; logs in", tmp, file=sys.stderr)
                return 1
        finally:
            stop_processes(procs)
            server.stop()
    return 0


def _data(path: Path) -> Path:
    if (path / "meta.json").exists():
        return path
    from tasks.recommender.task import TASK

    print(f"generating the built-in data set into {path} ...", flush=True)
    TASK.generate(path)
    return path


def _shoppers(data: Path) -> list[int]:
    from tasks.recommender.local_data import load_region

    return [int(u) for u in load_region(data, REGION).split.sequences.users]


def _measure(r: redis.Redis, keys: Keys, url: str, shoppers: list[int], concurrency: int,
             seconds: float, swapping: bool) -> dict:  # fmt: skip
    swaps_before = json.loads(get(url + "/readyz")[1])["swaps"]
    version_before = ModelStore(r, keys).current_version()
    stop = threading.Event()
    committer = None
    if swapping:

        def commit_every_second() -> None:
            while not stop.wait(1.0):
                commit_synthetic_update(r, keys, REGION)

        committer = threading.Thread(target=commit_every_second, daemon=True)
        committer.start()
    try:
        latencies, failures, versions = asyncio.run(
            _load(url + "/recommend", shoppers, concurrency, seconds)
        )
    finally:
        stop.set()
        if committer is not None:
            committer.join()
    time.sleep(1.5 if swapping else 0)  # the last commit's swap
    latencies.sort()
    n = len(latencies)
    return {
        "concurrency": concurrency,
        "swapping": swapping,
        "requests": n + failures,
        "rps": n / seconds,
        "p50_ms": 1000 * latencies[n // 2] if n else float("nan"),
        "p99_ms": 1000 * latencies[min(n - 1, int(n * 0.99))] if n else float("nan"),
        "failed": failures,
        "swaps": json.loads(get(url + "/readyz")[1])["swaps"] - swaps_before,
        "versions_committed": ModelStore(r, keys).current_version() - version_before,
        "versions_served": len(versions),
    }


async def _load(url: str, shoppers: list[int], concurrency: int, seconds: float):
    import aiohttp

    latencies: list[float] = []
    versions: set[int] = set()
    failures = 0
    bodies = [json.dumps({"shopper": s, "k": 10}).encode() for s in shoppers]
    headers = {"content-type": "application/json"}
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency),
                                     timeout=timeout) as session:  # fmt: skip
        end = time.perf_counter() + seconds

        async def client() -> None:
            nonlocal failures
            while time.perf_counter() < end:
                start = time.perf_counter()
                try:
                    async with session.post(url, data=random.choice(bodies),
                                            headers=headers) as response:  # fmt: skip
                        body = await response.json() if response.status == 200 else None
                except (TimeoutError, aiohttp.ClientError, ValueError):
                    body = None
                if not body or not body.get("items"):
                    failures += 1
                    continue
                latencies.append(time.perf_counter() - start)
                versions.add(body["model_version"])

        await asyncio.gather(*(client() for _ in range(concurrency)))
    return latencies, failures, versions


def _line(row: dict) -> str:
    return (f"concurrency {row['concurrency']:>2} {'swapping' if row['swapping'] else 'fixed   '}"
            f": {row['rps']:7.0f} req/s, p50 {row['p50_ms']:5.1f} ms, p99 {row['p99_ms']:5.1f} "
            f"ms, {row['failed']} failed of {row['requests']}, {row['swaps']} swaps")  # fmt: skip


def _table(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="fedq serve /recommend (top 10), 2 cores shared with the client")
    for col in ("concurrency", "model", "req/s", "p50 ms", "p99 ms", "failed", "swaps"):
        table.add_column(col, justify="right")
    for row in rows:
        table.add_row(str(row["concurrency"]), "swap every 1 s" if row["swapping"] else "fixed",
                      f"{row['rps']:.0f}", f"{row['p50_ms']:.1f}", f"{row['p99_ms']:.1f}",
                      f"{row['failed']} / {row['requests']}", str(row["swaps"]))  # fmt: skip
    Console().print(table)
    swapping = [row for row in rows if row["swapping"]]
    print(
        f"across {sum(r['swaps'] for r in swapping)} swaps: "
        f"{sum(r['failed'] for r in swapping)} failed requests; best throughput "
        f"{max(r['rps'] for r in rows):.0f} req/s; p99 at concurrency 8: "
        f"{next(r['p99_ms'] for r in rows if r['concurrency'] == 8 and not r['swapping']):.1f} "
        "ms fixed, "
        f"{next(r['p99_ms'] for r in swapping if r['concurrency'] == 8):.1f} ms swapping"
    )


if __name__ == "__main__":
    sys.exit(main())
