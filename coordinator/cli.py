"""Coordinator-side commands: ``fedq baseline``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from coordinator.settings_options import settings_options
from shared.cli_options import open_redis, redis_options


@click.command()
@click.option("--data", "root", type=click.Path(path_type=Path, exists=True, file_okay=False),
              required=True, help="A fedq data directory.")  # fmt: skip
@click.option("--mode", type=click.Choice(["popularity", "local", "centralized"]), required=True)
@click.option("--json", "json_out", type=click.Path(path_type=Path), help="Write the report here.")
@click.option("--epochs", type=int, default=None,
              help="Most epochs per model [default: 8 centralized, 40 local; stops earlier "
                   "when validation HR@10 stops improving].")  # fmt: skip
@click.option("--threads", type=int, default=min(2, os.cpu_count() or 1), show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def baseline(
    root: Path, mode: str, json_out: Path | None, epochs: int | None, threads: int, seed: int
) -> None:
    """Popularity, local-only or centralized baseline with per-region HR@10 / NDCG@10."""
    from coordinator.baselines import FitSettings, run_baseline
    from shared.report_table import print_metrics
    from shared.task.train import TrainConfig

    settings = FitSettings(train=TrainConfig(threads=threads, seed=seed), max_epochs=epochs,
                           init_seed=seed)  # fmt: skip
    report = run_baseline(root, mode, settings, say=lambda msg: click.echo(msg, err=True))
    print_metrics(f"{mode} baseline on {report.data} ({report.seconds:.0f}s)", report.overall,
                  report.regions)  # fmt: skip
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report.to_json(), indent=2) + "\n")
        click.echo(f"wrote {json_out}")


@click.command()
@click.option(
    "--data",
    "data_dir",
    type=click.Path(path_type=Path, exists=True, file_okay=False),
    required=True,
    help="Data directory (only meta.json and catalogue.csv are read).",
)
@settings_options
@redis_options
def coordinator(data_dir: Path, settings, redis_url: str | None, namespace: str) -> None:
    """Initialise the federation (if new) and dispatch round jobs until a target is reached."""
    from coordinator import service
    from shared.cli_options import StopFlag

    connection, keys = open_redis(redis_url, namespace)
    fed = service.initialise(connection, keys, data_dir, settings)
    if fed.settings != settings:
        click.echo("joining the existing federation with its own settings", err=True)
    reason = service.coordinate(connection, keys, fed, StopFlag())
    click.echo(f"coordinator done: {reason}" if reason else "coordinator stopped")


@click.command()
@click.option("--consumer", default="aggregator", show_default=True,
              help="Consumer name in the updates stream's group.")  # fmt: skip
@click.option(
    "--wait",
    type=float,
    default=60.0,
    show_default=True,
    help="Seconds to wait for the federation to be initialised.",
)
@redis_options
def aggregator(consumer: str, wait: float, redis_url: str | None, namespace: str) -> None:
    """Consume updates and apply them to the global model (the model's only writer)."""
    from coordinator import service
    from shared import federation
    from shared.cli_options import StopFlag

    connection, keys = open_redis(redis_url, namespace)
    fed = federation.wait_for(connection, keys, wait, lambda m: click.echo(m, err=True))
    counters = service.aggregate(connection, keys, fed, StopFlag(), consumer)
    click.echo(
        f"aggregator stopped: {counters.versions} versions, {counters.applied} applied, "
        f"{counters.rejected} rejected, {counters.duplicates} duplicates"
    )
