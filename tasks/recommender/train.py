"""Local training: weights + one region's examples + hyper-parameters -> new weights.

This is the function every regional worker calls, so it is deterministic under a seed (example
order, id dropout and initialisation all follow it) and it bounds torch's thread pool, which
matters on shared hosts and in forked work horses.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch

from shared.codec import Weights
from shared.privacy import DPSGD
from tasks.recommender.features import ItemFeatures
from tasks.recommender.model import ModelConfig, Recommender, load_numpy_state, state_to_numpy
from tasks.recommender.private import Batch, ShopperSampler
from tasks.recommender.sequences import Examples


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 1
    batch_size: int = 1024
    lr: float = 3e-3
    weight_decay: float = 0.0
    prox_mu: float = 0.0  # FedProx: mu/2 * ||w - w_start||^2 keeps a region near the global model
    max_examples: int | None = None  # cap per call (a random subset, drawn from the seed)
    optimizer: str = "adam"  # adam | sgd (momentum 0.9)
    # a fresh optimizer first gathers its moments over this many batches without moving a
    # weight (see ``Trainer.warm_up``); 0: off
    moment_warmup: int = 0
    seed: int = 0
    threads: int = 1
    # DP-SGD (tasks/recommender/private.py): its steps replace the epochs; None: off
    privacy: DPSGD | None = None
    # under DP-SGD, the examples each sampled shopper contributes (her gradient is of their mean)
    dp_examples_per_shopper: int = 1

    def to_json(self) -> dict:
        return asdict(self)

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or self.threads < 1:
            raise ValueError(f"bad training settings: {self}")
        if self.prox_mu < 0 or (self.max_examples is not None and self.max_examples < 1):
            raise ValueError(f"bad training settings: {self}")
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose adam or sgd")
        if self.moment_warmup < 0 or self.dp_examples_per_shopper < 1:
            raise ValueError(f"bad training settings: {self}")


@dataclass(frozen=True)
class TrainResult:
    weights: Weights
    n_samples: int
    loss: float
    seconds: float
    trainer: Trainer | None = None  # a worker's next job continues it (model and Adam moments)


class Trainer:
    """A model and its optimizer, kept across epochs (``fit`` selects epochs on validation) and
    across a worker's jobs (``restart``): building them anew took a tenth of a job."""

    def __init__(
        self, config: ModelConfig, features: ItemFeatures, weights: Weights, settings: TrainConfig
    ) -> None:
        self.config = config
        self.model = Recommender(config, features)
        params = self.model.parameters()
        if settings.optimizer == "sgd":
            self.optimizer: torch.optim.Optimizer = torch.optim.SGD(
                params, lr=settings.lr, momentum=0.9, weight_decay=settings.weight_decay
            )
        else:
            # fused: one kernel for all parameters, a third of the per-tensor loop's time
            self.optimizer = torch.optim.Adam(
                params, lr=settings.lr, weight_decay=settings.weight_decay, fused=True
            )
        self.usable = True  # False while a call runs: a failed call's moments are not carried
        self.noise = torch.Generator().manual_seed(secrets.randbits(63))  # DP noise: OS entropy
        self._sampled: Examples | None = None
        self._shoppers: ShopperSampler | None = None
        self.restart(weights, settings)

    def restart(self, weights: Weights, settings: TrainConfig) -> None:
        """Continue with other weights and settings (the next job), the optimizer's moments kept."""
        torch.set_num_threads(settings.threads)
        self.settings = settings
        self.rng = np.random.default_rng(settings.seed)
        load_numpy_state(self.model, weights)
        self.anchor = (
            [p.detach().clone() for p in self.model.parameters()] if settings.prox_mu else None
        )
        for group in self.optimizer.param_groups:
            group["lr"], group["weight_decay"] = settings.lr, settings.weight_decay

    def continues(self, config: ModelConfig, settings: TrainConfig) -> bool:
        same = config == self.config and settings.optimizer == self.settings.optimizer
        return self.usable and same

    def warm_up(self, examples: Examples, batches: int) -> None:
        """Fill a fresh optimizer's moments from ``batches`` batches, leaving the weights as
        they are (the steps run at learning rate 0).

        A fresh Adam's first step is a full learning-rate step on every parameter with any
        gradient at all (m/sqrt(v) = g/|g|), and young moments stay noisy for many steps. A
        worker that (re)starts would send the global model such steps (measured figures in
        docs/DESIGN.md, "Local training").
        """
        lrs = [group["lr"] for group in self.optimizer.param_groups]
        for group in self.optimizer.param_groups:
            group["lr"] = 0.0
        self.model.train()
        size = self.settings.batch_size
        order = self.rng.permutation(len(examples))[: batches * size]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(self.rng.integers(2**31)))
            for lo in range(0, len(order), size):
                loss = _batch_loss(self.model, examples.take(order[lo : lo + size]))
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
        for group, lr in zip(self.optimizer.param_groups, lrs, strict=True):
            group["lr"] = lr
        self.model.eval()

    def run_epoch(
        self, examples: Examples, progress: Callable[[int, int], None] | None = None
    ) -> float:
        """One pass in a seeded order; returns the mean data loss (without the proximal term)."""
        self.model.train()
        n, size = len(examples), self.settings.batch_size
        order = self.rng.permutation(n)
        total = 0.0
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(self.rng.integers(2**31)))  # id dropout follows the seed
            for step, lo in enumerate(range(0, n, size), start=1):
                batch = examples.take(order[lo : lo + size])
                loss = _batch_loss(self.model, batch)
                total += float(loss.detach()) * len(batch)
                if self.anchor is not None:
                    loss = loss + self.settings.prox_mu / 2 * sum(
                        (p - a).pow(2).sum()
                        for p, a in zip(self.model.parameters(), self.anchor, strict=True)
                    )
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                if progress is not None:
                    progress(step, -(-n // size))
        self.model.eval()
        mean = total / max(n, 1)
        if not np.isfinite(mean):
            raise FloatingPointError(f"training diverged (mean loss {mean}); lower the lr")
        return mean

    def run_private(self, examples: Examples, dp: DPSGD) -> float:
        """DP-SGD steps (``private.py``): shoppers sampled, each one's example clipped, Opacus's
        noise on the sum; returns the mean loss of the sampled examples.

        The noise comes from the OS's entropy (Opacus's secure mode, a generator of its own)
        and so does the sample, never from the job's seed: the seed travels in the job spec.
        Adam only ever sees noised gradients (post-processing keeps the guarantee)."""
        from opacus.optimizers import DPOptimizerFastGradientClipping

        from tasks.recommender.private import clipping_weights

        sampler = self._sampler(examples)
        optimizer = DPOptimizerFastGradientClipping(
            self.optimizer, noise_multiplier=dp.noise, max_grad_norm=dp.clip,
            expected_batch_size=dp.rate * sampler.shoppers, loss_reduction="mean",
            secure_mode=True, generator=self.noise,
        )  # fmt: skip
        self.model.train()
        total, count = 0.0, 0
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(self.rng.integers(2**31)))  # id dropout follows the seed
            for _ in range(dp.steps):
                optimizer.zero_grad(set_to_none=True)
                picked, slots = sampler.draw(dp.rate, self.settings.dp_examples_per_shopper)
                if len(slots):  # a Poisson batch can be empty: the step still adds noise
                    batch = Batch.of(examples.take(picked))
                    keep = self.model.id_keep()
                    weights = clipping_weights(self.model, batch, keep, torch.as_tensor(slots),
                                               dp.clip)  # fmt: skip
                    loss = self.model.loss(batch.history, batch.region, batch.time, batch.target,
                                           keep=keep, weights=weights)  # fmt: skip
                    loss.backward()
                    total += float(loss.detach() / weights.sum()) * len(slots)
                    count += len(slots)
                for p in self.model.parameters():
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
                optimizer.step()
        self.model.eval()
        mean = total / max(count, 1)
        if not np.isfinite(mean):
            raise FloatingPointError(f"training diverged (mean loss {mean}); lower the lr")
        return mean

    def _sampler(self, examples: Examples) -> ShopperSampler:
        """The region's shoppers grouped once (a worker's jobs all sample the same examples)."""
        if self._sampled is not examples:
            self._sampled, self._shoppers = examples, ShopperSampler(examples)
        return self._shoppers

    def weights(self) -> Weights:
        return state_to_numpy(self.model)


def train_local(
    config: ModelConfig,
    features: ItemFeatures,
    weights: Weights,
    examples: Examples,
    settings: TrainConfig,
    progress: Callable[[int, int], None] | None = None,
    carried: Trainer | None = None,
) -> TrainResult:
    """Train from ``weights`` on ``examples``; returns the new weights and the mean loss.

    ``carried`` (an earlier result's trainer) continues that optimizer's moments instead of
    starting fresh: a fresh Adam takes a full-size step on every parameter with any gradient at
    all, which over many short jobs is noise the global model accumulates.
    """
    if len(examples) == 0:
        raise ValueError("no training examples: the region's data has no user with two events")
    started = time.perf_counter()
    if carried is not None and carried.continues(config, settings):
        trainer = carried
        trainer.restart(weights, settings)
    else:
        trainer = Trainer(config, features, weights, settings)
        if settings.moment_warmup and settings.privacy is None:  # the warm-up is not private
            trainer.warm_up(examples, settings.moment_warmup)
    trainer.usable = False
    if settings.privacy is not None:
        losses = [trainer.run_private(examples, settings.privacy)]
        expected = settings.privacy.rate * trainer._sampler(examples).shoppers
        n_samples = round(expected * settings.privacy.steps)  # expected, not drawn: private
    else:
        if settings.max_examples is not None and settings.max_examples < len(examples):
            pick = trainer.rng.choice(len(examples), settings.max_examples, replace=False)
            examples = examples.take(pick)
        losses = [trainer.run_epoch(examples, progress) for _ in range(settings.epochs)]
        n_samples = len(examples)
    trainer.usable = True
    return TrainResult(
        trainer.weights(),
        n_samples,
        float(np.mean(losses)),
        time.perf_counter() - started,
        trainer,
    )


def _batch_loss(model: Recommender, batch: Examples) -> torch.Tensor:
    b = Batch.of(batch)
    return model.loss(b.history, b.region, b.time, b.target)
