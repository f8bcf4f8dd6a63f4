"""Per-user sequences and the leave-last-out split.

Each user's events are ordered by time (ties by item id, so the order is reproducible). The last
event is the test target, the second last the validation target, the rest is training data.
Users with fewer than three events only train. A training example is "history before position t
-> item at t"; evaluation examples use the whole training history (plus the validation item for
the test target).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tasks.recommender.dataset import Interactions

HISTORY = 20  # most recent items the user side sees
MIN_EVENTS_FOR_EVAL = 3


@dataclass(frozen=True)
class Sequences:
    users: np.ndarray  # int64 (n_users,)
    offsets: np.ndarray  # int64 (n_users + 1,) into items/times
    items: np.ndarray  # int64, grouped by user, time-ordered
    times: np.ndarray  # int64

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def of(self, user_index: int) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = self.offsets[user_index], self.offsets[user_index + 1]
        return self.items[lo:hi], self.times[lo:hi]


@dataclass(frozen=True)
class Examples:
    """Model inputs for next-item prediction; ``history`` is right-aligned, padded with -1."""

    history: np.ndarray  # int64 (n, HISTORY)
    target: np.ndarray  # int64 (n,)
    time: np.ndarray  # int64 (n,) when the target happened
    user: np.ndarray  # int64 (n,) index into Sequences.users (evaluation bookkeeping, never sent)
    position: np.ndarray  # int64 (n,) the target's position in its user's sequence
    region: np.ndarray  # int64 (n,) the model's index of the user's region

    def __len__(self) -> int:
        return len(self.target)

    def take(self, idx: np.ndarray) -> Examples:
        return Examples(*(getattr(self, f)[idx] for f in _FIELDS))

    @staticmethod
    def concat(parts: list[Examples]) -> Examples:
        return Examples(*(np.concatenate([getattr(p, f) for p in parts]) for f in _FIELDS))


_FIELDS = ("history", "target", "time", "user", "position", "region")


@dataclass(frozen=True)
class Split:
    sequences: Sequences
    train: Examples
    validation: Examples
    test: Examples

    def train_items(self) -> np.ndarray:
        """Every item of the training part of every sequence (for popularity counts)."""
        lengths = self.sequences.lengths
        n_train = np.where(lengths >= MIN_EVENTS_FOR_EVAL, lengths - 2, lengths)
        at = np.repeat(self.sequences.offsets[:-1], n_train) + _ranges(n_train)
        return self.sequences.items[at]

    def seen_before(self, examples: Examples) -> list[np.ndarray]:
        """Items each example's user interacted with before its target (excluded from ranking)."""
        starts = self.sequences.offsets[examples.user]
        return [
            np.unique(self.sequences.items[lo : lo + pos])
            for lo, pos in zip(starts, examples.position, strict=True)
        ]


def build_sequences(data: Interactions) -> Sequences:
    order = np.lexsort((data.item_id, data.timestamp, data.user_id))
    users_sorted = data.user_id[order]
    users, starts = np.unique(users_sorted, return_index=True)
    offsets = np.append(starts, len(order)).astype(np.int64)
    return Sequences(users, offsets, data.item_id[order], data.timestamp[order])


def split(data: Interactions, region: int = 0, history: int = HISTORY) -> Split:
    seqs = build_sequences(data)
    lengths = seqs.lengths
    evaluated = lengths >= MIN_EVENTS_FOR_EVAL
    n_train = np.where(evaluated, lengths - 2, lengths)
    # every position t >= 1 of the training part is a target (its history is positions < t)
    owner = np.repeat(np.arange(len(seqs.users)), np.maximum(n_train - 1, 0))
    within = _ranges(np.maximum(n_train - 1, 0)) + 1
    train = _examples(seqs, owner, within, history, region)
    ev_users = np.flatnonzero(evaluated)
    validation = _examples(seqs, ev_users, lengths[ev_users] - 2, history, region)
    test = _examples(seqs, ev_users, lengths[ev_users] - 1, history, region)
    return Split(seqs, train, validation, test)


def _ranges(counts: np.ndarray) -> np.ndarray:
    """Concatenation of arange(c) for each c."""
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    return np.arange(total, dtype=np.int64) - starts


def _examples(
    seqs: Sequences, owner: np.ndarray, position: np.ndarray, history: int, region: int
) -> Examples:
    base = seqs.offsets[owner]
    target_at = base + position
    lags = np.arange(history, 0, -1)  # right-aligned: the last column is the most recent item
    at = target_at[:, None] - lags[None, :]
    valid = at >= base[:, None]
    hist = np.where(valid, seqs.items[np.where(valid, at, 0)], -1)
    return Examples(
        hist.astype(np.int64),
        seqs.items[target_at],
        seqs.times[target_at],
        owner.astype(np.int64),
        position.astype(np.int64),
        np.full(len(owner), region, dtype=np.int64),
    )
