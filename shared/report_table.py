"""Metric tables for the terminal (rich) and for Markdown (README, reports)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

COLUMNS = (
    ("hr@10", "HR@10"),
    ("ndcg@10", "NDCG@10"),
    ("hr@10_sampled", "HR@10 (99 neg)"),
    ("ndcg@10_sampled", "NDCG@10 (99 neg)"),
    ("cold_start.hr@10", "cold HR@10"),
)


def metrics_rows(overall: dict, regions: dict) -> list[tuple[str, dict]]:
    return [*((r, m) for r, m in regions.items()), ("overall", overall)]


def print_metrics(title: str, overall: dict, regions: dict, console: Console | None = None) -> None:
    table = Table(title=title)
    table.add_column("region")
    table.add_column("users", justify="right")
    for _key, label in COLUMNS:
        table.add_column(label, justify="right")
    for name, m in metrics_rows(overall, regions):
        table.add_row(name, f"{int(m['users'])}", *(f"{m[k]:.4f}" for k, _ in COLUMNS))
    (console or Console()).print(table)


def markdown_metrics(overall: dict, regions: dict) -> str:
    head = "| region | users | " + " | ".join(label for _k, label in COLUMNS) + " |"
    rule = "|---|---:|" + "---:|" * len(COLUMNS)
    lines = [head, rule]
    for name, m in metrics_rows(overall, regions):
        cells = " | ".join(f"{m[k]:.4f}" for k, _ in COLUMNS)
        lines.append(f"| {name} | {int(m['users'])} | {cells} |")
    return "\n".join(lines)
