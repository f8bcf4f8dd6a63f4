"""``fedq export`` and the model loading every task's serving hooks share.

A model comes from Redis (``--version``, default the current one) or from a file written by
``export`` (numpy ``.npz``, whatever the task, plus a JSON of its metadata: task, task settings,
data digest). Either way it is checked against the data directory it will serve from.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from cli.options import open_redis, redis_options
from tasks.api import Weights


def model_from_redis(redis_url: str | None, namespace: str, version: int | None
                     ) -> tuple[Weights, dict[str, Any]]:  # fmt: skip
    """(weights, metadata) of a stored version (default: the current one)."""
    from shared import federation
    from shared.errors import FedqError
    from shared.store import ModelStore

    r, keys = open_redis(redis_url, namespace, start_embedded=False)
    fed = federation.read(r, keys)
    if fed is None:
        raise FedqError(f"no federation under namespace {namespace!r}")
    store = ModelStore(r, keys, window=fed.settings.max_staleness + 1)
    model = store.read_current() if version is None else store.read(version)
    if model is None:
        raise FedqError(
            f"model version {version} is not stored (only the last "
            f"{fed.settings.max_staleness + 1} versions are; current: {store.current_version()})"
        )
    info = {k.decode(): v.decode() for k, v in r.hgetall(keys.model_info(model.version)).items()}
    meta = {"version": model.version, "namespace": namespace, "data": fed.data_name,
            "task": fed.settings.task, "task_settings": fed.settings.task_settings,
            "data_digest": fed.data_digest, "regions": list(fed.regions),
            "mode": fed.settings.mode,
            "created_at": float(info["created_at"]) if "created_at" in info else None,
            "settings": json.loads(fed.settings.to_json())}  # fmt: skip
    return model.weights, meta


def load_model(task, data_dir: Path, model_file: Path | None, redis_url: str | None,
               namespace: str, version: int | None) -> tuple[Weights, dict[str, Any]]:  # fmt: skip
    """A model of ``task`` that fits ``data_dir``'s public part, from a file or Redis."""
    from shared.errors import FedqError
    from shared.federation import check_digest

    if model_file is not None:
        import numpy as np

        meta_file = model_file.with_suffix(model_file.suffix + ".json")
        try:
            meta = json.loads(meta_file.read_text())
            with np.load(model_file, allow_pickle=False) as stored:
                weights = {k: stored[k] for k in stored.files}
        except (OSError, ValueError) as exc:
            raise FedqError(f"{model_file}: not a model written by `fedq export` ({exc})") from None
    else:
        weights, meta = model_from_redis(redis_url, namespace, version)
    if meta.get("task") != task.name:
        raise FedqError(f"the model is of task {meta.get('task')!r}, not {task.name!r}")
    check_digest(task, data_dir, meta.get("data_digest"),
                 f"the model's (data set {meta.get('data')!r})")  # fmt: skip
    return weights, meta


@click.command()
@click.option("--version", type=int, default=None, help="Stored model version [default: current].")
@click.option(
    "--out",
    "out_file",
    type=click.Path(path_type=Path, dir_okay=False),
    required=True,
    help="numpy .npz of the weights; its metadata goes to OUT.json.",
)
@redis_options
def export(version: int | None, out_file: Path, redis_url: str | None, namespace: str) -> None:
    """Write a model version as a numpy .npz plus a small JSON of its metadata."""
    import numpy as np

    weights, meta = model_from_redis(redis_url, namespace, version)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    with out_file.open("wb") as f:  # a file object: numpy adds no .npz suffix of its own
        np.savez(f, **weights)
    meta_file = out_file.with_suffix(out_file.suffix + ".json")
    meta_file.write_text(json.dumps(meta, indent=2) + "\n")
    click.echo(f"wrote {out_file} (version {meta['version']}) and {meta_file}")
