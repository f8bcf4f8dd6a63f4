"""Click options for a federation's settings, shared by ``fedq coordinator`` and ``fedq run``.

Each flag overrides the TOML file given with ``--config``, which overrides the defaults; the
names match ``shared.settings.FederationSettings``. The task's own settings are set with
``--set KEY=VALUE`` (repeatable; ``--set lr=0.001``): the task checks them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from shared import settings as settings_mod
from shared.aggregation import STALENESS_FUNCTIONS
from shared.codec import ENCODINGS
from shared.settings import MODES, NORM_ACTIONS, FederationSettings

DEFAULT_DP_CLIP = 1.0  # per-shopper gradient bound when only a budget is given
# flag -> (settings key, click type, help)
FLAGS: dict[str, tuple[str, Any, str]] = {
    "--task": ("task", str, "built-in task (recommender, fraud, toy), module:attr or file.py:attr"),
    "--mode": ("mode", click.Choice(MODES), "async (FedAsync), buffered (FedBuff), sync (FedAvg)"),
    "--alpha": ("alpha", float, "FedAsync mixing weight alpha"),
    "--staleness": ("staleness", click.Choice(STALENESS_FUNCTIONS), "staleness function"),
    "--staleness-a": ("staleness_a", float, "polynomial exponent / hinge slope"),
    "--staleness-b": ("staleness_b", float, "hinge: staleness tolerated at full weight"),
    "--sample-weighting/--no-sample-weighting": ("sample_weighting", None, "weigh by samples"),
    "--buffer-size": ("buffer_size", int, "FedBuff: updates per flush (K)"),
    "--server-lr": ("server_lr", float, "FedBuff: server learning rate"),
    "--round-deadline": ("round_deadline", float, "FedAvg: seconds a round waits"),
    "--max-update-norm": ("max_update_norm", float, "L2 bound on an update (0: none)"),
    "--norm-action": ("norm_action", click.Choice(NORM_ACTIONS), "above the bound: reject or clip"),
    "--robust/--no-robust": (
        "robust",
        None,
        "judge each update against the regions' recent ones (norm, direction, influence)",
    ),
    "--robust-norm-factor": (
        "robust_norm_factor",
        float,
        "scale down deltas longer than this x the regions' median norm",
    ),
    "--robust-row-factor": (
        "robust_row_factor",
        float,
        "scale down a table's row moved more than this x the regions' median move (0: off)",
    ),
    "--direction-floor": (
        "direction_floor",
        float,
        "cosine with the recent trajectory at which an update's weight reaches zero",
    ),
    "--direction-full": (
        "direction_full",
        float,
        "cosine with the recent trajectory from which an update has its full weight",
    ),
    "--influence-slack": (
        "influence_slack",
        float,
        "a region's share of the recent applied weight is held to this x its data share",
    ),
    "--max-region-share": (
        "max_region_share",
        float,
        "the largest data share a region's announced size can claim",
    ),
    "--dp-clip": (
        "dp_clip",
        float,
        "DP-SGD: clip each shopper's gradient to this L2 norm (0: off; --dp-epsilon alone sets 1)",
    ),
    "--dp-noise": (
        "dp_noise",
        float,
        "DP-SGD: Gaussian noise multiplier per step (sd = noise x "
        "clip; 0: planned from --dp-epsilon)",
    ),
    "--dp-epsilon": (
        "dp_epsilon",
        float,
        "DP-SGD: each region's privacy budget over the run; jobs beyond it are refused (0: none)",
    ),
    "--dp-delta": ("dp_delta", float, "DP-SGD: delta (0: a tenth of 1/shoppers, per region)"),
    "--signed-updates/--no-signed-updates": (
        "signed_updates",
        None,
        "updates carry their region's HMAC-SHA256",
    ),
    "--max-staleness": ("max_staleness", int, "reject updates staler than this"),
    "--inflight": ("inflight_per_region", int, "train jobs in flight per region"),
    "--max-inflight": ("max_inflight", int, "train jobs in flight over all regions (0: no bound)"),
    "--worker-ttl": ("worker_ttl", float, "seconds of silence after which a worker is gone"),
    "--max-retries": ("max_retries", int, "re-runs of a train job whose worker died or failed"),
    "--max-failures": (
        "max_failures",
        int,
        "a region's jobs failing the same way this many times in a row: the region is left out, "
        "and a run whose every region fails so stops (0: never)",
    ),
    "--eval-every": ("eval_every", int, "versions between federated evaluations"),
    "--target-versions": ("target_versions", int, "stop at this many versions (0: none)"),
    "--time-budget": ("time_budget", float, "stop after this many seconds (0: none)"),
    "--target-metric": ("target_metric", float, "stop at this validation headline (0: none)"),
    "--eval-grace": (
        "eval_grace",
        float,
        "seconds after a version's first evaluation result it counts with two thirds of regions",
    ),
    "--decay-floor": (
        "decay_floor",
        float,
        "lr and alpha decay linearly to this fraction at the target",
    ),
    "--encoding": ("encoding", click.Choice(ENCODINGS), "update encoding"),
    "--seed": ("seed", int, "seed of the initial model and of the jobs"),
}


def _param(flag: str) -> str:
    return flag.split("/")[0].lstrip("-").replace("-", "_")


def param_of(setting: str) -> str:
    """The name click gives the flag of ``setting`` (``--inflight`` sets inflight_per_region)."""
    return next((_param(flag) for flag, (key, *_) in FLAGS.items() if key == setting), setting)


def settings_options(f: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(f)
    def wrapper(*args: Any, config: Path | None, **kwargs: Any) -> Any:
        overrides = {FLAGS[flag][0]: kwargs.pop(_param(flag)) for flag in FLAGS}
        for key, value in parse_assignments(kwargs.pop("task_set")).items():
            overrides[f"task_settings.{key}"] = value
        if overrides.get("dp_epsilon") and overrides.get("dp_clip") is None:
            overrides["dp_clip"] = DEFAULT_DP_CLIP  # --dp-epsilon alone turns DP-SGD on
        settings = settings_mod.load(config, overrides)
        return f(*args, settings=settings, **kwargs)

    for flag, (key, kind, help_text) in reversed(FLAGS.items()):
        default = getattr(FederationSettings(), key.split(".")[0]) if "." not in key else None
        extra = f" [default: {default}]" if default is not None else ""
        if kind is None:
            wrapper = click.option(flag, default=None, help=help_text)(wrapper)
        else:
            wrapper = click.option(flag, type=kind, default=None, help=help_text + extra)(wrapper)
    wrapper = click.option(
        "--set", "task_set", multiple=True, metavar="KEY=VALUE",
        help="One of the task's own settings (repeatable), e.g. --set lr=0.001.",
    )(wrapper)  # fmt: skip
    wrapper = click.option(
        "--config", type=click.Path(path_type=Path, dir_okay=False), default=None,
        help="TOML file of settings (flags override it).",
    )(wrapper)  # fmt: skip
    return wrapper


def parse_assignments(pairs: tuple[str, ...]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs; a value reads as JSON (a number, true/false) or else as text."""
    import json

    out: dict[str, Any] = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key.strip():
            raise click.BadParameter(f"{pair!r}: write KEY=VALUE", param_hint="--set")
        try:
            out[key.strip()] = json.loads(value)
        except ValueError:
            out[key.strip()] = value
    return out
