"""A federation's settings: one frozen dataclass, from defaults, a TOML file and flags.

The coordinator writes them into Redis once (``Keys.config``) when it initialises a federation;
the aggregator and the workers read them from there, so every process of a federation agrees.
"""

from __future__ import annotations

import json
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
class TrainSettings:
    """What every train job asks of a worker (the seed comes from the job)."""

    epochs: int = 1
    batch_size: int = 128
    lr: float = 3e-3
    prox_mu: float = 0.0
    examples_per_job: int = 1024  # a random subset of the region's training examples per job
    encoding: str = "fp32"


@dataclass(frozen=True)
class FederationSettings:
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
    # differential privacy (shared/privacy.py): workers clip updates to dp_clip and add
    # Gaussian noise of dp_noise * dp_clip; 0: off
    dp_clip: float = 0.0
    dp_noise: float = 0.0
    dp_delta: float = 1e-5
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
    eval_every: int = 600  # versions between federated evaluations (0: only the final one)
    # stop at whichever comes first (0: no such target)
    target_versions: int = 3600
    time_budget: float = 0.0
    target_metric: float = 0.0  # validation HR@10 (user-weighted) to reach
    # model
    decay_floor: float = 0.1  # local lr and FedAsync alpha decay linearly to this at the target
    model_dim: int = 64
    seed: int = 0
    train: TrainSettings = field(default_factory=TrainSettings)

    def __post_init__(self) -> None:
        problems = []
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
        if self.dp_clip < 0 or self.dp_noise < 0 or not 0 < self.dp_delta < 1:
            problems.append("dp_clip, dp_noise >= 0 and dp_delta in (0, 1)")
        if self.dp_noise and not self.dp_clip:
            problems.append("dp_noise needs dp_clip (the noise is scaled to the clipping bound)")
        if self.worker_ttl < 2 or self.max_retries < 0:
            problems.append("worker_ttl must be >= 2 seconds and max_retries >= 0")
        if self.train.encoding not in ENCODINGS:
            problems.append(f"encoding {self.train.encoding!r} (choose {', '.join(ENCODINGS)})")
        if self.train.examples_per_job < 1 or self.train.lr <= 0 or self.train.batch_size < 1:
            problems.append("examples_per_job, lr and batch_size must be positive")
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
        peak (measured on the default data: HR@10 0.345 at 800 versions, 0.327 at 1200).
        """
        return 1.0 - (1.0 - self.decay_floor) * self.progress(version, elapsed)

    def local_lr(self, version: int, elapsed: float) -> float:
        return self.train.lr * self.decay(version, elapsed)

    def staleness_function(self) -> Staleness:
        return Staleness(self.staleness, self.staleness_a, self.staleness_b)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @staticmethod
    def from_json(text: str | bytes) -> FederationSettings:
        return from_mapping(json.loads(text))


def from_mapping(raw: dict[str, Any], base: FederationSettings | None = None) -> FederationSettings:
    """Settings from a (TOML or JSON) mapping; unknown keys are an error naming them."""
    base = base or FederationSettings()
    raw = dict(raw)
    train_raw = raw.pop("train", {}) or {}
    known = {f.name for f in fields(FederationSettings)} - {"train"}
    train_known = {f.name for f in fields(TrainSettings)}
    unknown = sorted(set(raw) - known) + sorted(f"train.{k}" for k in set(train_raw) - train_known)
    if unknown:
        raise SettingsError(f"unknown settings: {', '.join(unknown)}")
    try:
        train = replace(base.train, **train_raw)
        return replace(base, **raw, train=train)
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
        flat = {k: v for k, v in overrides.items() if v is not None and not k.startswith("train.")}
        train = {k[6:]: v for k, v in overrides.items() if v is not None and k.startswith("train.")}
        settings = from_mapping({**flat, "train": train}, settings)
    return settings
