"""Attack runner: live federations under hostile regions and a careless operator.

    python scripts/attack.py [--suite all|protocol|regions] [--data data] [--seed 0]
        [--versions 1200] [--region-versions 600] [--scenarios clean,negate,...] [--json F]

``--suite regions`` (harness/robustness.py): regions that hold valid credentials and lie. One
federation per scenario with ``fedq run``'s secure defaults (one worker per region), the hostile
region's workers being fedq's real worker whose task lies (harness/hostile.py): a clean run,
``without-cn`` (cn quarantined from the start: what the others keep when none of cn's data
reaches the model, the most any defence keeps against a region that wrecks), then ``negate``
(the honest delta reversed at norm 49, inside the fixed bound), ``scale`` (x20),
``promote`` (the norm budget on three items' bias), ``drift`` (30% of its own norm on them),
``collude`` (two regions negating), ``flood`` (50 MB entries on its own stream for 20 s), and
with a validation target (90% of the clean run's): ``clean-target``, ``lie`` (top and bottom
of every range in turn), ``silent`` (fails every evaluation). It prints, per scenario against
the clean run: the final test HR@10 overall and per region (scored by the runner from the final
model, not taken from the regions' reports), the promoted items' share of the other regions'
top 10, when each hostile region was flagged, the time, the version the run stopped at and the
one ``--only-evaluated`` would serve, and for the flood Redis's peak memory and the rate during
it against the rate before it; then each goal of the robustness work as PASS or MISS. About
30 minutes on 2 cores with the defaults.

``--suite protocol``: the same federation twice, each on an embedded Valkey of its own with ACL
users and signed updates (``fedq run``'s defaults) and one hot standby coordinator and
aggregator: undisturbed, then attacked. The attacker logs in as the ``cn`` workers' ACL user
and holds ``cn``'s secret, so it can do exactly what a stolen ``cn`` credential can; it learns
other regions' job ids through the admin connection (the worst case: ids leaked). At seeded
moments it injects one class of attack (each class at least twice):

- ``poison``: updates on cn's stream with hostile shapes (``[0, 2**62]``, ``[True]``, nested),
  random bytes, a NaN header, signed with cn's secret;
- ``jobs``: on cn's queue a pickled job, a foreign function with a failure callback, a webhook
  to a loopback HTTP server, a fedq task with a success callback, and a job depending on one;
- ``squat``: valid-looking updates signed with cn's secret claiming other regions' in-flight job
  ids (header telling the truth or lying), and cn job ids nobody issued;
- ``metrics``: a bogus evaluation result, a forged HR@10 of 1.0 for an unissued job, non-JSON;
- ``pause``: SIGSTOP of another region's worker for 40 s (its job is re-run; the stale copy
  arrives later);
- ``kill``: kill -9 of the active aggregator or coordinator (restarted 0-3 s later; the
  standby takes over);
- ``operator``: ``fedq run --data`` a mistyped path, ``fedq recommend -k 0``, and every
  ``--json`` view parsed.

It ends by printing the audit and its checks: no role crashed, no traceback in any log, no
honest update lost (the audit clean, no authentic update rejected but stale copies of paused
workers), every forged or broken entry and job rejected with its reason, no webhook request,
final HR@10 within 5% of the undisturbed run's, standby take-over times under 10 s. Exits 1
if a check fails.
"""

from __future__ import annotations

import argparse
import dataclasses
import http.server
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import msgpack  # noqa: E402
import numpy as np  # noqa: E402
import redis  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from rq import Callback  # noqa: E402
from rq.job import Job  # noqa: E402
from rq.serializers import DefaultSerializer  # noqa: E402
from rq.webhook import Webhook  # noqa: E402

from harness import robustness  # noqa: E402
from harness.audit import audit  # noqa: E402
from harness.run import Role, RunOptions, run_federation  # noqa: E402
from shared.acl import Users  # noqa: E402
from shared.auth import load_key, load_password, sign  # noqa: E402
from shared.codec import Update, UpdateHeader, encode_update  # noqa: E402
from shared.errors import FedqError  # noqa: E402
from shared.jobs import SERIALIZER, TRAIN_TASK, JobSpec, new_job_id, new_update_id  # noqa: E402
from shared.keys import Keys  # noqa: E402
from shared.settings import FederationSettings  # noqa: E402
from shared.store import ModelStore  # noqa: E402

