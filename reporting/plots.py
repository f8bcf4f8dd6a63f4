"""``fedq report``: PNG plots and a Markdown summary of one or more runs' reports.

Input: report dicts (``reporting.history.collect``, plus ``fedq run``'s figures). Several
reports of the same data (async and sync, say) share each plot, one line style per run.
matplotlib runs on its Agg backend: no display needed.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from reporting.tables import markdown_table, metric_table
from tasks.api import MetricSchema

STYLES = ("-", "--", ":", "-.")
FILES = {
    "headline_vs_time": "headline_vs_time.png",
    "headline_vs_version": "headline_vs_version.png",
    "staleness": "staleness.png",
    "updates": "updates_per_region.png",
}


def _label(report: dict[str, Any]) -> str:
    return report.get("label") or report["mode"]


def write_report(
    out: Path, reports: list[dict[str, Any]], baselines: dict[str, Any] | None = None
) -> list[Path]:
    """Write the plots and ``summary.md`` into ``out``; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    regions = list(dict.fromkeys(r for rep in reports for r in rep.get("regions", [])))
    colors = {r: plt.get_cmap("tab10")(i % 10) for i, r in enumerate([*regions, "overall"])}
    written = []
    schema = MetricSchema.from_json(reports[0]["metric_schema"])
    headline, label = schema.headline, schema.label(schema.headline)
    for key, x_field, x_label, against in (
        ("headline_vs_time", "seconds", "seconds since the federation began", "time"),
        ("headline_vs_version", "version", "model version", "version"),
    ):
        fig, ax = plt.subplots(figsize=(9, 5.5))
        for style, rep in zip(STYLES * 4, reports, strict=False):
            points = [p for p in rep["curve"] if p.get(x_field) is not None]
            for region in [*regions, "overall"]:
                xs = [p[x_field] for p in points]
                ys = [(p["metrics"] if region == "overall" else p["regions"].get(region, {}))
                      .get(headline) for p in points]  # fmt: skip
                pairs = [(x, y) for x, y in zip(xs, ys, strict=True) if y is not None]
                if pairs:
                    ax.plot(*zip(*pairs, strict=True), style, marker="o", markersize=3,
                            color=colors[region], linewidth=2.5 if region == "overall" else 1.2,
                            label=f"{region} ({_label(rep)})")  # fmt: skip
        ax.set_xlabel(x_label)
        ax.set_ylabel(f"test {label}")
        ax.set_title(f"{label} per region against {against}: " + " vs ".join(map(_label, reports)))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2 if len(reports) > 1 else 1, loc="lower right")
        written.append(_save(fig, out / FILES[key]))
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, rep in enumerate(reports):
        counts = Counter(int(s) for *_, s in rep.get("updates_log", []) if s is not None)
        if counts:
            xs = sorted(counts)
            width = 0.8 / len(reports)
            ax.bar([x + i * width for x in xs], [counts[x] for x in xs], width=width,
                   label=_label(rep))  # fmt: skip
    ax.set_xlabel("staleness (versions between an update's base and the model it joined)")
    ax.set_ylabel("applied updates")
    ax.set_title("Staleness of applied updates")
    ax.legend()
    written.append(_save(fig, out / FILES["staleness"]))
    fig, ax = plt.subplots(figsize=(9, 5))
    for style, rep in zip(STYLES * 4, reports, strict=False):
        for region in regions:
            times = sorted(t for t, _v, reg, _s in rep.get("updates_log", []) if reg == region)
            if times:
                ax.step(times, range(1, len(times) + 1), style, where="post",
                        color=colors[region], label=f"{region} ({_label(rep)})")  # fmt: skip
    ax.set_xlabel("seconds since the federation began")
    ax.set_ylabel("updates applied (cumulative)")
    ax.set_title("Updates per region over time")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    written.append(_save(fig, out / FILES["updates"]))
    summary = out / "summary.md"
    summary.write_text(summary_markdown(reports, baselines or {}))
    written.append(summary)
    return written


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def summary_markdown(reports: list[dict[str, Any]], baselines: dict[str, Any]) -> str:
    lines = ["# fedq report", ""]
    for rep in reports:
        u = rep.get("updates", {})
        final = rep.get("final") or (
            {"overall": rep["curve"][-1]["metrics"], "regions": rep["curve"][-1]["regions"]}
            if rep.get("curve") else None
        )  # fmt: skip
        last = rep["curve"][-1]["version"] if rep.get("curve") else None
        lines += [
            f"## {_label(rep)} on {rep['data']}",
            "",
            f"- versions: {rep.get('versions', last)}; wall time: "
            + (f"{rep['seconds']:.0f} s" if "seconds" in rep else "n/a (live federation)"),
            f"- updates: {u.get('applied', 0)} applied, {u.get('rejected', 0)} rejected"
            f"{' ' + str(u['rejected_by_reason']) if u.get('rejected_by_reason') else ''}, "
            f"{u.get('duplicates', 0)} duplicates dropped, "
            f"{u.get('jobs_retried', 0)} jobs retried",
            *(f"- **{line}**" for line in rep.get("problems", [])),
            "",
        ]
        if final is None:
            lines += ["No version has been evaluated by every region yet.", ""]
            continue
        schema = MetricSchema.from_json(rep["metric_schema"])
        heads, rows = metric_table(schema, final["overall"], final["regions"], schema.table[:2],
                                   baselines)  # fmt: skip
        lines += [markdown_table(heads, rows), ""]
    lines += ["## Plots", ""] + [f"![{k}]({v})" for k, v in FILES.items()] + [""]
    return "\n".join(lines)
