"""``fedq serve``: a region's online service of the newest global model (HTTP, FastAPI on uvicorn).

The service logs in as its region's worker user (it reads the models, the version and the
commits, and writes nothing), reads the region's shoppers from its own data directory, and
follows the federation: each new version is checked and built off to the side, then swapped in
while requests keep being answered. ``--model FILE`` serves an export of ``fedq export`` with
no Redis at all.
"""

from __future__ import annotations

import gc
import socket
from pathlib import Path

import click

from cli.options import data_option, model_file_option, open_redis, redis_options, wait_option


@click.command()
@click.option("--region", required=True, help="The region whose shoppers this service ranks for.")
@data_option("Data directory with the task's public files and this region's folder.", required=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True,
              help="Port to listen on (0: a free one, printed at start).")  # fmt: skip
@model_file_option("Serve this export of `fedq export` (no Redis, no swaps).")
@click.option("--swap-every", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="At most one model swap per this many seconds (0: every new "
                   "version).")  # fmt: skip
@click.option("--only-evaluated", is_flag=True,
              help="Swap in only versions every region evaluated whose validation headline did "
                   "not fall from the evaluated version before (the federation's --eval-every "
                   "says how often there is one).")  # fmt: skip
@click.option("--poll", type=click.FloatRange(min=0.05), default=5.0, show_default=True,
              help="Seconds between looks at the version when no commit wakes the "
                   "service.")  # fmt: skip
@click.option(
    "--task",
    "task_name",
    default=None,
    help="The federation's task, if it is not built in (module:attr or file.py).",
)
@wait_option
@redis_options
def serve(region: str, data_dir: Path, host: str, port: int, model_file: Path | None,
          swap_every: float, only_evaluated: bool, poll: float, task_name: str | None, wait: float,
          redis_url: str | None, namespace: str) -> None:  # fmt: skip
    """Serve REGION's recommendations from the newest model over HTTP (/docs lists the API)."""
    import time

    import torch
    import uvicorn

    from serving.app import FixedModel, ServiceInfo, create_app
    from serving.follower import EvaluationGate, ModelFollower, Served, SwapPolicy
    from serving.guard import GuardedHttpToolsProtocol

    def say(message: str) -> None:
        click.echo(message, err=True)

    torch.set_num_threads(1)  # a request is a few small products: threads only contend
    if model_file is not None and (only_evaluated or swap_every):
        raise click.UsageError("--model serves one file: --only-evaluated and --swap-every "
                               "are for following the federation")  # fmt: skip
    if model_file is not None:
        from cli.export import load_model

        task, settings, meta = _task_of_file(model_file, task_name)
        service = task.service(data_dir, region, settings)
        weights, meta = load_model(task, data_dir, model_file, None, namespace, None)
        source = FixedModel(Served(int(meta["version"]), service.build(weights), time.time()))
        follow, origin = None, str(model_file)
    else:
        # the follower blocks on the commits for up to --poll seconds: the socket must wait longer
        # a service follows a federation that exists: no URL is an error, not an empty server
        connection, keys = open_redis(redis_url, namespace, wait, say, start_embedded=False,
                                      user=lambda users: users.worker(region),
                                      socket_timeout=poll + 5)  # fmt: skip
        fed, task, settings, template = _task_of_federation(connection, keys, data_dir,
                                                             task_name)  # fmt: skip
        service = task.service(data_dir, region, settings)
        policy = SwapPolicy(min_interval=swap_every, evaluated=only_evaluated)
        gate = EvaluationGate(
            connection,
            keys,
            fed.regions,
            fed.metrics,
            fed.settings.eval_grace,
            fed.settings.max_failures,
        )
        source = ModelFollower(connection, keys, template, service.build, policy, say,
                               gate=gate)  # fmt: skip
        follow, origin = (lambda stop: source.run(stop, interval=poll)), "redis"
    app = create_app(source, ServiceInfo(task.name, region, origin),
                     service.router(lambda: source.served), follow)  # fmt: skip
    # the region's data, the task's public files and torch live as long as the process: keep
    # them out of the collector's full passes, which stalled 1 request in 100 for ~100 ms
    gc.collect()
    gc.freeze()
    try:
        listener = socket.create_server((host, port), backlog=1024)
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc}") from None
    bound = listener.getsockname()[1]
    say(f"fedq serve: region {region}, task {task.name}, model from {origin}, on "
        f"http://{host}:{bound} (API at /docs)")  # fmt: skip
    # httptools, with a bound on a request head's size and time (serving/guard.py): without
    # it a 20 MB header was read in full and slow-header clients held connections at will
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                            timeout_graceful_shutdown=10,
                            http=GuardedHttpToolsProtocol)  # fmt: skip
    uvicorn.Server(config).run(sockets=[listener])


def _task_of_file(model_file: Path, task_name: str | None):
    import json

    from shared.errors import FedqError
    from tasks.api import BUILT_IN, load_task, require_service

    meta_file = model_file.with_suffix(model_file.suffix + ".json")
    try:
        meta = json.loads(meta_file.read_text())
        name, settings = str(meta["task"]), dict(meta["task_settings"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise FedqError(f"{meta_file}: not the metadata `fedq export` writes ({exc})") from None
    _allowed(name, task_name, BUILT_IN)
    task = load_task(name)
    require_service(task, name)
    return task, task.settings(settings), meta


def _task_of_federation(connection, keys, data_dir: Path, task_name: str | None):
    from shared import federation
    from tasks.api import BUILT_IN, load_task, require_service

    fed = federation.read(connection, keys)
    if fed is None:
        from shared.errors import FedqError

        raise FedqError(f"no federation under namespace {keys.namespace!r}")
    _allowed(fed.settings.task, task_name, BUILT_IN)
    task = load_task(fed.settings.task)
    require_service(task, fed.settings.task)
    federation.check_data(fed, task, data_dir)
    settings = task.settings(fed.settings.task_settings)
    # the shapes a served model must have come from this host's own copy of the task
    template = task.initial_weights(data_dir, settings, seed=0)
    return fed, task, settings, template


def _allowed(name: str, task_name: str | None, built_in) -> None:
    """Like a worker, the service imports only a built-in task or the one its operator named."""
    from shared.errors import FedqError

    if name not in built_in and name != task_name:
        raise FedqError(f"the model's task {name[:200]!r} is not built in: start the service "
                        "with --task naming it to serve it")  # fmt: skip
