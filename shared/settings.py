"""A federation's settings: one frozen dataclass, from defaults, a TOML file and flags.

The coordinator writes them into Redis once (``Keys.config``) when it initialises a federation;
the aggregator and the workers read them from there, so every process of a federation agrees.
"""

from __future__ import annotations

import json
import math
import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from shared.aggregation import STALENESS_FUNCTIONS, Staleness
from shared.codec import ENCODINGS
from shared.errors import FedqError

MODES = ("async", "buffered", "sync")
NORM_ACTIONS = ("reject", "clip")


class SettingsError(FedqError):
    pass


@dataclass(frozen=True)
class FederationSettings:
    """Settings of the federation itself; the task's own (learning rate, model size, ...) are a
    mapping the task validates (``tasks.api.Task.settings``), kept in ``task_settings``."""

    task: str = "recommender"  # a built-in task, module:attr or file.py:attr (tasks/api.py)
    mode: str = "async"
    # FedAsync
    alpha: float = 0.6
    staleness: str = "polynomial"
    staleness_a: float = 0.5
    staleness_b: float = 4.0
    sample_weighting: bool = False  # weigh by data size (off: dispatch is proportional already)
    # FedBuff
    buffer_size: int = 6
    server_lr: float = 1.0
    # FedAvg
    round_deadline: float = 120.0
    # every mode: an update whose delta's L2 norm exceeds this is rejected or scaled down to it
    # (honest updates of the default model measure about 6-8 at the start, less as lr decays)
    max_update_norm: float = 50.0  # 0: no bound
    norm_action: str = "reject"  # reject | clip
    # robust aggregation (coordinator/guard.py): each update judged against the regions' recent
    # ones: its norm scaled down above robust_norm_factor x the median of the regions' median
    # norms; its weight lowered when its cosine with the model's recent trajectory falls below
    # direction_full, to zero at direction_floor; a region's share of the recent applied weight
    # held to influence_slack x its data share (an announced share counts up to max_region_share)
    robust: bool = True
    robust_norm_factor: float = 1.5
    robust_row_factor: float = 4.0  # each row of a large table: this x the regions' median (0: off)
    direction_floor: float = -0.1
    direction_full: float = 0.05
    influence_slack: float = 1.25
    max_region_share: float = 0.5
    # differential privacy, DP-SGD inside each region's training (shared/privacy.py): each
    # shopper's gradient clipped to dp_clip (0: off), Gaussian noise of dp_noise x dp_clip per
    # step; dp_noise 0: each region plans it to spend dp_epsilon by the target; dp_epsilon is
    # each region's budget (0: none); dp_delta 0: a tenth of one over the region's shoppers
    dp_clip: float = 0.0
    dp_noise: float = 0.0
    dp_epsilon: float = 0.0
    dp_delta: float = 0.0
    signed_updates: bool = False  # workers sign updates with their region's secret (shared/auth.py)
    # every async mode
    max_staleness: int = 32
    # dispatch
    inflight_per_region: int = 2
    max_inflight: int = 0  # train jobs in flight over all regions (0: no bound); see DESIGN.md
    stall_after: float = 10.0  # a job queued this long unstarted stops counting toward max_inflight
    job_timeout: float = 600.0
    worker_ttl: float = 10.0  # a worker silent this long is gone: its started job is retried
    max_retries: int = 2  # times a train job is re-run after its worker died or failed it
    queue_ttl: float = 300.0  # a queued job nobody starts within this expires
    # jobs of a region failing the same way in a row (raised, or output rejected) before the
    # region is left out; every region so: the task is broken and fedq run stops (0: never)
    max_failures: int = 5
    eval_every: int = 600  # versions between federated evaluations (0: only the final one)
    # stop at whichever comes first (0: no such target)
    target_versions: int = 3600
    time_budget: float = 0.0
    target_metric: float = 0.0  # the task's headline on validation (combined) to reach
    # a version evaluated by two thirds of the regions counts this long after its first result
    # even if the others stay silent (shared/consensus.py); every region reporting counts at once
    eval_grace: float = 60.0
    decay_floor: float = 0.1  # local lr and FedAsync alpha decay linearly to this at the target
    seed: int = 0
    encoding: str = "fp32"  # of updates on the wire (shared/codec.py)
    task_settings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problems = []
        # NaN passes every comparison below (a budget of NaN would cap nothing): refuse it first
        unbounded = [f.name for f in fields(self) if isinstance(getattr(self, f.name), float)
                     and not math.isfinite(getattr(self, f.name))]  # fmt: skip
        if unbounded:
            problems.append(f"{', '.join(unbounded)} must be finite (not NaN or infinite)")
        if self.mode not in MODES:
            problems.append(f"mode {self.mode!r} (choose {', '.join(MODES)})")
        if self.staleness not in STALENESS_FUNCTIONS:
            problems.append(
                f"staleness {self.staleness!r} (choose {', '.join(STALENESS_FUNCTIONS)})"
            )
        if not 0 < self.alpha <= 1:
            problems.append(f"alpha {self.alpha} (must be in (0, 1])")
        if self.buffer_size < 1 or self.server_lr <= 0:
            problems.append("buffer_size must be >= 1 and server_lr > 0")
        if self.max_staleness < 0 or self.inflight_per_region < 1 or self.max_inflight < 0:
            problems.append("max_staleness, max_inflight >= 0 and inflight_per_region >= 1")
        if self.max_update_norm < 0 or self.norm_action not in NORM_ACTIONS:
            problems.append(f"max_update_norm >= 0 and norm_action in {', '.join(NORM_ACTIONS)}")
        if self.robust_row_factor != 0 and self.robust_row_factor < 1:
            problems.append("robust_row_factor must be 0 (off) or >= 1")
        if self.robust_norm_factor < 1 or self.influence_slack < 1:
            problems.append("robust_norm_factor and influence_slack must be >= 1")
        if not -1 <= self.direction_floor < self.direction_full <= 1:
            problems.append("direction_floor < direction_full, both in [-1, 1]")
        if not 0 < self.max_region_share <= 1:
            problems.append(f"max_region_share {self.max_region_share} (must be in (0, 1])")
        if min(self.dp_clip, self.dp_noise, self.dp_epsilon) < 0 or not 0 <= self.dp_delta < 1:
            problems.append("dp_clip, dp_noise, dp_epsilon >= 0 and dp_delta in [0, 1)")
        if (self.dp_noise or self.dp_epsilon) and not self.dp_clip:
            problems.append("dp_noise and dp_epsilon need dp_clip (DP-SGD's per-shopper bound)")
        if self.dp_clip and not (self.dp_noise or self.dp_epsilon):
            problems.append("dp_clip needs dp_epsilon (a budget to plan the noise for) or dp_noise")
        if self.dp_clip and not self.dp_noise and not self.target_versions:
            problems.append("dp_epsilon without dp_noise needs target_versions (to plan for)")
        if min(self.job_timeout, self.queue_ttl) < 1 or self.round_deadline <= 0:
            problems.append("job_timeout and queue_ttl must be >= 1 second, round_deadline > 0")
        durations = (self.stall_after, self.time_budget, self.eval_every, self.target_versions)
        if min(*durations, self.eval_grace) < 0:
            problems.append(
                "stall_after, time_budget, eval_every, target_versions and eval_grace >= 0"
            )
        if self.worker_ttl < 2 or self.max_retries < 0 or self.max_failures < 0:
            problems.append("worker_ttl must be >= 2 seconds, max_retries and max_failures >= 0")
        if self.encoding not in ENCODINGS:
            problems.append(f"encoding {self.encoding!r} (choose {', '.join(ENCODINGS)})")
        if not isinstance(self.task_settings, dict) or not isinstance(self.task, str):
            problems.append("task must be a name and task_settings a table")
        if not 0 < self.decay_floor <= 1:
            problems.append(f"decay_floor {self.decay_floor} (must be in (0, 1])")
        if problems:
            raise SettingsError("bad settings: " + "; ".join(problems))

    def progress(self, version: int, elapsed: float) -> float:
        """How far the run is towards its target, 0..1 (0 when it has no version or time target)."""
        parts = []
        if self.target_versions:
            parts.append(version / self.target_versions)
        if self.time_budget:
            parts.append(elapsed / self.time_budget)
        return min(1.0, max(parts)) if parts else 0.0

    def decay(self, version: int, elapsed: float) -> float:
        """Linear decay from 1 to ``decay_floor`` at the target (1 without a target).

        Applied to the local learning rate and to FedAsync's alpha. Without it the model keeps
        being pulled towards each region's optimum at full strength and drifts down after its
        peak (measured with the recommender on its default data: its headline 0.345 at 800
        versions, 0.327 at 1200).
        """
        return 1.0 - (1.0 - self.decay_floor) * self.progress(version, elapsed)

    def staleness_function(self) -> Staleness:
        return Staleness(self.staleness, self.staleness_a, self.staleness_b)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @staticmethod
    def from_json(text: str | bytes) -> FederationSettings:
        return from_mapping(json.loads(text))


