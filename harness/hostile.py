"""A hostile region with valid credentials: the real fedq worker, whose task lies.

    python -m harness.hostile ATTACK -- PYTHON -m cli worker --region cn ...

The worker is fedq's own (its ACL user, its region's secret, its signature on every update and
result): only what the task hands it is poisoned, so every protocol check passes and only the
aggregator's guard and the federation's consensus on evaluations stand between it and the
others. The attacks on training (the honest delta is computed first, then replaced):

- ``negate``: the honest delta reversed and stretched to ``HOSTILE_NORM`` (just inside the
  fixed bound of 50);
- ``scale``: the honest delta times 20 (at most ``HOSTILE_NORM``);
- ``promote``: the honest delta plus the rest of the norm budget on the task's promotion
  targets (the recommender's: the bias of a merchant's three products,
  ``tasks/recommender/attacks.py``), up to ``HOSTILE_NORM``;
- ``drift``: the honest delta plus a promotion of 30% of its own norm, so the update stays
  inside the region's own history of norms and directions while the promotion accumulates;

and on evaluation: ``lie`` reports every figure at the top of its range (a hit rate of 1) on one
evaluation job and at the bottom on the next (to stop the run early, and to make every other
version look like a fall), ``silent`` fails every evaluation job. ``scripts/attack.py``
starts ``python -m harness.hostile`` through ``RunOptions.placement`` for the hostile region's
workers only.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

TRAIN_ATTACKS = ("negate", "scale", "promote", "drift")
EVALUATE_ATTACKS = ("lie", "silent")
ATTACKS = (*TRAIN_ATTACKS, *EVALUATE_ATTACKS)
HOSTILE_NORM = 49.0  # the fixed bound (max_update_norm) is 50
DRIFT_SHARE = 0.3


def poisoned_delta(
    attack: str, delta: Mapping[str, np.ndarray], targets: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """What the hostile region sends instead of its honest ``delta`` (pure)."""
    norm = math.sqrt(sum(float(np.vdot(v, v)) for v in delta.values())) or 1e-12
    out = {k: np.array(v, dtype=np.float32) for k, v in delta.items()}
    if attack == "negate":
        return {k: (-v * (HOSTILE_NORM / norm)).astype(np.float32) for k, v in out.items()}
    if attack == "scale":
        factor = min(20.0, HOSTILE_NORM / norm)
        return {k: (v * factor).astype(np.float32) for k, v in out.items()}
    if attack in ("promote", "drift"):
        budget = (
            math.sqrt(max(HOSTILE_NORM**2 - norm**2, 0.0))
            if attack == "promote"
            else DRIFT_SHARE * norm
        )
        rows = sum(len(r) for r in targets.values())
        for name, r in targets.items():
            out[name][r] += budget / math.sqrt(rows)
        return out
    raise ValueError(f"unknown training attack {attack!r}; choose one of {TRAIN_ATTACKS}")


def lying_figures(schema: Any, top: bool = True) -> dict[str, float]:
    """Every figure of the task's schema at the top (or bottom) of its range (counts are left
    as they were: they weigh the region in the combination)."""
    return {m.name: float(m.high if top else m.low) for m in schema.metrics if not m.is_count}


def poison(task: Any, attack: str, data_dir: Path) -> None:
    """Make ``task`` (the object the worker will load) lie as ``attack`` says."""
    if attack in TRAIN_ATTACKS:
        targets = {}
        if attack in ("promote", "drift"):
            from tasks.recommender.attacks import promotion_targets

            targets = promotion_targets(data_dir)
        honest_train = task.train

        def train(weights, data, settings, step, state=None):
            trained = honest_train(weights, data, settings, step, state)
            delta = {k: trained.weights[k] - weights[k] for k in weights}
            bad = poisoned_delta(attack, delta, targets)
            new = {k: (weights[k] + bad[k]).astype(np.float32) for k in weights}
            return dataclasses.replace(trained, weights=new)

        task.train = train
    elif attack == "lie":
        honest_evaluate = task.evaluate
        jobs = [0]

        def evaluate(weights, data, settings, part, seed):
            figures = honest_evaluate(weights, data, settings, part, seed)
            jobs[0] += part == "validation"
            top = jobs[0] % 2 == 1  # the top of the range, then the bottom: a "fall" each time
            return {**figures, **lying_figures(task.metrics, top)}

        task.evaluate = evaluate
    elif attack == "silent":

        def evaluate(weights, data, settings, part, seed):
            raise RuntimeError("this region does not report its evaluations")

        task.evaluate = evaluate
    else:
        raise ValueError(f"unknown attack {attack!r}; choose one of {ATTACKS}")


def main(argv: list[str]) -> int:
    if len(argv) < 5 or argv[1] != "--" or argv[3:5] != ["-m", "cli"]:
        print("usage: python -m harness.hostile ATTACK -- PYTHON -m cli worker ...")
        return 2
    attack, worker_args = argv[0], argv[5:]
    data_dir = Path(worker_args[worker_args.index("--data") + 1])
    name = worker_args[worker_args.index("--task") + 1] if "--task" in worker_args else None
    from tasks.api import load_task

    poison(load_task(name or "recommender"), attack, data_dir)  # the object the worker loads
    from cli.main import cli

    return cli.main(worker_args, prog_name="fedq", standalone_mode=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
