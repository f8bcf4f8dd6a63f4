"""The end-of-run comparison: the federated model beside the local-only and centralized ones."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

from coordinator.baselines import FitSettings, run_baseline
from shared.progress import bar
from shared.task.train import TrainConfig

COMPARED = ("local", "centralized")


def ensure_baselines(data_dir: Path, data_name: str, say: Callable[[str], None]) -> dict:
    """Baseline reports for ``data_dir``, computed once and cached in ``data_dir/baselines``."""
    out = {}
    for mode in COMPARED:
        path = Path(data_dir) / "baselines" / f"{mode}.json"
        if path.exists():
            cached = json.loads(path.read_text())
            if cached.get("data") == data_name:
                out[mode] = cached
                continue
        say(f"computing the {mode} baseline once (cached in {path}) ...")
        threads = max(1, min(2, os.cpu_count() or 1))
        with bar(f"{mode} baseline: epoch batches") as update:
            report = run_baseline(data_dir, mode, FitSettings(train=TrainConfig(threads=threads)),
                                  batches=update)  # fmt: skip
        report = report.to_json()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2) + "\n")
        out[mode] = report
    return out


def compare_table(report: dict, baselines: dict, console: Console | None = None) -> None:
    table = Table(title=f"fedq {report['mode']} on {report['data']}: version {report['versions']}")
    table.add_column("region")
    table.add_column("users", justify="right")
    table.add_column("fedq HR@10", justify="right")
    table.add_column("fedq NDCG@10", justify="right")
    for mode in baselines:
        table.add_column(f"{mode} HR@10", justify="right")
        table.add_column(f"{mode} NDCG@10", justify="right")
    final = report["final"]
    rows = [*final["regions"].items(), ("overall", final["overall"])]
    for name, m in rows:
        cells = [f"{m['hr@10']:.4f}", f"{m['ndcg@10']:.4f}"]
        for b in baselines.values():
            bm = b["overall"] if name == "overall" else b["regions"].get(name)
            cells += [f"{bm['hr@10']:.4f}", f"{bm['ndcg@10']:.4f}"] if bm else ["-", "-"]
        table.add_row(name, f"{int(m['users'])}", *cells)
    (console or Console()).print(table)
