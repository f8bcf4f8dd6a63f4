"""The operator's commands: status, queues, workers, jobs, updates, rejections, models, requeue,
quarantine.

Each is a thin layer over ``cli.views``: ``--json`` prints the view as it is (the shapes
are documented in docs/CLI.md), otherwise a table. They never start a Redis: without
``--redis-url`` / ``FEDQ_REDIS_URL`` they look at the embedded server if it runs, and say in one
line (exit 1) when there is nothing to reach.
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cli import views
from cli.options import open_redis, redis_options
from shared import streams
from shared.json_text import json_text

# a pipe or a file gets the full width, not rich's default of 80 columns
console = Console(width=None if sys.stdout.isatty() else 160)


def _inspection(f: Callable[..., Any]) -> Callable[..., Any]:
    """--json, the Redis options, and a connection handed to the command as ``r, keys``."""

    @click.option("--json", "as_json", is_flag=True, help="Print JSON (shapes: docs/CLI.md).")
    @redis_options
    @functools.wraps(f)
    def wrapper(*args: Any, redis_url: str | None, namespace: str, **kwargs: Any) -> Any:
        r, keys = open_redis(redis_url, namespace, start_embedded=False)
        return f(r, keys, *args, **kwargs)

    return wrapper


def _emit(data: Any, as_json: bool, table: Callable[[Any], Table | str]) -> None:
    if as_json:
        click.echo(json_text(data))
    else:
        console.print(table(data))


def _table(title: str, rows: list[dict[str, Any]], columns: list[str]) -> Table:
    t = Table(title=title)
    for c in columns:
        t.add_column(c, justify="right" if rows and isinstance(rows[0].get(c), int | float)
                     else "left")  # fmt: skip
    for row in rows:
        t.add_row(*(_cell(row.get(c)) for c in columns))
    return t


def _metric(value: float | None) -> str | None:
    return None if value is None else f"{value:.4f}"


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value > 1e9:  # a timestamp
            return datetime.fromtimestamp(value).strftime("%H:%M:%S")
        return f"{value:.4g}"
    if isinstance(value, list | tuple):
        return ",".join(map(str, value))
    return str(value)


@click.command()
@click.option("--watch", is_flag=True, help="Refresh in place every --interval seconds.")
@click.option("--interval", type=float, default=2.0, show_default=True)
@_inspection
def status(r, keys, as_json: bool, watch: bool, interval: float) -> None:
    """Model version and age, update counts and rate, staleness, and every region's state."""
    if not watch:
        _emit(views.status(r, keys), as_json, _status_view)
        return
    from rich.live import Live

    with Live(_status_view(views.status(r, keys)), console=console, auto_refresh=False) as live:
        try:
            while True:
                time.sleep(interval)
                live.update(_status_view(views.status(r, keys)), refresh=True)
        except KeyboardInterrupt:
            pass


def _status_view(s: dict[str, Any]) -> Table:
    u, st = s["updates"], s["staleness"]
    reasons = ", ".join(f"{k} {v}" for k, v in u["rejected_by_reason"].items()) or "none"
    title = (
        f"{s['namespace']} ({s['mode']}): version {s['version']}"
        + (f"/{s['target_versions']}" if s["target_versions"] else "")
        + f", model age {_cell(s['model_age_s'])} s"
        + (f", done: {s['done']}" if s["done"] else "")
        + f"\napplied {u['applied']} ({u['per_second']}/s), rejected {u['rejected']} ({reasons}),"
        f" duplicates {u['duplicates']}, waiting {u['waiting']}; jobs retried"
        f" {s['jobs']['retried']}\nstaleness p50 {_cell(st['p50'])}, p90 {_cell(st['p90'])},"
        f" max {_cell(st['max'])}"
        + "".join(
            f"\n{'BROKEN' if f['broken'] else 'FAILING'}: {escape(f['line'])}" for f in s["failing"]
        )
        + (
            f"\nTASK BROKEN (every region fails so): {escape(s['task_broken'])}"
            if s["task_broken"]
            else ""
        )
        + _guard_lines(s["regions"])
    )
    rows = []
    for region, d in s["regions"].items():
        ev = d["latest_evaluation"] or {}
        rows.append({"region": region, **{k: d[k] for k in ("queued", "started", "failed")},
                     "live workers": d["live_workers"],
                     "last update (s ago)": d["last_update_age_s"],
                     "failing": ", ".join(f"{k} x{f['count']}" for k, f in d["failing"].items())
                     or None,
                     "eval version": ev.get("version"),
                     **{k: _metric(v) for k, v in ev.items() if k != "version"},
                     **_privacy_cells(d["privacy"])})  # fmt: skip
        rows[-1].update(_guard_cells(d))
    return _table(title, rows, list(rows[0]) if rows else ["region"])


