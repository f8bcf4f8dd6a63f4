"""The one table builder of fedq's reports: a task's figures per region and overall, beside
baselines, rendered for the terminal (rich) or for Markdown (README, summary.md).

Columns come from the task's metric schema (``tasks.api.MetricSchema``), so every report shows
the figures of the task it ran.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.table import Table

from tasks.api import MetricSchema


def metric_table(
    schema: MetricSchema,
    overall: Mapping[str, float],
    regions: Mapping[str, Mapping[str, float]],
    columns: tuple[str, ...] | None = None,
    baselines: Mapping[str, Mapping[str, Any]] | None = None,
    first: str = "",
) -> tuple[list[str], list[list[str]]]:
    """Heads and rows: region, its size, each column's figure, then each baseline's figures of
    the same columns ("-" where a baseline lacks the region). ``first`` prefixes the columns'
    labels of the main result ("fedq ")."""
    columns = columns or schema.table
    heads = ["region", schema.label(schema.size)]
    heads += [f"{first}{schema.label(c)}" for c in columns]
    for mode in baselines or {}:
        heads += [f"{mode} {schema.label(c)}" for c in columns]
    rows = []
    for name, m in [*regions.items(), ("overall", overall)]:
        cells = [name, f"{int(m.get(schema.size, 0))}", *(_figure(m.get(c)) for c in columns)]
        for b in (baselines or {}).values():
            bm = b["overall"] if name == "overall" else b["regions"].get(name)
            cells += [_figure(bm.get(c)) if bm else "-" for c in columns]
        rows.append(cells)
    return heads, rows


def print_table(title: str, heads: list[str], rows: list[list[str]],
                console: Console | None = None) -> None:  # fmt: skip
    table = Table(title=title)
    for i, head in enumerate(heads):
        table.add_column(head, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    (console or Console()).print(table)


def markdown_table(heads: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(heads) + " |", "|---|" + "---:|" * (len(heads) - 1)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def print_metrics(title: str, schema: MetricSchema, overall: Mapping[str, float],
                  regions: Mapping[str, Mapping[str, float]],
                  console: Console | None = None) -> None:  # fmt: skip
    print_table(title, *metric_table(schema, overall, regions), console=console)


def markdown_metrics(schema: MetricSchema, overall: Mapping[str, float],
                     regions: Mapping[str, Mapping[str, float]]) -> str:  # fmt: skip
    return markdown_table(*metric_table(schema, overall, regions))


def _figure(value: Any) -> str:
    if value is None or not isinstance(value, int | float) or value != value:
        return "-"
    return f"{value:.4f}"
