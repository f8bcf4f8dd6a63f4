"""``fedq redis``: the embedded Redis server of FEDQ_HOME."""

from __future__ import annotations

import click

from shared import redis_server


@click.group("redis")
def redis_group() -> None:
    """Start, stop and locate the embedded Redis (a real redis-server, AOF on, loopback only)."""


@redis_group.command()
def start() -> None:
    """Start the embedded server unless it runs; print its URL."""
    click.echo(redis_server.ensure_embedded())


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
def url() -> None:
    """Print the embedded server's URL, starting it if needed (for `rq info --url ...`)."""
    click.echo(redis_server.ensure_embedded())
