"""A SASRec-class reference on the built-in data, split and scored exactly as fedq scores.

    python scripts/bench_sasrec.py [--data data] [--epochs 30] [--lr 0.003] [--threads 2]

A self-attention sequential recommender in the shape of SASRec (Kang & McAuley 2018: item and
position embeddings, 2 causal self-attention blocks of hidden size 64, the output scored against
the tied item embeddings, full softmax), trained centrally on the pooled training examples of
every region (the same 20-item histories fedq's recommender sees), keeping the epoch with the
best validation HR@10, then scored with fedq's own evaluation (``evaluate_region``: full ranking
among items on sale, items seen before excluded). It uses item ids only (no attributes, no
region), as published SASRec does. Prints its HR@10 and NDCG@10 beside fedq's centralized
recommender from the cached baseline (``fedq run`` writes it), when there is one.

This is written here, not taken from RecBole: RecBole's SASRec needs patches for numpy 2 and
torch >= 2.6, and its data pipeline would split the data its own way; the figure that matters is
this architecture under fedq's split and metric.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.recommender.evaluate import evaluate_region, overall  # noqa: E402
from tasks.recommender.local_data import load_region, load_shared  # noqa: E402
from tasks.recommender.model import NOT_ON_SALE  # noqa: E402
from tasks.recommender.sequences import Examples  # noqa: E402


class SASRec(nn.Module):
    def __init__(self, n_items: int, dim: int = 64, history: int = 20, blocks: int = 2,
                 heads: int = 2, dropout: float = 0.2) -> None:  # fmt: skip
        super().__init__()
        self.item = nn.Embedding(n_items + 1, dim, padding_idx=n_items)  # n_items: padding
        self.position = nn.Embedding(history, dim)
        layer = nn.TransformerEncoderLayer(dim, heads, dim, dropout, batch_first=True,
                                           norm_first=True)  # fmt: skip
        self.encoder = nn.TransformerEncoder(layer, blocks, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        self.n_items = n_items
        causal = torch.triu(torch.ones(history, history, dtype=torch.bool), diagonal=1)
        self.register_buffer("causal", causal)

    def user(self, history: torch.Tensor) -> torch.Tensor:
        """(B, dim): the output at the most recent position of right-aligned histories."""
        pad = history < 0
        ids = torch.where(pad, torch.full_like(history, self.n_items), history)
        h = self.item(ids) * self.item.embedding_dim**0.5 + self.position.weight[None]
        h = self.encoder(self.dropout(h), mask=self.causal, src_key_padding_mask=pad)
        return self.norm(h[:, -1])

    def logits(self, history: torch.Tensor) -> torch.Tensor:
        return self.user(history) @ self.item.weight[: self.n_items].T


class Scorer:
    def __init__(self, model: SASRec, launch_time: np.ndarray) -> None:
        self.model, self.launch = model.eval(), launch_time

    def scores(self, examples: Examples) -> np.ndarray:
        with torch.no_grad():
            s = self.model.logits(torch.as_tensor(examples.history)).numpy()
        on_sale = self.launch[None, :] <= examples.time[:, None]
        return np.where(on_sale, s, NOT_ON_SALE)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("data"))
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--patience", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    started = time.perf_counter()
    shared = load_shared(args.data)
    regions = {r: load_region(args.data, r, shared) for r in shared.meta.regions}
    train = Examples.concat([d.split.train for d in regions.values()])
    model = SASRec(len(shared.catalogue))
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    scorer = Scorer(model, shared.catalogue.launch_time)
    rng = np.random.default_rng(0)
    best, best_hr, since = None, -1.0, 0
    for epoch in range(1, args.epochs + 1):
        model.train()
        order = rng.permutation(len(train))
        for lo in range(0, len(order), args.batch_size):
            batch = train.take(order[lo : lo + args.batch_size])
            loss = F.cross_entropy(model.logits(torch.as_tensor(batch.history)),
                                   torch.as_tensor(batch.target))  # fmt: skip
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        per = {r: evaluate_region(scorer, d, "validation", negatives=0) for r, d in regions.items()}
        hr = overall(per)["hr@10"]
        print(f"epoch {epoch}: loss {float(loss.detach()):.4f}, validation HR@10 {hr:.4f} "
              f"({time.perf_counter() - started:.0f}s)", flush=True)  # fmt: skip
        if hr > best_hr:
            best, best_hr, since = {k: v.clone() for k, v in model.state_dict().items()}, hr, 0
        else:
            since += 1
            if since >= args.patience:
                break
    model.load_state_dict(best)
    test = {r: evaluate_region(scorer, d, "test") for r, d in regions.items()}
    total = overall(test)
    print(f"SASRec-class (centralized, item ids only): HR@10 {total['hr@10']:.4f}, NDCG@10 "
          f"{total['ndcg@10']:.4f}; per region " + ", ".join(
              f"{r} {m['hr@10']:.4f}" for r, m in test.items())
          + f" ({time.perf_counter() - started:.0f}s)")  # fmt: skip
    cached = sorted((args.data / "baselines").glob("recommender-centralized-*.json"))
    if cached:
        fedq = json.loads(cached[-1].read_text())["overall"]
        print(f"fedq's centralized recommender: HR@10 {fedq['hr@10']:.4f}, NDCG@10 "
              f"{fedq['ndcg@10']:.4f} (cached {cached[-1].name})")  # fmt: skip


if __name__ == "__main__":
    main()
