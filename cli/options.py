"""Options every Redis-facing command shares, and the one place that turns them into a client.

``--redis-url`` (env ``FEDQ_REDIS_URL``; ``redis://``, ``rediss://`` or ``unix://``) and
``--namespace`` (env ``FEDQ_NAMESPACE``). Without a URL, the embedded server of ``FEDQ_HOME``
is used, started on first use. A URL without credentials logs in as the command's role user
when the key directory holds its password (``shared.acl``); the embedded server then starts with
that directory's ACL file.
"""

from __future__ import annotations

import functools
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import redis

from shared.acl import Users
from shared.auth import ACL_FILE, key_dir, load_password
from shared.errors import FedqError
from shared.keys import DEFAULT_NAMESPACE, Keys
from shared.redis_server import (
    URL_ENV,
    EmbeddedAcl,
    connect,
    default_home,
    embedded_url,
    redact,
    resolve_url,
)
from shared.resilience import Outage, retry_redis


def redis_options(f: Callable[..., Any]) -> Callable[..., Any]:
    @click.option(
        "--redis-url",
        envvar="FEDQ_REDIS_URL",
        default=None,
        help="Redis URL [env FEDQ_REDIS_URL; default: the embedded server].",
    )
    @click.option(
        "--namespace",
        envvar="FEDQ_NAMESPACE",
        default=DEFAULT_NAMESPACE,
        show_default=True,
        help="Key namespace of the federation [env FEDQ_NAMESPACE].",
    )
    @functools.wraps(f)
    def wrapper(*args: Any, redis_url: str | None, namespace: str, **kwargs: Any) -> Any:
        return f(*args, redis_url=redis_url, namespace=namespace, **kwargs)

    return wrapper  # fmt: skip


def data_option(
    help: str, *, required: bool = False, exists: bool = True, default: Path | None = None
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--data`` (``data_dir``): every command names its data directory the same way."""
    return click.option(
        "--data",
        "data_dir",
        type=click.Path(path_type=Path, exists=exists, file_okay=False),
        required=required,
        default=default,
        show_default=default is not None,
        help=help,
    )


def model_file_option(help: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--model`` (``model_file``): a file written by ``fedq export``, instead of Redis."""
    return click.option("--model", "model_file", default=None, help=help,
                        type=click.Path(path_type=Path, exists=True, dir_okay=False))  # fmt: skip


def metrics_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--metrics-port`` (off by default; 0: a free port) and ``--metrics-host``: where a role
    serves its Prometheus metrics (``shared.telemetry``)."""
    f = click.option("--metrics-host", default="127.0.0.1", show_default=True,
                     help="Address of the metrics endpoint (with --metrics-port).")(f)  # fmt: skip
    return click.option("--metrics-port", type=click.IntRange(0, 65535), default=None,
                        help="Serve Prometheus metrics at http://HOST:PORT/metrics (0: a free "
                             "port, printed) [default: off].")(f)  # fmt: skip


def serve_metrics(metrics: Any, port: int | None, host: str, role: str) -> None:
    """Start ``metrics``' endpoint if a port was given, and say where (one line)."""
    if port is None:
        return
    try:
        server = metrics.serve(port, host)
    except OSError as exc:
        raise FedqError(f"{role}: cannot serve metrics on {host}:{port}: {exc}") from None
    click.echo(f"{role}: Prometheus metrics on http://{host}:{server.server_port}/metrics",
               err=True)  # fmt: skip


wait_option = click.option(
    "--wait",
    type=float,
    default=60.0,
    show_default=True,
    help="Seconds to wait for Redis and for a coordinator to initialise the federation.",
)


def embedded_acl(namespace: str) -> EmbeddedAcl | None:
    """The ACL the embedded server must run with: the key directory's, if it has one."""
    directory = key_dir(namespace)
    if not (directory / ACL_FILE).exists():
        return None
    admin = Users(namespace).admin
    password = load_password(directory, admin)
    return EmbeddedAcl((directory / ACL_FILE).read_text(), (admin, password) if password else None)


def open_redis(
    redis_url: str | None,
    namespace: str,
    wait: float = 0.0,
    say: Callable[[str], None] | None = None,
    start_embedded: bool = True,
    user: Callable[[Users], str] | None = None,
    socket_timeout: float | None = None,
) -> tuple[redis.Redis, Keys]:
    """A checked connection: one clear line if Redis cannot be reached.

    With ``wait``, a long-running role started before its Redis (a compose file's services
    start in any order) retries with backoff for that many seconds before giving up. Without
    ``start_embedded`` (inspection commands), no URL and no running embedded server is an error
    rather than a reason to start an empty server.
    """
    if not start_embedded and not (redis_url or os.environ.get(URL_ENV) or embedded_url()):
        raise FedqError(
            f"no Redis to look at: pass --redis-url or set {URL_ENV} (the embedded server of "
            f"{default_home()} is not running)"
        )
    users = Users(namespace)
    name = user(users) if user else users.admin
    password = load_password(key_dir(namespace), name)
    url = resolve_url(redis_url, acl=embedded_acl(namespace))
    connection = connect(url, (name, password) if password else None, socket_timeout)
    outage = Outage(say, f"waiting for Redis at {redact(url)}")
    deadline = time.monotonic() + wait
    try:
        retry_redis(connection.ping, outage, should_stop=lambda: time.monotonic() >= deadline)
    except redis.AuthenticationError as exc:  # a ConnectionError too: this clause goes first
        raise FedqError(f"Redis at {redact(url)} refused the credentials: {exc}") from None
    except redis.ResponseError as exc:  # NOAUTH, WRONGPASS, NOPERM
        raise FedqError(f"Redis at {redact(url)} refused the login: {exc}") from None
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        raise FedqError(f"cannot reach Redis at {redact(url)}: {exc}") from None
    return connection, Keys(namespace)


class StopFlag:
    """Set by SIGTERM/SIGINT: loops finish what they hold and return."""

    def __init__(self) -> None:
        self.stopped = False
        signal.signal(signal.SIGTERM, self._set)
        signal.signal(signal.SIGINT, self._set)

    def _set(self, *_: object) -> None:
        self.stopped = True

    def __call__(self) -> bool:
        return self.stopped