TOLERANCE = 0.05
TAKEOVER_LIMIT = 10.0
PAUSE_SECONDS = 40.0
CLASSES = ("poison", "jobs", "squat", "metrics", "pause", "kill", "operator")
HOSTILE = "cn"
FEDQ = [sys.executable, "-m", "cli"]


class _Hooks(http.server.BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's spelling
        self.hits.append(self.path)
        self.send_response(204)
        self.end_headers()

    do_POST = do_GET

    def log_message(self, *_args: object) -> None:
        pass


@dataclass
class Attack:
    """``run_federation``'s ``disturb`` hook: the hostile region and the careless operator."""

    events: int
    seed: int
    target_versions: int
    data: Path
    out: Path
    namespace: str
    hook_url: str
    schedule: list[tuple[int, str]] = field(default_factory=list)
    injected: Counter = field(default_factory=Counter)  # class -> events
    entries: Counter = field(default_factory=Counter)  # class -> stream entries sent
    jobs_planted: list[str] = field(default_factory=list)
    dependents: list[str] = field(default_factory=list)
    operator_failures: list[str] = field(default_factory=list)
    takeovers: list[tuple[str, float]] = field(default_factory=list)
    paused: list[tuple[float, Role]] = field(default_factory=list)
    down: list[tuple[float, Role]] = field(default_factory=list)
    watching: list[tuple[str, int, float]] = field(default_factory=list)  # role, old pid, since
    url: str | None = None
    threads: list[threading.Thread] = field(default_factory=list)

    def __post_init__(self) -> None:
        rng = random.Random(self.seed)
        kinds = [*CLASSES, *CLASSES]
        kinds += [rng.choice(CLASSES) for _ in range(max(0, self.events - len(kinds)))]
        rng.shuffle(kinds)
        lo, hi = int(0.05 * self.target_versions), int(0.85 * self.target_versions)
        self.schedule = sorted(zip(sorted(rng.randint(max(lo, 1), max(hi, 2))
                                          for _ in kinds), kinds, strict=True))  # fmt: skip
        self.rng = rng
        self.keys = Keys(self.namespace)

    # --- wiring ---

    def attach(self, url: str) -> None:
        """The run's Redis is up: log in as the admin (to learn ids) and as cn's workers."""
        self.url = url
        keys_dir = self.out / "keys"
        users = Users(self.namespace)

        def login(user: str) -> redis.Redis:
            return redis.Redis.from_url(url, username=user, password=load_password(keys_dir, user))

        self.admin, self.cn = login(users.admin), login(users.worker(HOSTILE))
        self.secret = load_key(keys_dir, HOSTILE)

    def __call__(self, roles: list[Role], respawn, version: int, done: bool) -> None:
        now = time.monotonic()
        for due, role in list(self.paused):
            if done or now >= due:
                os.kill(role.process.pid, signal.SIGCONT)
                self.paused.remove((due, role))
        for due, role in list(self.down):
            if done or now >= due:
                roles.append(respawn(role))
                self.down.remove((due, role))
        self._watch_takeovers(roles)
        if done:
            for thread in self.threads:
                thread.join()
        while not done and self.schedule and version >= self.schedule[0][0]:
            _, kind = self.schedule.pop(0)
            getattr(self, f"_{kind}")(roles)
            self.injected[kind] += 1

    # --- the attacks ---

    def _poison(self, _roles) -> None:
        header = UpdateHeader("x", "x", HOSTILE, "w", 0, 10, 1.0, 0.1, 0.1, "fp32", 0.0, None,
                              10).to_wire()  # fmt: skip
        bodies = [{"tensors": {"a": ["fp32", shape, b"", 1.0]}}
                  for shape in ([0, 2**62], [True], [[3]], [2.0])]  # fmt: skip
        payloads = [msgpack.packb({"schema": 1, "kind": "update", "header": header, **b})
                    for b in bodies]  # fmt: skip
        payloads.append(os.urandom(1024))
        nan = dict(header, train_loss=float("nan"))
        tensors = {"a": ["fp32", [1], b"\0" * 4, 1.0]}
        payloads.append(msgpack.packb({"schema": 1, "kind": "update", "header": nan,
                                       "tensors": tensors}))  # fmt: skip
        for payload in payloads:
            job = new_job_id(HOSTILE, "t999999")
            self._send_update(new_update_id(job), payload)
        self.entries["poison"] += len(payloads)

    def _jobs(self, _roles) -> None:
        n = len(self.jobs_planted)
        spec = JobSpec(kind="train", region=HOSTILE).to_json()
        made = [
            Job.create("pathlib.Path.touch", args=("/tmp/fedq-pwned",), id=f"{HOSTILE}-evil-p{n}",
                       connection=self.cn, serializer=DefaultSerializer),
            Job.create("builtins.print", args=("pwned",), id=f"{HOSTILE}-evil-c{n}",
                       connection=self.cn, serializer=SERIALIZER, on_failure=Callback("this.s")),
            Job.create("os.getcwd", id=f"{HOSTILE}-evil-w{n}", connection=self.cn,
                       serializer=SERIALIZER,
                       webhooks=[Webhook(self.hook_url, "failed", method="POST")]),
            Job.create(TRAIN_TASK, args=(spec,), id=f"{HOSTILE}-evil-s{n}", connection=self.cn,
                       serializer=SERIALIZER, on_success=Callback("builtins.print")),
        ]  # fmt: skip
        dependent = Job.create("os.getcwd", id=f"{HOSTILE}-evil-d{n}", connection=self.cn,
                               serializer=SERIALIZER, depends_on=[made[1].id])  # fmt: skip
        queue_key = f"rq:queue:{self.keys.queue(HOSTILE)}"
        with self.cn.pipeline(transaction=False) as pipe:
            for job in made:
                job.save(pipeline=pipe)
                pipe.rpush(queue_key, job.id)
            dependent.set_status("deferred", pipeline=pipe)
            dependent.save(pipeline=pipe)
            pipe.sadd(made[1].dependents_key, dependent.id)
            pipe.execute()
        self.jobs_planted += [job.id for job in made]
        self.dependents.append(dependent.id)

    def _squat(self, _roles) -> None:
        others = [r for r in self._regions() if r != HOSTILE]
        ids = [(r, k.decode()) for r in others for k in self.admin.hkeys(self.keys.inflight(r))]
        victims = self.rng.sample(ids, min(4, len(ids)))
        weights = ModelStore(self.admin, self.keys).read_current()
        delta = {k: np.full(v.shape, 1e-4, np.float32) for k, v in weights.weights.items()}
        for region, job_id in victims:
            update_id = new_update_id(job_id)
            for claim in (region, HOSTILE):  # the header tells the truth, or lies
                self._send_update(update_id, self._update(update_id, job_id, claim, weights, delta))
                self.entries["squat"] += 1
        for _ in range(2):  # cn jobs nobody issued: would steer the model by volume
            job_id = new_job_id(HOSTILE, "t888888")
            update_id = new_update_id(job_id)
            self._send_update(update_id, self._update(update_id, job_id, HOSTILE, weights, delta))
            self.entries["squat"] += 1

    def _metrics(self, _roles) -> None:
        forged = new_job_id(HOSTILE, "e0")
        results = [
            json.dumps({"version": 0, "region": HOSTILE, "job_id": forged, "test": "bogus",
                        "validation": {}, "at": 1.0}).encode(),
            json.dumps({"version": 0, "region": HOSTILE, "job_id": forged, "at": 1.0,
                        "test": dict.fromkeys(["users", "hr@10", "ndcg@10", "hr@10_sampled",
                                               "ndcg@10_sampled", "cold_start.hr@10",
                                               "cold_start.n", "cold_start.random_hr@10"], 1.0),
                        "validation": {"users": 1.0, "hr@10": 1.0, "ndcg@10": 1.0}}).encode(),
            b"\xff not json",
        ]  # fmt: skip
        for payload in results:
            fields = {"m": payload, "id": new_update_id(forged), "region": HOSTILE,
                      "sig": sign(self.secret, payload)}  # fmt: skip
            self.cn.xadd(self.keys.evaluation_stream(HOSTILE), fields)
        self.entries["metrics"] += len(results)

    def _pause(self, roles: list[Role]) -> None:
        """Another region's worker stops mid-job (a long GC, a frozen VM): its job is re-run
        elsewhere, and its own copy arrives stale when it wakes up."""
        workers = [r for r in roles if r.kind == "worker" and not r.name.startswith(
            f"worker-{HOSTILE}-") and all(r is not p for _, p in self.paused)]  # fmt: skip
        busy = set()  # pids of workers running a job now (worker names end in the pid)
        for region in self._regions():
            for job_id in self.admin.hkeys(self.keys.inflight(region)):
                name = self.admin.hget(Job.key_for(job_id.decode()), "worker_name")
                if name:
                    busy.add(int(name.decode().rsplit(".", 1)[1]))
        workers = [r for r in workers if r.process.pid in busy] or workers
        if workers:
            victim = self.rng.choice(workers)
            os.kill(victim.process.pid, signal.SIGSTOP)
            self.paused.append((time.monotonic() + PAUSE_SECONDS, victim))

    def _kill(self, roles: list[Role]) -> None:
        role = ("aggregator", "coordinator")[self.injected["kill"] % 2]  # each in turn
        holder = self.admin.get(self.keys.lease(role))
        pid = int(holder.decode().split(":")[1]) if holder else None
        victim = next((r for r in roles if r.process.pid == pid), None)
        if victim is None:
            return
        victim.process.send_signal(signal.SIGKILL)
        victim.process.wait()
        roles.remove(victim)
        self.down.append((time.monotonic() + self.rng.uniform(0, 3), victim))
        self.watching.append((role, pid, time.monotonic()))

    def _operator(self, _roles) -> None:
        """In a thread: the commands take seconds, and the poll loop measures take-overs."""
        thread = threading.Thread(target=self._operator_mistakes, daemon=True)
        thread.start()
        self.threads.append(thread)

    def _operator_mistakes(self) -> None:
        env = {**os.environ, "FEDQ_REDIS_URL": self.url, "FEDQ_NAMESPACE": self.namespace,
               "FEDQ_KEYS": str((self.out / "keys").resolve())}  # fmt: skip
        typo = self.out / "no-such-data"
        checks = {
            "run --data typo": ([*FEDQ, "run", "--data", str(typo)],
                                lambda p: p.returncode == 2 and not typo.exists()),
            "recommend -k 0": ([*FEDQ, "recommend", "--data", str(self.data), "--region",
                                HOSTILE, "--user", "1", "-k", "0"], lambda p: p.returncode == 2),
        }  # fmt: skip
        for view in ("status", "updates", "rejections", "models", "audit", "queues", "jobs"):
            checks[f"{view} --json"] = ([*FEDQ, view, "--json"], _json_ok)
        for name, (command, ok) in checks.items():
            proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
            if not ok(proc) or "Traceback" in proc.stderr:
                self.operator_failures.append(f"{name}: exit {proc.returncode} "
                                              f"{proc.stderr.strip()[-200:]}")  # fmt: skip

    # --- helpers ---

    def _regions(self) -> list[str]:
        return json.loads(self.admin.hget(self.keys.config, "regions"))

    def _update(self, update_id, job_id, region, model, delta) -> bytes:
        header = UpdateHeader(update_id, job_id, region, f"{HOSTILE}.evil.1", model.version, 1024,
                              1.0, 0.1, 0.1, "fp32", time.time(), None, 1000)  # fmt: skip
        return encode_update(Update(header, delta))

    def _send_update(self, update_id: str, payload: bytes) -> None:
        fields = {"u": payload, "id": update_id, "region": HOSTILE,
                  "sig": sign(self.secret, payload)}  # fmt: skip
        self.cn.xadd(self.keys.update_stream(HOSTILE), fields)

    def _watch_takeovers(self, roles: list[Role]) -> None:
        for role, old, since in list(self.watching):
            holder = self.admin.get(self.keys.lease(role))
            pid = int(holder.decode().split(":")[1]) if holder else None
            if pid is not None and pid != old:
                self.takeovers.append((role, time.monotonic() - since))
                self.watching.remove((role, old, since))


def _json_ok(proc: subprocess.CompletedProcess) -> bool:
    try:
        json.loads(proc.stdout)
    except ValueError:
        return False
    return proc.returncode in (0, 1)  # audit exits 1 while updates are still in flight


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--suite",
        choices=("protocol", "regions", "all"),
        default="all",
        help="protocol: forged and broken input; regions: hostile regions with valid "
        "credentials (harness/robustness.py)",
    )
    ap.add_argument("--events", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", type=Path, default=Path("data"))
    ap.add_argument("--versions", type=int, default=1200, help="the protocol suite's")
    ap.add_argument("--region-versions", type=int, default=600, help="the regions suite's")
    ap.add_argument(
        "--scenarios",
        default=",".join(s.name for s in robustness.SCENARIOS),
        help="the regions suite's, comma-separated",
    )
    ap.add_argument("--workers-per-region", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("runs/attack"))
    ap.add_argument("--json", type=Path, help="write the regions suite's figures here")
    args = ap.parse_args()
    if not (args.data / "meta.json").exists():
        from tasks.recommender.task import TASK

        print(f"generating the built-in data set in {args.data}", flush=True)
        TASK.generate(args.data, seed=0)
    console = Console(width=200)  # the tables are wide; files and pipes get them whole
    status = 0
    if args.suite in ("regions", "all"):
        status |= regions_suite(args, console)
    if args.suite in ("protocol", "all"):
        status |= protocol_suite(args, console)
    return status


def regions_suite(args: argparse.Namespace, console: Console) -> int:
    """Each scenario of ``harness.robustness`` against the clean run of the same settings."""
    wanted = [n.strip() for n in args.scenarios.split(",") if n.strip()]
    known = {s.name: s for s in robustness.SCENARIOS}
    unknown = [n for n in wanted if n not in known]
    if unknown:
        console.print(f"unknown scenarios {unknown}; choose from {', '.join(known)}")
        return 2
    if "clean" not in wanted:
        wanted.insert(0, "clean")
    if any(known[n].stop_on_metric for n in wanted) and "clean-target" not in wanted:
        wanted.insert(wanted.index("clean") + 1, "clean-target")
    settings = robustness.suite_settings(args.region_versions, args.seed)
    results: dict[str, dict] = {}
    for name in wanted:
        scenario = known[name]
        run_settings = dataclasses.replace(settings, robust=scenario.robust)
        if scenario.stop_on_metric:
            target = round(0.9 * (results["clean"]["validation"] or 0.0), 4)
            run_settings = robustness.with_target(run_settings, target)
        goal = (
            f", target validation {run_settings.target_metric}" if scenario.stop_on_metric else ""
        )
        console.print(f"[bold]{name}[/]: up to {run_settings.target_versions} versions{goal}")
        out = args.out / "regions" / name
        try:
            results[name] = robustness.run_scenario(scenario, args.data, run_settings, out, print)
        except FedqError as exc:  # the run failed: say so, go on with the others
            console.print(f"  [red]{name} failed: {exc}[/]")
            if name == "clean":
                return 1
            continue
        console.print(f"  {_summary(results[name])}")
        if args.json:  # after every run: a long suite's figures survive a later failure
            args.json.write_text(json.dumps(results, indent=2) + "\n")
    return _regions_report(console, results)


def _summary(r: dict) -> str:
    flagged = ", ".join(f"{k} at {v}" for k, v in r["flagged_at"].items()) or "none"
    return (
        f"HR@10 {r['headline']:.4f}, {r['versions']} versions in {r['seconds']:.0f}s, "
        f"flagged: {flagged}, refused: {r['rejected']}"
    )


def _others_share(r: dict, hostile: set[str]) -> float:
    shares = [v for k, v in r["promoted_share"].items() if k not in hostile]
    return sum(shares) / max(1, len(shares))


GUARD_REASONS = ("direction", "influence", "suspected")


def _near(version: int, reference: int) -> bool:
    """Stopped at the same evaluation as the reference, give or take one evaluation's worth of
    versions (a federation's pace varies from run to run)."""
    return abs(version - reference) <= max(50, 0.15 * reference)


def _regions_report(console: Console, results: dict[str, dict]) -> int:
    clean = results["clean"]
    table = Table(title="hostile regions with valid credentials, against the clean run")
    columns = (
        "scenario",
        "HR@10",
        "x clean",
        "others' HR@10",
        "x clean",
        "per region",
        "promoted",
        "x clean",
        "flagged at",
        "seconds",
        "x clean",
        "stopped at",
        "served",
    )
    for column in columns:
        table.add_column(column, justify="left" if column == "scenario" else "right")
    checks = []
    for name, r in results.items():
        hostile = set(r["hostile"])
        share, share_clean = _others_share(r, hostile), _others_share(clean, hostile)
        ratio = r["headline"] / clean["headline"] if clean["headline"] else float("nan")
        others = [k for k in r["headline_by_region"] if k not in hostile]
        clean_others = _combined(clean, others)
        others_ratio = r["headline_others"] / clean_others if clean_others else float("nan")
        table.add_row(
            name,
            f"{r['headline']:.4f}",
            f"{ratio:.3f}",
            f"{r['headline_others']:.4f}",
            f"{others_ratio:.3f}",
            " ".join(f"{k} {v:.3f}" for k, v in r["headline_by_region"].items()),
            f"{share:.2%}",
            f"{share / share_clean:.2f}" if share_clean else "-",
            ", ".join(f"{k} {v}" for k, v in r["flagged_at"].items()) or "-",
            f"{r['seconds']:.0f}",
            f"{r['seconds'] / clean['seconds']:.2f}",
            str(r["versions"]),
            str(r["served"]),
        )
        checks += _checks(name, r, results, (ratio, others_ratio), share, share_clean)
    console.print(table)
    if "without-cn" in results:
        r = results["without-cn"]
        others = [k for k in r["headline_by_region"] if k != "cn"]
        kept = r["headline_others"] / _combined(clean, others)
        console.print(
            f"without cn's data at all (quarantined from the start) the other regions' shoppers "
            f"keep {kept:.3f}x their clean HR@10: the most any defence keeps against a cn that "
            "sends nothing useful"
        )
    for text, ok in checks:
        console.print(f"{'[green]PASS[/]' if ok else '[red]MISS[/]'} {text}")
    return 0 if all(ok for _, ok in checks) else 1


def _combined(r: dict, regions: list[str]) -> float:
    """The clean run's HR@10 over ``regions``, weighted by their test shoppers (the runner
    keeps per-region figures; the weights are the regions' test sizes)."""
    sizes = r.get("test_users", {})
    total = sum(sizes.get(k, 0.0) for k in regions)
    if not total:
        return float("nan")
    return sum(r["headline_by_region"][k] * sizes.get(k, 0.0) for k in regions) / total


def _checks(name: str, r: dict, results: dict, ratios: tuple, share: float, share_clean: float):
    clean = results["clean"]
    ratio, others = ratios
    out = []
    if name in ("negate", "scale", "promote", "drift"):
        text = f"{name}: HR@10 >= 0.95x clean ({ratio:.3f}x; others' shoppers {others:.3f}x)"
        out.append((text, ratio >= 0.95))
    if name in ("promote", "drift"):
        text = f"{name}: promoted share <= 1.25x clean ({share:.2%} vs {share_clean:.2%})"
        out.append((text, share <= 1.25 * share_clean))
    if name == "collude":
        text = f"collude: HR@10 >= 0.9x clean ({ratio:.3f}x; others' shoppers {others:.3f}x)"
        out.append((text, ratio >= 0.9))
    if name in ("lie", "silent") and "clean-target" in results:
        base = results["clean-target"]
        text = (
            f"{name}: stopped at version {r['versions']} (clean {base['versions']}), "
            f"--only-evaluated serves {r['served']} (clean {base['served']})"
        )
        out.append((text, _near(r["versions"], base["versions"]) and r["served"] is not None))
    if "flood" in r:
        f = r["flood"]
        rate = (f["rate_during"] or 0.0) / f["rate_before"] if f["rate_before"] else 0.0
        rss = max(
            r["peak_rss_mb"].get(k, 0.0) / max(clean["peak_rss_mb"].get(k, 1.0), 1.0)
            for k in r["peak_rss_mb"]
        )
        cap = f"Redis peak {r['redis_peak_mb']} MB within its cap {r['redis_cap_mb']} MB"
        out += [
            (f"flood: {cap}", r["redis_peak_mb"] <= r["redis_cap_mb"]),
            (f"flood: rate during it {rate:.2f}x the rate before (>= 0.8)", rate >= 0.8),
            (f"flood: no role above 2x its clean peak memory ({rss:.2f}x)", rss <= 2.0),
        ]
    if name == "clean-unguarded":
        cost = 1 - clean["headline"] / r["headline"] if r["headline"] else float("nan")
        text = f"the guard costs a clean run {cost:.1%} of its HR@10 (within 2%)"
        out.append((text, abs(cost) <= 0.02))
    if name in ("clean", "clean-target"):
        refused = sum(v for k, v in r["rejected"].items() if k in GUARD_REASONS)
        total = r["updates"]["applied"] + refused
        text = f"{name}: {refused} of {total} honest updates refused by the guard (< 1%)"
        out.append((text, refused < 0.01 * max(total, 1)))
    return out


def protocol_suite(args: argparse.Namespace, console: Console) -> int:
    settings = FederationSettings(target_versions=args.versions, seed=args.seed,
                                  eval_every=300, max_inflight=os.cpu_count() or 2,
                                  signed_updates=True)  # fmt: skip
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hooks)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    hook_url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    reports, audits, attack = {}, {}, None
    try:
        for name in ("undisturbed", "attacked"):
            out = args.out / name
            console.print(f"[bold]{name}[/]: {args.versions} versions, seed {args.seed}")
            disturb = Attack(args.events, args.seed, args.versions, args.data, out, "fedq",
                             hook_url) if name == "attacked" else None  # fmt: skip
            options = RunOptions(args.data, settings, args.workers_per_region, out_dir=out,
                                 acl=True, standbys=1)  # fmt: skip

            def started(url: str, _connection: redis.Redis, d=disturb) -> None:
                if d is not None:
                    d.attach(url)

            def finished(connection: redis.Redis, n=name, d=disturb) -> None:
                audits[n] = audit(connection, Keys("fedq"))
                if d is not None:
                    audits["rejections"] = connection.xrange(Keys("fedq").rejections)
                    audits["dependents"] = [Job.fetch(j, connection=connection,
                                                      serializer=SERIALIZER).get_status()
                                            for j in d.dependents]  # fmt: skip

            reports[name] = run_federation(options, lambda m: None, lambda s: None, disturb,
                                           on_start=started, on_finish=finished)  # fmt: skip
            attack = disturb or attack
    finally:
        server.shutdown()
    return _report(console, attack, reports, audits, args.out)


