"""Coordinator-side commands: ``fedq baseline``."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

import click

from cli.options import (
    data_option,
    metrics_options,
    open_redis,
    redis_options,
    serve_metrics,
    wait_option,
)
from cli.settings_options import settings_options
from shared.errors import FedqError
from shared.json_text import json_text


@click.command()
@click.option("--data", "root", type=click.Path(path_type=Path, exists=True, file_okay=False),
              required=True, help="A data directory of the task.")  # fmt: skip
@click.option("--task", "task_name", default="recommender", show_default=True,
              help="Built-in task, module:attr or file.py:attr.")  # fmt: skip
@click.option("--mode", required=True,
              help="local, centralized, or one of the task's references (recommender: "
                   "popularity).")  # fmt: skip
@click.option("--json", "json_out", type=click.Path(path_type=Path), help="Write the report here.")
@click.option("--epochs", type=int, default=None,
              help="Most epochs per model [default: the task's per mode; stops earlier when the "
                   "validation headline stops improving].")  # fmt: skip
@click.option("--set", "task_set", multiple=True, metavar="KEY=VALUE",
              help="One of the task's settings (repeatable).")  # fmt: skip
@click.option("--processes", type=click.IntRange(min=1), default=os.cpu_count() or 1,
              show_default=True, help="Models trained side by side (local: one per region), "
                                      "one process each.")  # fmt: skip
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="torch threads per process.")  # fmt: skip
@click.option("--seed", type=int, default=0, show_default=True)
def baseline(root: Path, task_name: str, mode: str, json_out: Path | None, epochs: int | None,
             task_set: tuple[str, ...], processes: int, threads: int,
             seed: int) -> None:  # fmt: skip
    """A local-only, centralized or reference baseline, per region and overall."""
    from cli.settings_options import parse_assignments
    from harness.baselines import FitSettings, run_baselines
    from reporting.tables import print_metrics
    from tasks.api import load_task

    task = load_task(task_name)
    settings = FitSettings(settings=parse_assignments(task_set), max_epochs=epochs, seed=seed,
                           threads=threads)  # fmt: skip
    say = lambda msg: click.echo(msg, err=True)  # noqa: E731
    report = run_baselines(task_name, root, (mode,), settings, say=say,
                           processes=processes)[mode]  # fmt: skip
    print_metrics(f"{mode} baseline on {report.data} ({report.seconds:.0f}s)", task.metrics,
                  report.overall, report.regions)  # fmt: skip
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json_text(report.to_json(), indent=2) + "\n")
        click.echo(f"wrote {json_out}")


@click.command()
@data_option("Data directory (only its public part is read).", required=True)
@settings_options
@metrics_options
@redis_options
@wait_option
def coordinator(data_dir: Path, settings, metrics_port: int | None, metrics_host: str,
                wait: float, redis_url: str | None, namespace: str) -> None:  # fmt: skip
    """Initialise the federation (if new) and dispatch round jobs until a target is reached."""
    import time

    from cli.options import StopFlag
    from coordinator import service
    from shared.jobs import region_queue
    from shared.telemetry import CoordinatorMetrics

    connection, keys = open_redis(redis_url, namespace, wait, lambda m: click.echo(m, err=True),
                                  user=lambda users: users.coordinator)  # fmt: skip
    started = time.time()
    fed = service.initialise(connection, keys, data_dir, settings)
    queues = {r: region_queue(connection, keys, r).key for r in fed.regions}
    serve_metrics(CoordinatorMetrics(connection, keys, fed.regions, queues), metrics_port,
                  metrics_host, "coordinator")  # fmt: skip
    if fed.created_at < started:
        click.echo("joining the existing federation (its settings are in force)", err=True)
    reason = service.coordinate(connection, keys, fed, StopFlag(),
                                say=lambda m: click.echo(m, err=True))  # fmt: skip
    click.echo(f"coordinator done: {reason}" if reason else "coordinator stopped")


@click.command()
@click.option("--consumer", default=None,
              help="Consumer name in the streams' group [default: one per process].")  # fmt: skip
@metrics_options
@wait_option
@redis_options
def aggregator(consumer: str | None, metrics_port: int | None, metrics_host: str, wait: float,
               redis_url: str | None, namespace: str) -> None:  # fmt: skip
    """Consume updates and apply them to the global model (the model's only writer)."""
    from cli.options import StopFlag
    from coordinator import service
    from shared import federation
    from shared.telemetry import AggregatorMetrics

    metrics = AggregatorMetrics()
    serve_metrics(metrics, metrics_port, metrics_host, "aggregator")
    connection, keys = open_redis(redis_url, namespace, wait, lambda m: click.echo(m, err=True),
                                  user=lambda users: users.aggregator)  # fmt: skip
    fed = federation.wait_for(connection, keys, wait, lambda m: click.echo(m, err=True))
    counters = service.aggregate(connection, keys, fed, StopFlag(), consumer,
                                 say=lambda m: click.echo(m, err=True),
                                 metrics=metrics)  # fmt: skip
    click.echo(
        f"aggregator stopped: {counters.versions} versions, {counters.applied} applied, "
        f"{counters.rejected} rejected, {counters.duplicates} duplicates"
    )


@click.command("run")
@data_option("Data directory [default: ./data, where the built-in data set is generated if it "
             "is missing].", exists=False, default=None)  # fmt: skip
@click.option("--generate", is_flag=True,
              help="Generate the built-in data set into --data if it holds none.")  # fmt: skip
@click.option("--workers-per-region", type=int, default=None,
              help="Worker processes per region [default: the cores over the regions, at "
                   "least 1; each region then holds as many jobs in flight, unless --inflight "
                   "says].")  # fmt: skip
@click.option(
    "--slowdown",
    multiple=True,
    metavar="REGION=FACTOR",
    help="Make a region's workers FACTOR times slower (repeatable).",
)
@click.option(
    "--json",
    "json_out",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Also write the report here.",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Run directory (logs, redis data, report) [default: runs/<mode>-<time>].",
)
@click.option("--redis-url", default=None, help="Use this Redis instead of starting one.")
@click.option(
    "--redis-maxmemory",
    metavar="SIZE",
    default=None,
    help="Memory cap of the run's own Redis (2gb, 512mb, bytes; 0: none); at the cap it "
    "refuses writes, which the roles retry [default: env FEDQ_REDIS_MAXMEMORY, else 2 GiB or "
    "a quarter of the machine's memory, whichever is smaller].",
)
@click.option(
    "--redis-patience",
    type=click.FloatRange(min=0),
    default=None,
    metavar="SECONDS",
    help="How long the run waits through a Redis outage before it gives up [default: 300].",
)
@click.option("--namespace", default="fedq", show_default=True)
@click.option(
    "--baselines/--no-baselines",
    default=True,
    show_default=True,
    help="Compare with local-only and centralized (computed once, cached in DATA).",
)
@click.option("--acl/--no-acl", default=None,
              help="ACL users per role, each role logging in as its own (keys in the run "
                   "directory) [default: on, without --redis-url].")  # fmt: skip
@settings_options
def run_cmd(data_dir: Path | None, generate: bool, workers_per_region: int | None,
            slowdown: tuple[str, ...],
            json_out: Path | None, out_dir: Path | None, redis_url: str | None,
            redis_maxmemory: str | None, redis_patience: float | None, namespace: str,
            baselines: bool, acl: bool | None,
            settings) -> None:  # fmt: skip
    """Run a whole federation here: Redis, aggregator, coordinator and workers, then report.

    Least privilege by default: with its own embedded Valkey, every role logs in as its own ACL
    user, and updates and jobs are signed with per-region secrets made in the run directory
    (--no-acl, --no-signed-updates to turn either off)."""
    import time

    from cli.progress import bar
    from harness.run import RunOptions, run_federation
    from reporting.report import compare_table, ensure_baselines
    from shared.redis_server import resolve_maxmemory
    from tasks.api import load_task

    if workers_per_region is not None and workers_per_region < 1:
        raise click.BadParameter("must be at least 1", param_hint="--workers-per-region")
    task = load_task(settings.task)
    settings = dataclasses.replace(settings, task_settings=task.settings(settings.task_settings))
    ctx = click.get_current_context()
    suggested = {k: v for k, v in getattr(task, "run_defaults", {}).items() if _unset(ctx, k)}
    settings = dataclasses.replace(settings, **suggested)  # the task's run length, unless set
    data_dir = _data_set(task, data_dir, generate)
    if acl is None:
        acl = redis_url is None  # users can be set up only on a server of the run's own
    if _unset(ctx, "signed_updates"):
        settings = dataclasses.replace(settings, signed_updates=True)
    slow = _parse_slowdown(slowdown)
    if settings.max_inflight == 0:  # one machine: as many jobs in flight as it has cores
        settings = dataclasses.replace(settings, max_inflight=os.cpu_count() or 2)
    if workers_per_region is None:
        # as many training processes as cores: on 2 cores, 12 workers cost ~25 CPU-seconds of
        # start-up (torch) and more switching between them, for no job more in flight
        regions = len(task.describe(data_dir).regions)
        workers_per_region = max(1, -(-settings.max_inflight // regions))
        if _unset(ctx, "inflight_per_region"):  # or a region's second job waits for a worker
            settings = dataclasses.replace(settings, inflight_per_region=workers_per_region)
    out_dir = out_dir or Path("runs") / f"{settings.mode}-{time.strftime('%Y%m%d-%H%M%S')}"
    options = RunOptions(data_dir, settings, workers_per_region, slow, out_dir, redis_url,
                         namespace, acl=acl)  # fmt: skip
    if redis_maxmemory is not None:
        if redis_url is not None:
            raise click.UsageError(
                "--redis-maxmemory caps the run's own Redis: without --redis-url"
            )
        options = dataclasses.replace(options, redis_maxmemory=resolve_maxmemory(redis_maxmemory))
    if redis_patience is not None:
        options = dataclasses.replace(options, redis_patience=redis_patience)
    say = lambda m: click.echo(m, err=True)  # noqa: E731
    _interrupt_on_sigterm()  # so the run's cleanup stops every process it started
    with bar("federating") as update:
        last = [0.0]

        def progress(state: dict) -> None:
            update(min(state["version"], state["target"] or state["version"]),
                   state["target"] or max(state["version"], 1))  # fmt: skip
            if not sys.stderr.isatty() and time.monotonic() - last[0] > 15:
                last[0] = time.monotonic()
                say(
                    f"version {state['version']}, {state['applied']} applied, "
                    f"{state['rejected']} rejected"
                    + (f" ({state['done']})" if state["done"] else "")
                )

        report = run_federation(options, say, progress)
    # after the federation, not beside it: fits at the lowest priority still slowed it by 18%
    # (they evict its caches) and saved 3% of the whole command (DESIGN.md, "Baselines")
    base = (ensure_baselines(task, data_dir, report["data"], settings.task_settings, say,
                             task_ref=settings.task) if baselines else {})  # fmt: skip
    report["baselines"] = {
        m: {"overall": b["overall"], "regions": b["regions"]} for m, b in base.items()
    }
    compare_table(report, base)
    for line in report.get("problems", []):  # what the table leaves out, said plainly
        say(f"WARNING: {line}")
    text = json.dumps(report, indent=2) + "\n"
    (out_dir / "report.json").write_text(text)
    from reporting.plots import write_report

    write_report(out_dir, [report], base)
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(text)
    if report.get("privacy"):
        from reporting.history import privacy_line

        click.echo(privacy_line(report["privacy"]))
    rss = ", ".join(f"{k} {v:.0f} MB" for k, v in report["peak_rss_mb"].items())
    click.echo(f"{report['versions']} versions in {report['seconds']:.0f}s; peak RSS: {rss}")
    click.echo(f"report: {out_dir / 'report.json'}, {out_dir / 'summary.md'} and plots")


DEFAULT_DATA = Path("data")  # the recommender's; another built-in task's is data-<task>


def _unset(ctx: click.Context, setting: str) -> bool:
    """Neither a flag nor the --config file set ``setting``."""
    import tomllib

    from cli.settings_options import param_of

    if ctx.params.get(param_of(setting)) is not None:
        return False
    config = ctx.params.get("config")
    if config is None:
        return True
    try:
        return setting not in tomllib.loads(Path(config).read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return True  # the settings loader has reported it already


def default_data(task) -> Path:
    return DEFAULT_DATA if task.name == "recommender" else Path(f"data-{task.name}")


def _data_set(task, named: Path | None, generate: bool) -> Path:
    """The run's data directory. A task's generated data set is made only into its default
    directory or with --generate: a mistyped path is an error, never a silent synthetic run."""
    from tasks.api import TaskError

    data_dir = named or default_data(task)
    try:
        task.describe(data_dir)
        return data_dir
    except (TaskError, FedqError) as exc:
        problem = str(exc)
    except Exception as exc:  # noqa: BLE001 (a user's task may raise anything on missing data)
        problem = f"{type(exc).__name__}: {exc}"
    empty = not data_dir.exists() or not any(data_dir.iterdir())
    what = "does not exist" if not data_dir.exists() else f"holds no {task.name} data set"
    if not empty:
        raise click.BadParameter(f"{data_dir} {what} ({problem}); not generating into a "
                                 "directory that is not empty", param_hint="--data")  # fmt: skip
    if not hasattr(task, "generate"):
        raise click.BadParameter(f"{data_dir} {what}; task {task.name!r} has no generator",
                                 param_hint="--data")  # fmt: skip
    if named is not None and not generate:
        raise click.BadParameter(f"{data_dir} {what}; pass --generate to generate task "
                                 f"{task.name!r}'s data set there",
                                 param_hint="--data")  # fmt: skip
    click.echo(f"{data_dir} has no data set: generating task {task.name!r}'s (seed 0)", err=True)
    task.generate(data_dir, seed=0)
    return data_dir


def _interrupt_on_sigterm() -> None:
    import signal

    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def _parse_slowdown(pairs: tuple[str, ...]) -> dict[str, float]:
    out = {}
    for pair in pairs:
        region, _, factor = pair.partition("=")
        try:
            out[region.strip()] = float(factor)
        except ValueError:
            raise click.BadParameter(
                f"{pair!r}: write REGION=FACTOR", param_hint="--slowdown"
            ) from None
        if out[region.strip()] < 1:
            raise click.BadParameter(f"{pair!r}: FACTOR must be >= 1", param_hint="--slowdown")
    return out


@click.command()
@click.option("--out", "out_dir", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="Directory for the PNG plots and summary.md.")  # fmt: skip
@click.option("--run", "runs", multiple=True,
              type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="A run's report.json (repeatable: async beside sync). Without it, the live "
                   "federation in Redis is reported.")  # fmt: skip
@data_option("Data directory whose cached baselines join the table.", exists=False)
@redis_options
def report(out_dir: Path, runs: tuple[Path, ...], data_dir: Path | None, redis_url: str | None,
           namespace: str) -> None:  # fmt: skip
    """Plots (the task's headline per region against time and version, staleness, updates per
    region) and a Markdown summary with the final table."""
    from reporting.plots import write_report

    if runs:
        reports = [json.loads(p.read_text()) for p in runs]
        modes = [r["mode"] for r in reports]
        for rep, path in zip(reports, runs, strict=True):
            rep["label"] = rep["mode"] if modes.count(rep["mode"]) == 1 else path.parent.name
    else:
        from reporting.history import collect
        from shared import federation

        connection, keys = open_redis(redis_url, namespace, start_embedded=False)
        fed = federation.read(connection, keys)
        if fed is None:
            raise click.ClickException(f"no federation under namespace {namespace!r}")
        reports = [collect(connection, keys, fed)]
    baselines = next((r["baselines"] for r in reports if r.get("baselines")), {})
    if data_dir is not None:
        task = reports[0].get("task", "recommender")
        for mode in ("local", "centralized"):
            for path in sorted((data_dir / "baselines").glob(f"{task}-{mode}-*.json")):
                baselines[mode] = json.loads(path.read_text())
    for path in write_report(out_dir, reports, baselines):
        click.echo(f"wrote {path}")


@click.command("audit")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (shape: docs/CLI.md).")
@redis_options
def audit_cmd(as_json: bool, redis_url: str | None, namespace: str) -> None:
    """Check exactly-once: every published update applied once or rejected, every copy
    accounted for, every applied update from a job the coordinator issued. Exit 1 on a problem.

    It reads one consistent snapshot (one MULTI), so a running federation passes too: updates
    in flight show as queued. Per region it also reports the guard's suspicion, its refusals by
    check, the applied updates it down-weighted, the quarantine and the region's replays (copies
    beyond what its workers published): information, not problems."""
    from harness.audit import audit
    from shared import federation
    from shared.json_text import json_text

    connection, keys = open_redis(redis_url, namespace, start_embedded=False)
    if federation.read(connection, keys) is None:
        raise click.ClickException(f"no federation under namespace {namespace!r}")
    result = audit(connection, keys)
    if as_json:
        click.echo(json_text(result.to_json()))
    else:
        for line in result.lines():
            click.echo(line)
    if not result.ok:
        sys.exit(1)
