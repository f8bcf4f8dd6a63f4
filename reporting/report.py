"""The end-of-run comparison: the federated model beside the local-only and centralized ones."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

from harness.baselines import FitSettings, run_baselines
from reporting.tables import metric_table, print_table
from tasks.api import MetricSchema, Task

COMPARED = ("local", "centralized")


def ensure_baselines(task: Task, data_dir: Path, data_name: str, settings: dict,
                     say: Callable[[str], None], task_ref: str | None = None) -> dict:  # fmt: skip
    """Baseline reports for ``data_dir``, computed once and cached in ``data_dir/baselines``
    (per task and settings: another model size is another baseline). The missing ones train
    side by side, a process per core (the task loaded in each by ``task_ref``, or its
    built-in name)."""
    out, missing = {}, []
    tag = _settings_tag(settings)

    def path(mode: str) -> Path:
        return Path(data_dir) / "baselines" / f"{task.name}-{mode}-{tag}.json"

    for mode in COMPARED:
        if path(mode).exists():
            cached = json.loads(path(mode).read_text())
            if cached.get("data") == data_name:
                out[mode] = cached
                continue
        missing.append(mode)
    if not missing:
        return out
    processes = os.cpu_count() or 1
    say(f"computing the {' and '.join(missing)} baselines once (cached in "
        f"{path(missing[0]).parent}, {processes} processes side by side) ...")  # fmt: skip
    reports = run_baselines(task_ref or task, data_dir, tuple(missing),
                            FitSettings(settings=settings, threads=1), say=say,
                            processes=processes)  # fmt: skip
    for mode, report in reports.items():
        path(mode).parent.mkdir(parents=True, exist_ok=True)
        path(mode).write_text(json.dumps(report.to_json(), indent=2) + "\n")
        out[mode] = report.to_json()
    return {mode: out[mode] for mode in COMPARED}


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
