"""``fedq worker``: a regional worker."""

from __future__ import annotations

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


@click.command()
@click.option("--region", required=True, help="The region this worker serves (its queue).")
@data_option("Data directory with the task's public files and this region's folder.", required=True)
@click.option("--burst", is_flag=True, help="Exit when the queue is empty.")
@click.option(
    "--slowdown",
    type=float,
    default=1.0,
    show_default=True,
    help="Make each train job this many times slower (a slow or distant silo).",
)
@click.option("--task", "task_name", default=None,
              help="The federation's task, if it is not built in (module:attr or file.py): a "
                   "worker runs no other task than a built-in one or this.")  # fmt: skip
@click.option("--max-epsilon", type=click.FloatRange(min=0, min_open=True), default=None,
              envvar="FEDQ_MAX_EPSILON", callback=lambda _c, _p, v: _finite_cap(v),
              help="This region's own cap on its privacy budget: the worker trains only with "
                   "DP-SGD and its region spends at most this epsilon, whatever the "
                   "federation's settings say.")  # fmt: skip
@metrics_options
@wait_option
@redis_options
def worker(region: str, data_dir: Path, burst: bool, slowdown: float, task_name: str | None,
           max_epsilon: float | None, metrics_port: int | None, metrics_host: str, wait: float,
           redis_url: str | None, namespace: str) -> None:  # fmt: skip
    """Run an RQ worker on REGION's queue, training on the region's own data."""
    from shared.telemetry import WorkerMetrics
    from worker import process

    metrics = WorkerMetrics(region)
    serve_metrics(metrics, metrics_port, metrics_host, f"worker {region}")

    connection, keys = open_redis(redis_url, namespace, wait, lambda m: click.echo(m, err=True),
                                   user=lambda users: users.worker(region),
                                   socket_timeout=process.RQ_SOCKET_TIMEOUT)  # fmt: skip
    process.run(connection, keys, region, data_dir, burst=burst, slowdown=slowdown, wait=wait,
                say=lambda m: click.echo(m, err=True), task=task_name,
                max_epsilon=max_epsilon, metrics=metrics)  # fmt: skip


def _finite_cap(value: float | None) -> float | None:
    """A cap of NaN or infinity would silently cap nothing: say so instead."""
    import math

    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"{value} is not a finite epsilon", param_hint="--max-epsilon")
    return value
