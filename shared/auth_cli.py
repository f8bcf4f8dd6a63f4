"""``fedq keys``: the per-region secrets that sign updates."""

from __future__ import annotations

from pathlib import Path

import click


@click.group("keys")
def keys_group() -> None:
    """Per-region secrets (HMAC-SHA256) for a federation with --signed-updates."""


@keys_group.command("init")
@click.option(
    "--data",
    "data_dir",
    type=click.Path(path_type=Path, exists=True, file_okay=False),
    default=None,
    help="Take the regions from this data set's meta.json.",
)
@click.option("--region", "regions", multiple=True, help="A region (repeatable).")
@click.option(
    "--dir",
    "directory",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Where the key files go [default: FEDQ_KEYS or FEDQ_HOME/keys/NAMESPACE].",
)
@click.option("--namespace", envvar="FEDQ_NAMESPACE", default="fedq", show_default=True)
@click.option("--force", is_flag=True, help="Replace existing secrets (workers need the new ones).")
def init(data_dir: Path | None, regions: tuple[str, ...], directory: Path | None, namespace: str,
         force: bool) -> None:  # fmt: skip
    """Create a secret per region: copy REGION.key to that region's worker hosts only."""
    from shared.auth import init_keys, key_dir
    from shared.task.dataset import read_meta

    names = list(regions) or (list(read_meta(data_dir).regions) if data_dir else [])
    if not names:
        raise click.UsageError("give --data DIR or --region R (repeatable)")
    directory = directory or key_dir(namespace)
    written = init_keys(directory, names, force)
    kept = len(names) - len(written)
    click.echo(f"{len(written)} secret(s) written to {directory}"
               + (f", {kept} kept (use --force to replace)" if kept else ""))  # fmt: skip