def _report(console: Console, attack: Attack, reports: dict, audits: dict, out: Path) -> int:
    calm, wild = reports["undisturbed"], reports["attacked"]
    hr_calm, hr_wild = calm["final"]["overall"]["hr@10"], wild["final"]["overall"]["hr@10"]
    gap = abs(hr_wild - hr_calm) / hr_calm
    rejections = [{k.decode(): v.decode(errors="replace") for k, v in f.items()}
                  for _, f in audits["rejections"]]  # fmt: skip
    by_entry = Counter(r["reason"] for r in rejections if "claimed" in r)
    refused = {r["id"] for r in rejections if r["reason"] == "job_refused"}
    not_updates = ("job_refused", "replayed")
    authentic = Counter(r["reason"] for r in rejections
                        if "claimed" not in r and r["reason"] not in not_updates)  # fmt: skip
    sent = sum(attack.entries.values())
    tracebacks = sorted(str(p) for p in out.glob("*/logs/*.log") if "Traceback" in p.read_text(
        errors="replace"))  # fmt: skip
    table = Table(title="attack run")
    for column in ("figure", "undisturbed", "attacked"):
        table.add_column(column, justify="left" if column == "figure" else "right")
    rows = [
        ("attack events", "0", ", ".join(f"{k} {n}" for k, n in sorted(attack.injected.items()))),
        ("forged or broken entries sent", "0",
         ", ".join(f"{k} {n}" for k, n in sorted(attack.entries.items()))),
        ("  rejected before bookkeeping", "0",
         f"{sum(by_entry.values())}: " + ", ".join(f"{k} {n}" for k, n in by_entry.items())),
        ("hostile jobs planted / refused", "0", f"{len(attack.jobs_planted)} / "
         f"{len(refused & set(attack.jobs_planted))}"),
        ("webhook requests", "0", str(len(_Hooks.hits))),
        ("authentic updates rejected", str(calm["updates"]["rejected"]), str(dict(authentic))),
        ("updates applied", calm["updates"]["applied"], wild["updates"]["applied"]),
        ("train jobs retried", calm["updates"]["jobs_retried"], wild["updates"]["jobs_retried"]),
        ("duplicates dropped", calm["updates"]["duplicates"], wild["updates"]["duplicates"]),
        ("standby take-overs (s)", "-", ", ".join(f"{r} {s:.1f}" for r, s in attack.takeovers)),
        ("seconds", f"{calm['seconds']:.0f}", f"{wild['seconds']:.0f}"),
        ("final HR@10", f"{hr_calm:.4f}", f"{hr_wild:.4f}"),
    ]  # fmt: skip
    for row in rows:
        table.add_row(*(str(x) for x in row))
    console.print(table)
    kills = attack.injected["kill"]
    checks = [
        ("no role crashed (the run would have stopped) and no traceback in any log",
         not tracebacks),
        *((f"{name}: the audit is clean (nothing lost, nothing applied twice, every applied "
           "update from an issued job)", audits[name].ok) for name in ("undisturbed", "attacked")),
        ("no authentic update rejected but stale copies of paused workers",
         set(authentic) <= {"stale"}),
        (f"every forged or broken entry rejected with its reason ({sent} sent)",
         sum(by_entry.values()) == sent),
        ("every hostile job refused, no dependent enqueued, no webhook request",
         refused >= set(attack.jobs_planted) and set(audits["dependents"]) <= {"deferred"}
         and not _Hooks.hits),
        ("every operator mistake a clear error, every --json view JSON",
         not attack.operator_failures),
        (f"standby took over within {TAKEOVER_LIMIT:.0f} s after each of {kills} kill(s)",
         len(attack.takeovers) == kills and all(s < TAKEOVER_LIMIT for _, s in attack.takeovers)),
        (f"final HR@10 within {TOLERANCE:.0%} of undisturbed (gap {gap:.1%})", gap <= TOLERANCE),
    ]  # fmt: skip
    for name in ("undisturbed", "attacked"):
        for problem in audits[name].problems:
            console.print(f"  [red]{name}: {problem}[/]")
    for failure in attack.operator_failures:
        console.print(f"  [red]operator: {failure}[/]")
    for path in tracebacks:
        console.print(f"  [red]traceback in {path}[/]")
    for text, ok in checks:
        console.print(f"{'[green]PASS[/]' if ok else '[red]FAIL[/]'} {text}")
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
