"""``fedq run``: a whole federation on one machine, as separate processes, with a report.

It starts a redis-server of its own (in the run directory; or uses ``--redis-url``), initialises
the federation, starts the aggregator, the coordinator and K workers per region as ``fedq``
processes, shows progress until the coordinator reaches its target and the final version has
been evaluated by every region, stops everything it started (and only that), and reports the
final metrics beside the local-only and centralized baselines, with the learning curve.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import redis

from coordinator import service
from coordinator.quota import UPDATE_FACTOR, UPDATE_MARGIN
from harness.verdict import RunFailed, TaskBroken, Verdict, problems
from reporting.history import collect
from shared.auth import ACL_FILE, KEYS_ENV, init_keys, init_users, load_password
from shared.errors import FedqError
from shared.evaluations import accepted_results
from shared.keys import Keys
from shared.processes import stop_processes
from shared.redis_server import RedisServer, redact, resolve_maxmemory
from shared.resilience import REDIS_DOWN, Outage, retry_redis
from shared.settings import FederationSettings

Say = Callable[[str], None]
STOP_GRACE = 30.0
# how long fedq run waits through a Redis outage (its roles wait for ever): long enough for an
# operator to restart a crashed server on its AOF, short enough that a Redis gone for good
# ends the run with a line rather than a hang
REDIS_PATIENCE = 300.0
T = TypeVar("T")
MIN_BULK = 1024 * 1024  # the smallest proto-max-bulk-len Redis accepts


class RedisGone(FedqError):
    """Redis stayed unreachable (or refused writes) for longer than the run's patience."""


class Patient:
    """fedq run's own Redis calls, retried through an outage like its roles' (backoff, one line
    when it starts, one per 10 s, one when Redis is back) for at most ``patience`` seconds.

    ``fedq run`` is the federation's supervisor: when it exited on the first refused connection
    ("Error 111") it stopped every role that was riding the outage out and shut down the
    restarted server, so an outage its roles survive ended the run."""

    def __init__(self, say: Say, url: str, patience: float) -> None:
        self.outage = Outage(say, "fedq run")
        self.url = url
        self.patience = patience

    def __call__(self, action: Callable[[], T]) -> T:
        try:
            return retry_redis(action, self.outage, should_stop=self._exhausted)
        except REDIS_DOWN as exc:
            brief = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
            raise RedisGone(
                f"Redis at {redact(self.url)} unreachable for more than "
                f"{self.patience:.0f}s ({brief}): giving up"
            ) from None

    def _exhausted(self) -> bool:
        since = self.outage.since
        return since is not None and time.monotonic() - since >= self.patience


@dataclass(frozen=True)
class RunOptions:
    data_dir: Path
    settings: FederationSettings
    workers_per_region: int = 2
    slowdown: dict[str, float] = field(default_factory=dict)
    out_dir: Path = Path("runs/latest")
    redis_url: str | None = None
    namespace: str = "fedq"
    final_timeout: float = 600.0
    acl: bool = False  # its Redis (>= 7) runs with ACL users; every role logs in as its own
    standbys: int = 0  # hot standby coordinators and aggregators besides the active ones
    redis_host: str = "127.0.0.1"  # where its own Redis listens (the WAN harness: the hub's)
    redis_patience: float = REDIS_PATIENCE  # seconds it waits through a Redis outage
    redis_maxmemory: int | None = None  # its own Redis's cap in bytes [default_maxmemory()]
    # the command prefix that starts a role on its host (kind, region or None): the WAN harness
    # puts each region's workers in that region's network namespace
    placement: Callable[[str, str | None], list[str]] | None = None


@dataclass
class Role:
    name: str
    kind: str  # worker | aggregator | coordinator
    args: list[str]
    process: subprocess.Popen
    peak_rss_mb: float = 0.0
    region: str | None = None  # a worker's

    def sample_rss(self) -> None:
        self.peak_rss_mb = max(self.peak_rss_mb, peak_rss_mb(self.process.pid))


