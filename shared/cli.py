"""The ``fedq`` command: a thin root group that loads each package's commands by dotted name.

Loading lazily keeps a worker host from importing coordinator code (and everything from importing
torch) just to print ``--help``. Library errors (``FedqError``, bad values) print as one line.
"""

from __future__ import annotations

import importlib
import sys

import click
import redis

from shared.errors import FedqError

COMMANDS = {
    "data": "tasks.cli:data",
    "baseline": "coordinator.cli:baseline",
    "redis": "shared.redis_cli:redis_group",
    "worker": "worker.cli:worker",
    "coordinator": "coordinator.cli:coordinator",
    "aggregator": "coordinator.cli:aggregator",
    "run": "coordinator.cli:run_cmd",
    "report": "coordinator.cli:report",
    "recommend": "tasks.recommender.serve_cli:recommend",
    "export": "shared.serve_cli:export",
    "keys": "shared.auth_cli:keys_group",
    "status": "shared.inspect_cli:status",
    "queues": "shared.inspect_cli:queues",
    "workers": "shared.inspect_cli:workers",
    "jobs": "shared.inspect_cli:jobs",
    "updates": "shared.inspect_cli:updates",
    "rejections": "shared.inspect_cli:rejections",
    "models": "shared.inspect_cli:models",
    "requeue": "shared.inspect_cli:requeue",
    "audit": "coordinator.cli:audit_cmd",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*COMMANDS, *super().list_commands(ctx)})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in COMMANDS:
            module, _, attr = COMMANDS[name].partition(":")
            return getattr(importlib.import_module(module), attr)
        return super().get_command(ctx, name)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except FedqError as exc:
            raise click.ClickException(str(exc)) from None
        except redis.RedisError as exc:
            raise click.ClickException(f"Redis error: {exc}") from None
        except (ValueError, OSError) as exc:  # bad settings, unreadable paths: still one line
            raise click.ClickException(f"{type(exc).__name__}: {exc}") from None


@click.group(cls=LazyGroup)
@click.version_option(package_name="fedq")
def cli() -> None:
    """fedq: asynchronous federated learning over Redis queues."""


def main() -> None:
    sys.exit(cli.main(prog_name="fedq"))