def _guard_lines(regions: dict[str, Any]) -> str:
    """The status title's lines for regions an operator should look at: quarantined ones and
    those the guard flags."""
    quarantined = [r for r, d in regions.items() if d["quarantined"]]
    flagged = [
        f"{r} ({d['guard']['suspicion']:.2f})" for r, d in regions.items() if d["guard"]["flagged"]
    ]
    out = ""
    if quarantined:
        out += f"\nQUARANTINED (no train jobs, updates refused): {', '.join(quarantined)}"
    if flagged:
        out += f"\nFLAGGED by the guard (suspicion): {', '.join(flagged)}"
    return out


def _guard_cells(d: dict[str, Any]) -> dict[str, str | int | None]:
    """A region's suspicion (flagged marked), quarantine, the guard checks that acted on its
    updates, and its replays."""
    g = d["guard"]
    return {
        "suspicion": f"{g['suspicion']:.2f}" + (" FLAGGED" if g["flagged"] else ""),
        "quarantined": "yes" if d["quarantined"] else None,
        "guard acted": ", ".join(f"{k} {v}" for k, v in sorted(g["acted"].items())) or None,
        "replays": d["replays"] or None,
    }


@click.command()
@_inspection
def queues(r, keys, as_json: bool) -> None:
    """Each region's RQ queue: queued, started, finished, failed, scheduled, in flight."""
    cols = ["region", "queue", "queued", "started", "finished", "failed", "scheduled", "in_flight"]
    _emit(views.queues(r, keys), as_json, lambda rows: _table("queues", rows, cols))


@click.command()
@_inspection
def workers(r, keys, as_json: bool) -> None:
    """Registered workers: region, state, alive (beating), current job, job counts."""
    cols = ["name", "region", "state", "alive", "current_job", "successful_jobs", "failed_jobs",
            "last_heartbeat"]  # fmt: skip
    _emit(views.workers(r, keys), as_json, lambda rows: _table("workers", rows, cols))


@click.command()
@click.option("--region", default=None, help="Only this region.")
@click.option("--failed", is_flag=True, help="Only failed jobs (with their error's last line).")
@_inspection
def jobs(r, keys, as_json: bool, region: str | None, failed: bool) -> None:
    """Queued, started and failed jobs."""
    cols = ["id", "region", "kind", "where", "worker", "retries_left", "enqueued_at", "error"]
    _emit(views.jobs(r, keys, region, failed), as_json, lambda rows: _table("jobs", rows, cols))


@click.command()
@click.option("--tail", type=int, default=20, show_default=True, help="The last N applied.")
@_inspection
def updates(r, keys, as_json: bool, tail: int) -> None:
    """Applied updates, newest last: header fields only (never weights)."""
    cols = ["id", "region", "base_version", "version", "staleness", "n_samples", "loss", "weight",
            "at"]  # fmt: skip
    _emit(streams.applied_updates(r, keys, tail), as_json,
          lambda rows: _table("applied updates", rows, cols))  # fmt: skip


