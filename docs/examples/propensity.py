"""A user's own fedq task: purchase propensity (will this session end in a purchase?) from a CSV
per region. `fedq run --task docs/examples/propensity.py --data data-propensity --generate`
runs it. Data: meta.json (name, regions) and <region>/sessions.csv (COLUMNS, then label)."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tasks import api

COLUMNS = ("pages", "minutes", "cart_items", "returning", "discount")
SIZES = {"cn": 3000, "us": 2000, "eu": 1500, "me": 300}  # sessions per region (generate)


class Propensity:
    name = "propensity"
    figures = (api.Metric("sessions", "sessions"), api.Metric("accuracy", "accuracy", "sessions"))
    metrics = api.MetricSchema(
        "accuracy", figures, ("sessions", "accuracy"), "sessions", ("accuracy",)
    )  # headline, figures, validation, size, table
    baselines = api.Baselines(max_epochs={"local": 10, "centralized": 10}, patience=2)

    def settings(self, raw):
        return api.check_settings(raw, {"lr": 0.05, "examples_per_job": 256}, self.name)

    def describe(self, data_dir):
        text = (Path(data_dir) / "meta.json").read_text()  # public: every host has the same
        meta, digest = json.loads(text), hashlib.sha256(text.encode()).hexdigest()[:16]
        return api.DataDescription(meta["name"], tuple(meta["regions"]), digest)

    def load_region(self, data_dir, region):  # time order: the last fifth is the test set
        path = Path(data_dir) / region / "sessions.csv"
        rows = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float32, ndmin=2)
        a, b = len(rows) * 3 // 5, len(rows) * 4 // 5
        parts = {"train": rows[:a], "validation": rows[a:b], "test": rows[b:]}
        return {k: (v[:, :-1], v[:, -1]) for k, v in parts.items()}

    def data_size(self, data):
        return len(data["train"][1])

    def initial_weights(self, data_dir, settings, seed):
        torch.manual_seed(seed)
        return {k: v.numpy() for k, v in _net().state_dict().items()}

    def train(self, weights, data, settings, step: api.Step, state=None):
        started, (x, y) = time.perf_counter(), data["train"]
        if not step.whole_data:  # a job trains on a random share of the region's sessions
            n = min(len(y), settings["examples_per_job"])
            pick = np.random.default_rng(step.seed).choice(len(y), n, replace=False)
            x, y = x[pick], y[pick]
        net = _net(weights)
        optimizer = torch.optim.SGD(net.parameters(), lr=settings["lr"] * step.lr_scale)
        for lo in range(0, len(y), 64):
            logits = net(torch.from_numpy(x[lo : lo + 64])).squeeze(1)
            loss = nn.functional.binary_cross_entropy_with_logits(
                logits, torch.from_numpy(y[lo : lo + 64]))  # fmt: skip
            optimizer.zero_grad(), loss.backward(), optimizer.step()
        new = {k: v.numpy().copy() for k, v in net.state_dict().items()}
        return api.Trained(new, len(y), float(loss), time.perf_counter() - started)

    def evaluate(self, weights, data, settings, part, seed):
        x, y = data[part]
        with torch.no_grad():
            p = torch.sigmoid(_net(weights)(torch.from_numpy(x)).squeeze(1)).numpy()
        return {"sessions": float(len(y)), "accuracy": float(np.mean((p > 0.5) == (y > 0.5)))}

    def pool(self, regions):
        return {"train": tuple(np.concatenate([d["train"][i] for d in regions]) for i in (0, 1))}

    def generate(self, out, seed=0, scale="default", progress=None):
        rng, out, sizes = np.random.default_rng(seed), Path(out), SIZES
        truth = rng.normal(0, 1, len(COLUMNS))
        for region, n in sizes.items():
            x = rng.normal(0, 1, (n, len(COLUMNS)))
            odds = x @ (truth + rng.normal(0, 0.3, len(truth)))  # shared rule, regional twist
            y = rng.random(n) < 1 / (1 + np.exp(-odds))
            (out / region).mkdir(parents=True, exist_ok=True)
            np.savetxt(out / region / "sessions.csv", np.c_[x, y], delimiter=",", fmt="%.4f",
                       header=",".join([*COLUMNS, "label"]), comments="")  # fmt: skip
        meta = {"name": f"propensity-seed{seed}", "regions": list(sizes)}
        (out / "meta.json").write_text(json.dumps(meta))
        return [f"{sum(sizes.values())} sessions in {len(sizes)} regions"]


def _net(weights=None) -> nn.Module:
    net = nn.Sequential(nn.Linear(len(COLUMNS), 16), nn.ReLU(), nn.Linear(16, 1))
    if weights is not None:
        net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in weights.items()})
    return net


TASK = Propensity()