def from_mapping(raw: dict[str, Any], base: FederationSettings | None = None) -> FederationSettings:
    """Settings from a (TOML or JSON) mapping; unknown keys are an error naming them. The
    ``task_settings`` table is merged into the base's (the task checks its keys)."""
    base = base or FederationSettings()
    raw = dict(raw)
    if "train" in raw:
        raise SettingsError("the [train] table is now [task_settings] (the task's own settings)")
    task_raw = raw.pop("task_settings", {}) or {}
    unknown = sorted(set(raw) - {f.name for f in fields(FederationSettings)})
    if unknown:
        raise SettingsError(f"unknown settings: {', '.join(unknown)}")
    if not isinstance(task_raw, dict):
        raise SettingsError("task_settings must be a table")
    if raw.get("task", base.task) != base.task:
        base = replace(base, task_settings={})  # another task's settings do not carry over
    try:
        return replace(base, **raw, task_settings={**base.task_settings, **task_raw})
    except TypeError as exc:
        raise SettingsError(f"bad settings: {exc}") from None


def load(path: Path | None, overrides: dict[str, Any] | None = None) -> FederationSettings:
    """Defaults, then the TOML file (if any), then flag overrides (None values are skipped)."""
    settings = FederationSettings()
    if path is not None:
        try:
            settings = from_mapping(tomllib.loads(Path(path).read_text()), settings)
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"{path}: not valid TOML ({exc})") from None
        except FileNotFoundError:
            raise SettingsError(f"{path}: not found") from None
    if overrides:
        prefix = "task_settings."
        flat = {k: v for k, v in overrides.items() if v is not None and not k.startswith(prefix)}
        task = {k[len(prefix):]: v for k, v in overrides.items()
                if v is not None and k.startswith(prefix)}  # fmt: skip
        settings = from_mapping({**flat, "task_settings": task}, settings)
    return settings
