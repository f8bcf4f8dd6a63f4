"""The end-of-run comparison: the federated model beside the local-only and centralized ones."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

from harness.baselines import FitSettings, run_baseline
from reporting.tables import metric_table, print_table
from tasks.api import MetricSchema, Task

COMPARED = ("local", "centralized")


def ensure_baselines(task: Task, data_dir: Path, data_name: str, settings: dict,
                     say: Callable[[str], None]) -> dict:  # fmt: skip
    """Baseline reports for ``data_dir``, computed once and cached in ``data_dir/baselines``
    (per task and settings: another model size is another baseline)."""
    out = {}
    tag = _settings_tag(settings)
    for mode in COMPARED:
        path = Path(data_dir) / "baselines" / f"{task.name}-{mode}-{tag}.json"
        if path.exists():
            cached = json.loads(path.read_text())
            if cached.get("data") == data_name:
                out[mode] = cached
                continue
        say(f"computing the {mode} baseline once (cached in {path}) ...")
        threads = max(1, min(2, os.cpu_count() or 1))
        report = run_baseline(task, data_dir, mode,
                              FitSettings(settings=settings, threads=threads),
                              say=lambda m, mode=mode: say(f"  {mode} {m}"))  # fmt: skip
        report = report.to_json()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2) + "\n")
        out[mode] = report
    return out


def compare_table(report: dict, baselines: dict, console: Console | None = None) -> None:
    schema = MetricSchema.from_json(report["metric_schema"])
    final = report["final"]
    heads, rows = metric_table(schema, final["overall"], final["regions"], schema.table[:2],
                               baselines, first="fedq ")  # fmt: skip
    print_table(f"fedq {report['mode']} on {report['data']}: version {report['versions']}",
                heads, rows, console)  # fmt: skip


def _settings_tag(settings: dict) -> str:
    text = json.dumps(settings, sort_keys=True).encode()
    return hashlib.sha256(text).hexdigest()[:8]
