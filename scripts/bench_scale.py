"""How fedq grows: applied updates per second against workers and against model size.

    python scripts/bench_scale.py [--workers 1,2,3,6,12,24,48] [--job-seconds 0.1]
                                  [--window 30] [--sizes 100k,300k,1M,3M,10M] [--pairs 5]
                                  [--skip-workers] [--skip-sizes] [--json FILE]

Two axes, each measured in this one run (the machine is noisy: compare within a run):

- **Workers** (1 to 48 real worker processes, the toy task's five-parameter model, so nothing
  but fedq itself costs): a federation of its own per count, with as many jobs in flight as
  workers; each train job takes ``--job-seconds`` of wall time (the toy task sleeps: the
  training a region's own host would do, which costs this machine nothing). Ideal is workers /
  job-seconds updates a second; measured is the applied rate over ``--window`` seconds once
  every worker has started, with the CPU each kind of process used in that window (Redis's
  from INFO), so the table says where it stops growing and what it ran out of.
- **Model size** (100k to 10M parameters): the real aggregator (decode, validate, FedAsync,
  the atomic commit) on updates published beforehand, against a floor measured in the same
  run: the same bytes through Redis (a consumer group read of each update, a model-sized blob
  written) plus the same numpy mixing, nothing else; ``--pairs`` pairs run back to back, the
  ratio the median of the pairs'. Goal: the aggregator at >= 0.8x the floor at 1M parameters.
  Redis's own CPU per update (INFO cpu) for its publish, the aggregator's read and commit, and
  one worker's read of the model says how many updates a second one Redis core carries. Then
  the encoded size of one update per encoding against its raw fp32 bytes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import redis
from rq import Worker

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from coordinator.aggregator import Aggregator  # noqa: E402
from harness.run import RunOptions, run_federation  # noqa: E402
from shared import aggregation as agg  # noqa: E402
from shared import federation  # noqa: E402
from shared.codec import ENCODINGS, Update, UpdateHeader, encode_update, encoded_size  # noqa: E402
from shared.federation import Federation  # noqa: E402
from shared.jobs import JobSpec, record_issued  # noqa: E402
from shared.keys import Keys  # noqa: E402
from shared.redis_server import RedisServer  # noqa: E402
from shared.settings import FederationSettings  # noqa: E402
from shared.store import ModelStore  # noqa: E402
from tasks.toy import REGIONS  # noqa: E402
from tasks.toy import TASK as TOY  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# --- the workers axis ---


def toy_data(root: Path, regions: int) -> Path:
    """The toy data set with its first ``regions`` regions (a federation of fewer regions)."""
    full = root / "toy-all"
    if not (full / "meta.json").exists():
        TOY.generate(full, seed=0)
    if regions >= len(REGIONS):
        return full
    out = root / f"toy-{regions}"
    if not out.exists():
        names = list(REGIONS)[:regions]
        for name in names:
            shutil.copytree(full / name, out / name)
        meta = json.loads((full / "meta.json").read_text())
        meta.update(regions=names, name=f"{meta['name']}-{regions}")
        (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out


class CpuWindow:
    """The run's disturb hook: applied updates and CPU seconds of each kind of role (and Redis)
    over ``length`` seconds that begin ``settle`` seconds after the last of ``workers`` workers
    registered with RQ: 48 workers starting on 2 cores take most of a minute, and a window
    over their start-up measures imports, not fedq."""

    def __init__(self, workers: int, length: float, settle: float = 5.0) -> None:
        self.workers, self.length, self.settle = workers, length, settle
        self.ready_at: float | None = None
        self.first: dict[int, float] | None = None
        self.last: dict[int, float] = {}
        self.kinds: dict[int, str] = {}
        self.window: tuple[float, float] = (0.0, 0.0)
        self.redis: redis.Redis | None = None
        self.keys = Keys()
        self.redis_cpu: list[float] = []
        self.applied: list[int] = []

    def __call__(self, roles, respawn, version: int, done: bool) -> None:
        if self.redis is None or done:
            return
        now = time.monotonic()
        if self.ready_at is None:
            if Worker.count(connection=self.redis) >= self.workers:
                self.ready_at = now
            return
        if now < self.ready_at + self.settle or (self.first and now > self.window[0] + self.length):
            return
        sample = {}
        for role in roles:
            self.kinds[role.process.pid] = role.kind
            seconds = _cpu_seconds(role.process.pid)
            if seconds is not None:
                sample[role.process.pid] = seconds
        redis_now = _redis_cpu(self.redis)
        applied = int(self.redis.scard(self.keys.applied))
        if self.first is None:
            self.first, self.window = sample, (now, now)
            self.redis_cpu, self.applied = [redis_now, redis_now], [applied, applied]
        self.last = sample
        self.window = (self.window[0], now)
        self.redis_cpu[1], self.applied[1] = redis_now, applied

    @property
    def span(self) -> float:
        return self.window[1] - self.window[0]

    def applied_per_s(self) -> float:
        return (self.applied[1] - self.applied[0]) / self.span if self.span > 0 else 0.0

    def by_kind(self) -> dict[str, float]:
        """CPU cores used on average over the window, per kind of role."""
        if self.first is None or self.span <= 0:
            return {}
        out: dict[str, float] = {}
        for pid, seconds in self.last.items():
            used = seconds - self.first.get(pid, seconds)
            out[self.kinds[pid]] = out.get(self.kinds[pid], 0.0) + used / self.span
        out["redis"] = (self.redis_cpu[1] - self.redis_cpu[0]) / self.span
        return out


def _cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def _redis_cpu(r: redis.Redis) -> float:
    info = r.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def bench_workers(root: Path, workers: int, job_seconds: float, window: float) -> dict:
    regions = min(workers, len(REGIONS))
    per_region = math.ceil(workers / regions)
    data = toy_data(root, regions)
    total = regions * per_region
    settings = FederationSettings(
        task="toy", mode="async", target_versions=0, time_budget=window + 30 + total * 3,
        eval_every=0, max_inflight=total, inflight_per_region=per_region, max_staleness=4096,
        task_settings={**TOY.settings({}), "job_seconds": job_seconds},
    )  # fmt: skip
    cpu = CpuWindow(total, window)

    def on_start(url: str, connection: redis.Redis) -> None:
        cpu.redis = connection

    options = RunOptions(data, settings, per_region, out_dir=root / f"run-{total}",
                         final_timeout=120)  # fmt: skip
    cpu.keys = Keys(options.namespace)
    report = run_federation(options, lambda m: None, lambda s: None, cpu, on_start=on_start)
    if cpu.span < window * 0.9:
        raise SystemExit(f"{total} workers: only {cpu.span:.0f} s measured of {window:g} "
                         "(the workers took too long to start)")  # fmt: skip
    return {"workers": total, "regions": regions, "applied_per_s": cpu.applied_per_s(),
            "ideal_per_s": total / job_seconds, "cpu": cpu.by_kind(),
            "measured_s": cpu.span, "rejected": report["updates"]["rejected"]}  # fmt: skip


# --- the model-size axis ---


def model_of(n_params: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A model shaped like the recommender: one big embedding table and a few small tensors."""
    d = 64
    rows = max(1, (n_params - 3 * d * d) // d)
    return {
        "item_id.weight": rng.normal(0, 0.1, (rows, d)).astype(np.float32),
        "mlp.0.weight": rng.normal(0, 0.1, (2 * d, d)).astype(np.float32),
        "mlp.2.weight": rng.normal(0, 0.1, (d, d)).astype(np.float32),
        "bias": np.zeros(d, dtype=np.float32),
    }


def job_id(i: int) -> str:
    return f"a-bench{i}-0123456789abcdef"


def update_id(i: int) -> str:
    return f"{job_id(i)}.{i:08x}"


def bench_aggregator(r: redis.Redis, weights: dict, payloads: list[bytes]) -> Phase:
    """The real aggregator over ``payloads``, published beforehand (as workers would)."""
    empty(r)
    keys = Keys("bench")
    settings = FederationSettings(max_staleness=len(payloads) + 1, sample_weighting=False)
    fed = federation.create(r, keys, Federation(settings, ("a",), "x", "bench", TOY.metrics,
                                                time.time()))  # fmt: skip
    ModelStore(r, keys, window=4).initialise(weights, {})
    publish = Phase.start(r)
    for i, p in enumerate(payloads):  # each an attempt of a train job the coordinator issued
        record_issued(r, keys, job_id(i), JobSpec(kind="train", region="a"))
        r.xadd(keys.update_stream("a"), {"u": p, "id": update_id(i), "region": "a"})
    published = publish.stop(r, len(payloads))
    aggregator = Aggregator(r, keys, fed)
    aggregator.store.window = 4  # keep Redis memory flat; every update here has staleness 0
    phase = Phase.start(r)
    while aggregator.version < len(payloads):
        aggregator.step(block_ms=10)
    phase.stop(r, len(payloads))
    reads = Phase.start(r)  # each train job's read of the model it trains, as a worker reads it
    for _ in payloads:
        aggregator.store.read(aggregator.version)
    read = reads.stop(r, len(payloads))
    phase.redis_cpu_other = published.redis_cpu_each + read.redis_cpu_each
    return phase


def bench_floor(r: redis.Redis, weights: dict, payloads: list[bytes], deltas: list[dict]) -> Phase:
    """The same bytes through Redis and the same numpy mixing, nothing else: each update read
    from a consumer group, acknowledged and deleted (memory a deployment must give back, as
    the aggregator's commit does) and a model-sized blob written, in one round trip."""
    empty(r)
    r.xgroup_create("floor", "g", id="0", mkstream=True)
    for p in payloads:
        r.xadd("floor", {"u": p})
    blob = b"\0" * sum(t.nbytes for t in weights.values())
    w = weights
    phase = Phase.start(r)
    done = 0
    while done < len(payloads):
        resp = r.xreadgroup("g", "c", {"floor": ">"}, count=16)
        for _stream, entries in resp:
            for entry_id, fields in entries:
                assert fields[b"u"]
                w = agg.fedasync_apply(w, w, deltas[done % len(deltas)], 0.5)
                with r.pipeline(transaction=False) as pipe:
                    pipe.set("floor:model", blob).xack("floor", "g", entry_id)
                    pipe.xdel("floor", entry_id).execute()
                done += 1
    return phase.stop(r, len(payloads))


def empty(r: redis.Redis) -> None:
    """An empty Redis with an empty AOF. Both sides append to the AOF as a deployment's Redis
    does, but its automatic rewrite is off here (``main``): at 1.6 GB of updates a run it
    forked a rewrite at random moments, which cost whichever side ran then up to half its rate.
    """
    r.flushall()
    r.bgrewriteaof()
    while int(r.info("persistence").get("aof_rewrite_in_progress", 0)):
        time.sleep(0.05)


class Phase:
    """Wall time and Redis's own CPU over one measured stretch of ``count`` updates."""

    def __init__(self, wall: float, redis_cpu: float) -> None:
        self.wall, self.redis_cpu = wall, redis_cpu
        self.per_s = 0.0
        self.redis_cpu_each = 0.0  # Redis CPU seconds per update
        self.redis_cpu_other = 0.0  # the same for its publish and its model read, measured apart

    @classmethod
    def start(cls, r: redis.Redis) -> Phase:
        return cls(time.perf_counter(), _redis_cpu(r))

    def stop(self, r: redis.Redis, count: int) -> Phase:
        self.per_s = count / (time.perf_counter() - self.wall)
        self.redis_cpu_each = (_redis_cpu(r) - self.redis_cpu) / count
        return self


def bench_size(r: redis.Redis, n_params: int, rng: np.random.Generator, pairs: int) -> dict:
    weights = model_of(n_params, rng)
    nbytes = sum(t.nbytes for t in weights.values())
    count = max(20, min(400, int(1.6e9 // nbytes)))  # seconds per run, 1.6 GB of updates at most
    deltas = [{k: rng.normal(0, 1e-3, v.shape).astype(np.float32) for k, v in weights.items()}
              for _ in range(4)]  # fmt: skip
    payloads = []
    for i in range(count):
        h = UpdateHeader(update_id(i), job_id(i), "a", "w", i, 100, 1.0, 0.1, 0.1, "fp32")
        payloads.append(encode_update(Update(h, deltas[i % len(deltas)])))
    # pairs run back to back, which one first alternating: this machine's speed drifts by 2x
    # within a minute (other tenants), so each pair's ratio is taken where both saw the same
    # machine, and the median of the pairs' ratios is the figure; the rates are each side's best
    ratios, real, floor = [], [], []
    for k in range(pairs):
        if k % 2:
            a = bench_aggregator(r, weights, payloads)
            f = bench_floor(r, weights, payloads, deltas)
        else:
            f = bench_floor(r, weights, payloads, deltas)
            a = bench_aggregator(r, weights, payloads)
        real.append(a)
        floor.append(f)
        ratios.append(a.per_s / f.per_s)
    r.flushall()
    best, best_floor = max(real, key=lambda p: p.per_s), max(floor, key=lambda p: p.per_s)
    redis_each = statistics.median(p.redis_cpu_each + p.redis_cpu_other for p in real)
    return {"params": sum(t.size for t in weights.values()), "updates": count, "pairs": pairs,
            "aggregator_per_s": best.per_s, "floor_per_s": best_floor.per_s,
            "ratio": statistics.median(ratios), "ratios": ratios,
            "mb_per_s": best.per_s * nbytes / 1e6,
            "floor_mb_per_s": best_floor.per_s * nbytes / 1e6,
            "redis_ms_per_update": redis_each * 1e3,
            "redis_updates_per_core_s": 1 / redis_each if redis_each > 0 else math.inf}  # fmt: skip


def _size(text: str) -> int:
    text = text.strip().lower()
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1], 1)
    return int(float(text.rstrip("km")) * scale)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", default="1,2,3,6,12,24,48")
    ap.add_argument("--job-seconds", type=float, default=0.1)
    ap.add_argument("--window", type=float, default=30.0, help="seconds measured per count")
    ap.add_argument("--sizes", default="100k,300k,1M,3M,10M")
    ap.add_argument("--pairs", type=int, default=5, help="aggregator/floor pairs per size")
    ap.add_argument("--skip-workers", action="store_true")
    ap.add_argument("--skip-sizes", action="store_true")
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = ap.parse_args()
    out: dict = {"workers": [], "sizes": []}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if not args.skip_workers:
            print(f"workers (toy task, each job {args.job_seconds:g} s of wall time; "
                  f"{args.window:g} s measured once every worker has started)")  # fmt: skip
            print(f"{'workers':>7} {'applied/s':>9} {'ideal/s':>8} {'share':>6}  CPU cores used")
            for n in (int(x) for x in args.workers.split(",")):
                row = bench_workers(root, n, args.job_seconds, args.window)
                out["workers"].append(row)
                cpu = ", ".join(f"{k} {v:.2f}" for k, v in sorted(row["cpu"].items()))
                share = row["applied_per_s"] / row["ideal_per_s"]
                print(f"{row['workers']:>7} {row['applied_per_s']:>9.1f} "
                      f"{row['ideal_per_s']:>8.1f} {share:>6.2f}"
                      f"  {cpu} (total {sum(row['cpu'].values()):.2f})", flush=True)  # fmt: skip
        if not args.skip_sizes:
            print(
                f"\nmodel size (best of {args.pairs} each; ratio: median of the pairs; "
                "Redis: its CPU per update for publish, aggregate and one model read)"
            )
            print(f"{'model':>11} {'updates':>7} {'aggregator/s':>12} {'floor/s':>8} "
                  f"{'ratio':>5} {'agg MB/s':>8} {'floor MB/s':>10} {'Redis ms':>8} "
                  f"{'per core/s':>10}  pair ratios")  # fmt: skip
            with RedisServer(root / "redis") as server:
                r = redis.Redis.from_url(server.url)
                r.config_set("auto-aof-rewrite-percentage", 0)  # see empty()
                rng = np.random.default_rng(0)
                for n_params in (_size(x) for x in args.sizes.split(",")):
                    row = bench_size(r, n_params, rng, args.pairs)
                    out["sizes"].append(row)
                    pairs = " ".join(f"{x:.2f}" for x in row["ratios"])
                    print(f"{row['params']:>11,} {row['updates']:>7} "
                          f"{row['aggregator_per_s']:>12.1f} {row['floor_per_s']:>8.1f} "
                          f"{row['ratio']:>5.2f} {row['mb_per_s']:>8.0f} "
                          f"{row['floor_mb_per_s']:>10.0f} {row['redis_ms_per_update']:>8.2f} "
                          f"{row['redis_updates_per_core_s']:>10.0f}  {pairs}",
                          flush=True)  # fmt: skip
    print(f"\n{'model':>11} " + " ".join(f"{e:>14}" for e in ENCODINGS))
    rng = np.random.default_rng(0)
    for n_params in (100_000, 1_000_000):
        weights = model_of(n_params, rng)
        raw = sum(t.nbytes for t in weights.values())
        cells = [f"{encoded_size(weights, e):>8,} {encoded_size(weights, e) / raw:.2f}x"
                 for e in ENCODINGS]  # fmt: skip
        print(f"{sum(t.size for t in weights.values()):>11,} " + " ".join(cells)
              + f"   (raw fp32 {raw:,} bytes)")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
