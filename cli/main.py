"""The ``fedq`` command: a thin root group that loads each package's commands by dotted name.

Loading lazily keeps a worker host from importing coordinator code (and everything from importing
torch) just to print ``--help``. Library errors (``FedqError``, bad values) print as one line.
"""

from __future__ import annotations

import faulthandler
import importlib
import signal
import sys

import click
import redis

from shared.errors import FedqError

COMMANDS = {
    "data": "cli.data:data",
    "baseline": "cli.federation:baseline",
    "redis": "cli.redis_admin:redis_group",
    "worker": "cli.worker:worker",
    "coordinator": "cli.federation:coordinator",
    "aggregator": "cli.federation:aggregator",
    "run": "cli.federation:run_cmd",
    "report": "cli.federation:report",
    "recommend": "tasks.recommender.serve_cli:recommend",
    "serve": "cli.serve:serve",
    "export": "cli.export:export",
    "keys": "cli.keys:keys_group",
    "status": "cli.inspection:status",
    "queues": "cli.inspection:queues",
    "workers": "cli.inspection:workers",
    "jobs": "cli.inspection:jobs",
    "updates": "cli.inspection:updates",
    "rejections": "cli.inspection:rejections",
    "models": "cli.inspection:models",
    "requeue": "cli.inspection:requeue",
    "quarantine": "cli.inspection:quarantine",
    "audit": "cli.federation:audit_cmd",
}


class LazyGroup(click.Group):
    """A group whose commands (``lazy``: name -> "module:attr") are imported when used."""

    def __init__(self, *args, lazy: dict[str, str] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = lazy or {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.lazy, *super().list_commands(ctx)})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy:
            module, _, attr = self.lazy[name].partition(":")
            return getattr(importlib.import_module(module), attr)
        return super().get_command(ctx, name)


class RootGroup(LazyGroup):
    """The ``fedq`` command: library errors print as one line, never a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except FedqError as exc:
            raise click.ClickException(str(exc)) from None
        except redis.RedisError as exc:
            raise click.ClickException(f"Redis error: {exc}") from None
        except (ValueError, OSError) as exc:  # bad settings, unreadable paths: still one line
            raise click.ClickException(f"{type(exc).__name__}: {exc}") from None


@click.group(cls=RootGroup, lazy=COMMANDS)
@click.version_option(package_name="fedq")
def cli() -> None:
    """fedq: asynchronous federated learning over Redis queues."""


def main() -> None:
    # any fedq process prints every thread's stack to stderr on SIGUSR1 (`kill -USR1 <pid>`):
    # a role that seems stuck says where, and goes on
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    sys.exit(cli.main(prog_name="fedq"))