@click.command()
@click.option("--tail", type=int, default=20, show_default=True)
@_inspection
def rejections(r, keys, as_json: bool, tail: int) -> None:
    """Rejected updates and refused jobs, with their reasons."""
    cols = ["id", "reason", "detail", "region", "worker", "version", "at"]
    _emit(views.rejections(r, keys, tail), as_json, lambda rows: _table("rejections", rows, cols))


@click.command()
@_inspection
def models(r, keys, as_json: bool) -> None:
    """Version history: stored versions and evaluated ones, with overall metrics per region."""

    def table(rows: list[dict[str, Any]]) -> Table:
        flat = [{"version": m["version"], "stored": m["stored"], "created_at": m["created_at"],
                 "updates": len(m["updates"]), "from": m["regions"],
                 "evaluated by": list(m["evaluation"]), **(m["overall"] or {})}
                for m in rows]  # fmt: skip
        heads = list(dict.fromkeys(k for row in flat for k in row))  # evaluated rows add metrics
        return _table("models (metrics: overall, once every region reported)", flat,
                      heads or ["version"])  # fmt: skip

    _emit(views.models(r, keys), as_json, table)


@click.command()
@click.option("--region", default=None, help="Only this region's failed jobs.")
@click.argument("job_ids", nargs=-1)
@_inspection
def requeue(r, keys, as_json: bool, region: str | None, job_ids: tuple[str, ...]) -> None:
    """Put failed jobs back on their queues (all, a region's, or JOB_IDS)."""
    done = views.requeue_failed(r, keys, region, job_ids)
    if as_json:
        click.echo(json_text({"requeued": done}, indent=None))
    else:
        click.echo(f"requeued {len(done)} job(s)" + (f": {', '.join(done)}" if done else ""))


@click.command()
@click.argument("region", required=False)
@click.option("--release", is_flag=True, help="End REGION's quarantine.")
@_inspection
def quarantine(r, keys, as_json: bool, region: str | None, release: bool) -> None:
    """Quarantine REGION: its updates are refused and the coordinator issues it no train job
    (its evaluation jobs still run; its figures do not count) until --release. Without REGION,
    list the quarantined regions with the guard's suspicion of each."""
    if region is None:
        if release:
            raise click.ClickException("--release needs the REGION to release")
        listed = views.quarantined_regions(r, keys)
        if as_json:
            click.echo(json_text({"quarantined": listed}, indent=None))
        elif not listed:
            click.echo("no region is quarantined")
        else:
            click.echo("quarantined: " + ", ".join(_suspicion_text(q) for q in listed))
        return
    done = views.quarantine(r, keys, region, release)
    if as_json:
        click.echo(json_text(done, indent=None))
    elif release:
        click.echo(
            f"released {_suspicion_text(done)}: it gets train jobs again and its updates are "
            "judged as everyone's"
            if done["changed"]
            else f"{region} was not quarantined: nothing changed"
        )
    else:
        click.echo(
            f"quarantined {_suspicion_text(done)}: its updates are refused and it gets no train "
            f"job until `fedq quarantine {region} --release`"
            if done["changed"]
            else f"{region} was already quarantined: nothing changed"
        )


def _suspicion_text(q: dict[str, Any]) -> str:
    flagged = ", flagged" if q["flagged"] else ""
    stray = "" if q.get("known", True) else ", not a region of this federation"
    return f"{q['region']} (suspicion {q['suspicion']:.2f}{flagged}{stray})"


def _privacy_cells(budget: dict | None) -> dict[str, str]:
    """A region's epsilon spent (of its limit) and whether it takes more jobs: DP runs only."""
    if budget is None:
        return {}
    limit = "" if budget["limit"] is None else f" of {budget['limit']:g}"
    return {"epsilon": f"{budget['epsilon']:.3f}{limit}",
            "budget": "spent" if budget["exhausted"] else "open"}  # fmt: skip
