"""``fedq keys``: the per-region secrets that sign updates, and the Redis ACL users' passwords."""

from __future__ import annotations

from pathlib import Path

import click

from cli.options import data_option

key_dir_option = click.option(
    "--dir",
    "directory",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="The key directory [default: FEDQ_KEYS or FEDQ_HOME/keys/NAMESPACE].",
)


@click.group("keys")
def keys_group() -> None:
    """Per-region secrets (HMAC-SHA256, for --signed-updates) and Redis users per role."""


@keys_group.command("init")
@data_option("Take the regions from this data set (see --task).")
@click.option("--region", "regions", multiple=True, help="A region (repeatable).")
@key_dir_option
@click.option("--namespace", envvar="FEDQ_NAMESPACE", default="fedq", show_default=True)
@click.option("--task", "task_name", default="recommender", show_default=True,
              help="The task whose --data names the regions.")  # fmt: skip
@click.option("--force", is_flag=True, help="Replace existing secrets (workers need the new ones).")
@click.option("--users/--no-users", default=True, show_default=True,
              help="Also a password per Redis ACL user (one per role) and users.acl.")  # fmt: skip
def init(data_dir: Path | None, task_name: str, regions: tuple[str, ...], directory: Path | None,
         namespace: str, force: bool, users: bool) -> None:  # fmt: skip
    """Create a secret per region and a Redis user per role.

    Copy REGION.key and users/NS-worker-REGION.password to that region's worker hosts only; give
    users.acl to the Redis server (`fedq redis acl` prints it). The embedded server starts with
    it (it needs Redis >= 7: see `fedq redis --help`).
    """
    from shared.auth import init_keys, init_users, key_dir
    from tasks.api import load_task

    names = list(regions) or (list(load_task(task_name).describe(data_dir).regions)
                              if data_dir else [])  # fmt: skip
    if not names:
        raise click.UsageError("give --data DIR or --region R (repeatable)")
    directory = directory or key_dir(namespace)
    written = init_keys(directory, names, force)
    kept = len(names) - len(written)
    click.echo(f"{len(written)} secret(s) written to {directory}"
               + (f", {kept} kept (use --force to replace)" if kept else ""))  # fmt: skip
    if users:
        made = init_users(directory, namespace, names, force)
        click.echo(f"{len(made)} Redis user password(s) written to {directory / 'users'}; "
                   f"ACL file: {directory / 'users.acl'}")  # fmt: skip