# called on every poll with the roles (which it may kill and replace), a way to start a role
# again, the current version and whether the target is reached: the chaos runner's hook
Disturb = Callable[[list[Role], Callable[[Role], Role], int, bool], None]


def run_federation(
    options: RunOptions,
    say: Say,
    progress: Callable[[dict], None],
    disturb: Disturb | None = None,
    on_start: Callable[[str, redis.Redis], None] | None = None,
    on_finish: Callable[[redis.Redis], None] | None = None,
) -> dict:
    """Run to the target; returns the report (also written to ``out_dir/report.json``).

    ``on_start`` is called with the URL and an admin connection once the federation exists,
    ``on_finish`` with the connection after the final evaluation, before anything stops (the
    attack runner's hooks)."""
    out = options.out_dir
    (out / "logs").mkdir(parents=True, exist_ok=True)
    server = None
    env = {**os.environ, "FEDQ_NAMESPACE": options.namespace}
    if options.redis_url is None or options.acl or options.settings.signed_updates:
        # a run of its own: its own secrets and users (or none), never those of FEDQ_HOME,
        # whose users would try to log in to a Redis that has no ACL
        shutil.rmtree(out / "keys", ignore_errors=True)
        env[KEYS_ENV] = str((out / "keys").resolve())
    if options.redis_url is None:
        shutil.rmtree(out / "redis", ignore_errors=True)  # a reused run directory starts afresh
        maxmemory = options.redis_maxmemory
        if maxmemory is None:
            maxmemory = resolve_maxmemory()
        server = RedisServer(out / "redis", host=options.redis_host, maxmemory=maxmemory)
        if options.acl:
            server.acl_file, server.admin = _run_users(out / "keys", options)
        server.start()
        url = server.url
        say(f"redis-server on {url} (data in {out / 'redis'})"
            + (", ACL users per role" if options.acl else ""))  # fmt: skip
    elif options.acl:
        raise FedqError("--acl starts a Redis of the run's own with its users: without --redis-url")
    else:
        url = options.redis_url
    env["FEDQ_REDIS_URL"] = url
    roles: list[Role] = []
    patient = Patient(say, url, options.redis_patience)
    seen: dict = {}  # the last progress it showed: the report of a run Redis left for good

    def shown(state: dict) -> None:
        seen.update(state)
        progress(state)

    began = time.time()
    try:
        # a timeout, so a server that hangs (stopped, swapping) is an outage, not a hang
        timeouts = {"socket_timeout": 30.0, "socket_connect_timeout": 5.0}
        connection = (
            server.client(**timeouts)
            if server is not None
            else redis.Redis.from_url(url, **timeouts)
        )
        keys = Keys(options.namespace)
        if connection.exists(keys.config):
            raise FedqError(
                f"namespace {options.namespace!r} at {redact(url)} already holds a federation; "
                "pick another --namespace"
            )
        fed = service.initialise(connection, keys, options.data_dir, options.settings)
        if server is not None:
            bound_requests(connection, keys)
        started = time.time()
        if fed.settings.signed_updates:
            init_keys(out / "keys", fed.regions)
        if on_start is not None:
            on_start(url, connection)

        def spawn(name: str, kind: str, args: list[str], region: str | None = None) -> Role:
            prefix = options.placement(kind, region) if options.placement else []
            return _spawn(name, kind, args, env, out, prefix, region)

        roles.append(spawn("aggregator", "aggregator", ["aggregator"]))
        for i in range(options.standbys):  # a hot standby: takes over if the active one dies
            roles.append(spawn(f"aggregator-standby{i}", "aggregator", ["aggregator"]))
        for region in fed.regions:
            slow = options.slowdown.get(region, 1.0)
            for k in range(options.workers_per_region):
                args = ["worker", "--region", region, "--data", str(options.data_dir),
                        "--slowdown", str(slow), "--task", fed.settings.task]  # fmt: skip
                roles.append(spawn(f"worker-{region}-{k}", "worker", args, region))
        coordinate = ["coordinator", "--data", str(options.data_dir)]
        roles.append(spawn("coordinator", "coordinator", coordinate))
        for i in range(options.standbys):
            roles.append(spawn(f"coordinator-standby{i}", "coordinator", coordinate))
        verdict = Verdict(connection, keys, fed, say)
        final_version = _watch(
            connection,
            keys,
            fed,
            roles,
            options,
            shown,
            disturb,
            lambda role: spawn(role.name, role.kind, role.args, role.region),
            patient,
            verdict,
        )
        seconds = time.time() - started
        for role in roles:
            role.sample_rss()
        # the regions whose final result will not come are left out of every point (named)
        evaluated = [r for r in fed.regions if r not in verdict.missing]
        report = patient(lambda: collect(connection, keys, fed, evaluated))
        final = next((p for p in report["curve"] if p["version"] == final_version), None)
        report.update({
            "workers_per_region": options.workers_per_region,
            "slowdown": options.slowdown,
            "seconds": round(seconds, 2),
            "versions": final_version,
            "final": {"overall": final["metrics"], "regions": final["regions"]} if final else None,
            "missing": verdict.missing,
            "peak_rss_mb": _peak_by_kind(roles),
        })  # fmt: skip
        report["problems"] = problems(report, verdict, verdict.missing)
        (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        if final is None or not report["updates"]["applied"] or not final_version:
            raise RunFailed(f"{report['problems'][0]}; report: {out / 'report.json'}")
        if on_finish is not None:
            on_finish(connection)
        return report
    except TaskBroken as exc:
        # what it has: the curve so far, the failures, and why it stopped
        report = patient(lambda: collect(connection, keys, fed))
        version = patient(lambda: int(connection.get(keys.version) or 0))
        report.update(
            seconds=round(time.time() - began, 2),
            error=str(exc),
            versions=version,
            final=None,
            missing={},
            peak_rss_mb=_peak_by_kind(roles),
        )
        report["problems"] = problems(report, verdict, {}, stopped=str(exc))
        (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        raise TaskBroken(f"{exc}; report: {out / 'report.json'}") from None
    except RedisGone as exc:
        # what it knew before Redis went: the federation's own record is in Redis's AOF
        for role in roles:
            role.sample_rss()
        partial = {
            "error": str(exc),
            "seconds": round(time.time() - began, 2),
            "progress": seen,
            "peak_rss_mb": _peak_by_kind(roles),
        }
        (out / "report.json").write_text(json.dumps(partial, indent=2) + "\n")
        raise RedisGone(f"{exc}; what it saw is in {out / 'report.json'}") from None
    finally:
        stop_roles(roles)
        if server is not None:
            server.stop()


def bound_requests(connection: redis.Redis, keys: Keys) -> int:
    """Its own server refuses any request argument longer than the largest honest entry (an
    fp32 delta of the model with its header, at least Redis's minimum of 1 MiB): a region
    flooding its stream with 50 MB entries is refused before a byte is stored or written to the
    AOF (the aggregator's janitor bounds what is smaller, ``coordinator/quota.py``). Returns
    the bound."""
    version = int(connection.get(keys.version) or 0)
    blob = connection.strlen(keys.model(version))
    bound = max(MIN_BULK, int(blob * UPDATE_FACTOR) + UPDATE_MARGIN)
    connection.config_set("proto-max-bulk-len", bound)
    return bound


def _run_users(directory: Path, options: RunOptions) -> tuple[Path, tuple[str, str]]:
    """The run's ACL users (passwords in ``directory``): the ACL file and the admin login."""
    from shared.acl import Users
    from tasks.api import load_task

    regions = load_task(options.settings.task).describe(options.data_dir).regions
    init_users(directory, options.namespace, list(regions))
    admin = Users(options.namespace).admin
    return directory / ACL_FILE, (admin, load_password(directory, admin) or "")


def _spawn(name: str, kind: str, args: list[str], env: dict, out: Path, prefix: list[str],
           region: str | None) -> Role:  # fmt: skip
    log = open(out / "logs" / f"{name}.log", "ab")  # noqa: SIM115 (the child owns it)
    process = subprocess.Popen(
        [*prefix, sys.executable, "-m", "cli", *args], env=env, stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    log.close()
    return Role(name, kind, args, process, region=region)


def _watch(
    connection: redis.Redis,
    keys: Keys,
    fed,
    roles: list[Role],
    options: RunOptions,
    progress: Callable[[dict], None],
    disturb: Disturb | None,
    respawn: Callable[[Role], Role],
    patient: Callable[[Callable[[], T]], T] = lambda action: action(),
    verdict: Verdict | None = None,
) -> int:
    """Poll until the final version is evaluated everywhere; fail fast if a role dies.

    Every Redis read goes through ``patient``: through an outage the poll waits (the roles
    wait too) instead of ending the run. ``verdict`` says each new failure of the regions'
    jobs, raises ``TaskBroken`` when every region fails the same way, and after the target
    names the regions whose final result will not come (``verdict.missing``): the run waits
    for the others only, and at ``final_timeout`` names those still missing."""
    final_version: int | None = None
    final_deadline: float | None = None
    last_sample = 0.0
    while True:
        now = time.monotonic()
        if now - last_sample > 2.0:
            for role in roles:
                role.sample_rss()
            last_sample = now
        version, done = patient(
            lambda: (int(connection.get(keys.version) or 0), connection.get(keys.done))
        )
        if disturb is not None:
            disturb(roles, respawn, version, done is not None)
        coordinators = [role for role in roles if role.kind == "coordinator"]
        for role in roles:
            code = role.process.poll()
            if code is None or role.kind == "coordinator" and code == 0:
                continue
            tail = _log_tail(options.out_dir / "logs" / f"{role.name}.log")
            raise FedqError(f"{role.name} exited with code {code}: {tail}")
        applied, rejected = patient(
            lambda: (connection.scard(keys.applied), connection.hlen(keys.rejected))
        )
        progress(
            {
                "version": version,
                "target": fed.settings.target_versions,
                "applied": applied,
                "rejected": rejected,
                "done": done.decode() if done else None,
            }
        )
        # the active coordinator exits 0 once it reached the target and scheduled the final
        # evaluation (standbys follow it)
        if final_version is None and any(c.process.poll() == 0 for c in coordinators):
            # read again: the hook may have taken a while, and the final drain moved it
            final_version = int(patient(lambda: connection.get(keys.version)) or 0)
            final_deadline = now + options.final_timeout
        if verdict is not None:
            patient(verdict.poll)
        if final_version is not None:
            results = patient(lambda: accepted_results(connection, keys, fed))
            reported = results.get(final_version, {})
            if set(fed.regions) <= set(reported):
                return final_version
            if verdict is not None:
                look = functools.partial(verdict.final_missing, final_version, set(reported))
                verdict.missing = patient(look)
                if set(fed.regions) <= set(reported) | set(verdict.missing):
                    return final_version
            if final_deadline is not None and now > final_deadline:
                missing = sorted(set(fed.regions) - set(reported))
                if verdict is None:
                    raise FedqError(
                        f"final evaluation of version {final_version} missing {missing}"
                    )
                for region in missing:
                    verdict.missing.setdefault(
                        region, f"no result within {options.final_timeout:.0f}s of the target"
                    )
                return final_version
        time.sleep(0.5)


def stop_roles(roles: list[Role]) -> None:
    """SIGTERM every process this run started, wait, SIGKILL what is left; reap them all."""
    stop_processes((role.process for role in roles), STOP_GRACE)


def _peak_by_kind(roles: list[Role]) -> dict[str, float]:
    out: dict[str, float] = {}
    for role in roles:
        out[role.kind] = max(out.get(role.kind, 0.0), round(role.peak_rss_mb, 1))
    return out


def peak_rss_mb(pid: int) -> float:
    """VmHWM (peak resident set) of a live process, in MB; 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _log_tail(path: Path) -> str:
    try:
        lines = [x for x in path.read_text(errors="replace").splitlines() if x.strip()]
    except OSError:
        return "(no log)"
    return lines[-1] if lines else "(empty log)"
