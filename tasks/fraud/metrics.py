"""Ranking metrics of a binary classifier: pure numpy, no model, no I/O.

Fraud is rare (about 1% of transactions), so accuracy says nothing: the headline is the area
under the precision-recall curve (average precision, as scikit-learn computes it), with ROC-AUC
and the recall at a 1% false-positive rate (what a review team that can look at one in a
hundred honest transactions catches) beside it.
"""

from __future__ import annotations

import numpy as np


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Sum over thresholds of (recall step) x precision, thresholds at each distinct score
    (tied scores form one step); NaN without a positive."""
    labels = np.asarray(labels).astype(bool)
    positives = int(labels.sum())
    if positives == 0:
        return float("nan")
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    s, y = np.asarray(scores, dtype=np.float64)[order], labels[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]
    true_pos = np.cumsum(y)[last_of_tie]
    predicted = last_of_tie + 1
    precision = true_pos / predicted
    recall = true_pos / positives
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """P(a random positive scores above a random negative), ties counting half; NaN if one
    class is missing."""
    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(np.asarray(scores, dtype=np.float64))
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def recall_at_fpr(scores: np.ndarray, labels: np.ndarray, fpr: float = 0.01) -> float:
    """Share of positives flagged when the threshold flags at most ``fpr`` of the negatives
    (a positive tied with the threshold is not flagged); NaN if one class is missing."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    negatives = np.sort(scores[~labels])[::-1]
    if not labels.any() or not len(negatives):
        return float("nan")
    allowed = int(np.floor(fpr * len(negatives)))  # negatives that may score above it
    threshold = negatives[allowed] if allowed < len(negatives) else -np.inf
    return float(np.mean(scores[labels] > threshold))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties getting the mean of their ranks."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    starts = np.cumsum(counts) - counts
    return (starts + (counts + 1) / 2)[inverse]
