"""``fedq recommend``: the recommender's serving hook, the trained model put to use.

It reads shoppers' histories from the region's own data directory (run it where that data
lives) and the model from Redis or from a file written by ``fedq export``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from cli.export import load_model
from cli.options import data_option, model_file_option, redis_options
from shared.json_text import json_text

_data_option = data_option(
    "Data directory (the region's own folder and the public catalogue).", required=True
)


def _load(data_dir: Path, model_file: Path | None, redis_url, namespace, version):
    from tasks.recommender.local_data import load_shared
    from tasks.recommender.task import TASK

    weights, meta = load_model(TASK, data_dir, model_file, redis_url, namespace, version)
    shared = load_shared(data_dir)
    return TASK.model(weights, shared, TASK.settings(meta.get("task_settings", {}))), shared, meta


def _parse_attrs(text: str) -> tuple[dict[str, str], float]:
    pairs = dict(p.split("=", 1) for p in text.split(",") if "=" in p)
    if "price" not in pairs:
        raise click.BadParameter("give price=<amount> too", param_hint="--item-attrs")
    try:
        price = float(pairs.pop("price"))
    except ValueError:
        raise click.BadParameter("price must be a number", param_hint="--item-attrs") from None
    return pairs, price


MAX_K = 1000


@click.command()
@_data_option
@click.option("--region", help="The shopper's region (--user).")
@click.option("--user", "user_id", type=int, help="A shopper of --region: their top-k.")
@click.option(
    "--item-attrs",
    help="A new item, e.g. 'category=ring,metal=gold_18k,gem=diamond,"
    "colour=yellow,gender=women,price=420': which regions' shoppers it reaches.",
)
@click.option("-k", "k", type=click.IntRange(1, MAX_K), default=10, show_default=True,
              help="How many items (1 to 1000).")  # fmt: skip
@click.option("--version", type=int, default=None, help="Stored model version [default: current].")
@model_file_option("A model written by `fedq export` instead of Redis.")
@click.option("--json", "as_json", is_flag=True)
@redis_options
def recommend(data_dir: Path, region: str | None, user_id: int | None, item_attrs: str | None,
              k: int, version: int | None, model_file: Path | None, as_json: bool,
              redis_url: str | None, namespace: str) -> None:  # fmt: skip
    """Top-k items for a shopper, or the regions whose shoppers a new item would reach."""
    from tasks.recommender import recommend as serve
    from tasks.recommender.local_data import load_region

    if (user_id is None) == (item_attrs is None):
        raise click.UsageError("give either --user (with --region) or --item-attrs")
    if user_id is not None and not region:
        raise click.UsageError("--user needs --region")
    model, shared, meta = _load(data_dir, model_file, redis_url, namespace, version)
    if user_id is not None:
        result = serve.recommend(model, shared, load_region(data_dir, region, shared), user_id, k)
    else:
        attrs, price = _parse_attrs(item_attrs)
        present = [r for r in shared.meta.regions if (data_dir / r).is_dir()]
        regions = {r: load_region(data_dir, r, shared) for r in present}
        result = serve.audience(model, shared, regions, attrs, price, k)
        result["regions_without_data_here"] = sorted(set(shared.meta.regions) - set(present))
    result["model_version"] = meta["version"]
    if as_json:
        click.echo(json_text(result))
    else:
        _print(result)


def _print(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if "recommendations" in result:
        table = Table(
            title=f"top {len(result['recommendations'])} for user {result['user']} "
            f"({result['region']}), model version {result['model_version']}"
        )
        rows = result["recommendations"]
        cols = [c for c in rows[0] if c not in ("launch_time",)] if rows else []
    else:
        table = Table(
            title=f"who would see {result['item']} in their top {result['k']} "
            f"(model version {result['model_version']})"
        )
        rows = [{"region": r, **result["regions"][r]} for r in result["ranked"]]
        cols = ["region", "users", "shoppers_reached", "shown_to"]
    for c in cols:
        table.add_column(c)
    for row in rows:
        table.add_row(*(f"{row[c]:.4g}" if isinstance(row[c], float) else str(row[c])
                        for c in cols))  # fmt: skip
    console.print(table)
