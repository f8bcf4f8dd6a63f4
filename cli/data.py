"""``fedq data``: data sets in a task's format. ``generate`` works for every task with a
generator; a task may add subcommands of its own (the recommender's ``import``)."""

from __future__ import annotations

import time
from pathlib import Path

import click

from cli.main import LazyGroup
from cli.progress import bar

SUBCOMMANDS = {"import": "tasks.recommender.cli:import_"}  # a task's own ``fedq data`` commands


@click.group(cls=LazyGroup, lazy=SUBCOMMANDS)
def data() -> None:
    """Create data sets in a task's format (one folder per region plus the public files)."""


@data.command()
@click.option("--task", "task_name", default="recommender", show_default=True,
              help="The task whose data set to generate.")  # fmt: skip
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Directory to write.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--scale",
    default="default",
    show_default=True,
    help="The task's size of data set (recommender and fraud: small, default, large).",
)
def generate(task_name: str, out: Path, seed: int, scale: str) -> None:
    """Generate a task's built-in data set (deterministic for a seed)."""
    from tasks.api import TaskError, load_task

    task = load_task(task_name)
    if not hasattr(task, "generate"):
        raise TaskError(f"task {task.name!r} has no data generator")
    scales = getattr(task, "scales", ("default",))
    if scale not in scales:
        raise click.BadParameter(f"{scale!r}: task {task.name!r} has {', '.join(scales)}",
                                 param_hint="--scale")  # fmt: skip
    started = time.perf_counter()
    with bar("generating") as update:
        lines = task.generate(out, seed=seed, scale=scale, progress=update)
    click.echo(f"wrote {out}: {lines[0]} in {time.perf_counter() - started:.1f}s")
    for line in lines[1:]:
        click.echo(line)
