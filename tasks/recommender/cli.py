"""``fedq data import``: real interactions into the recommender's data format (the recommender's
own subcommand of ``fedq data``, see ``tasks/cli.py``)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import click


@click.command("import")
@click.option("--format", "fmt", type=click.Choice(["rees46", "generic"]), required=True)
@click.argument("src", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--out", type=click.Path(path_type=Path), required=True)
@click.option("--items", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="generic only: items CSV with item_id and attribute columns.")  # fmt: skip
@click.option(
    "--regions",
    "shares",
    default=None,
    help="rees46 only: region shares for the user-hash rule, e.g. cn=30,us=24.5,eu=20.",
)
@click.option("--cutoff", default=None,
              help="Training cut-off (ISO date); items first sold after it are cold-start. "
                   "Default: when 90% of the events had happened.")  # fmt: skip
def import_(
    fmt: str, src: Path, out: Path, items: Path | None, shares: str | None, cutoff: str | None
) -> None:
    """Import real interactions (REES46 jewelry CSV or a generic CSV); bad rows are reported."""
    from tasks.recommender import importers

    cut = _parse_cutoff(cutoff)
    if fmt == "rees46":
        parsed = importers.parse_shares(shares) if shares else None
        report = importers.import_rees46(src, out, parsed, cut)
    else:
        report = importers.import_generic(src, out, items, cut)
    (Path(out) / "import_report.json").write_text(json.dumps(report.to_json(), indent=2) + "\n")
    click.echo(
        f"wrote {out}: {report.rows_imported} interactions of {report.users} users on "
        f"{report.items} items; {report.rows_read} rows read, {report.bad_rows} bad, "
        f"{report.duplicates_merged} duplicates merged"
    )
    for line, reason in report.bad_examples[:10]:
        click.echo(f"  bad row at line {line}: {reason}")
    if report.bad_rows > 10:
        click.echo(f"  ... {report.bad_rows - 10} more in {Path(out) / 'import_report.json'}")


def _parse_cutoff(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not an ISO date", param_hint="--cutoff") from None
    return int((when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp())
