"""How well a score separates two classes: AUC, and the threshold of best balanced accuracy (the scope classifier's
and the two-hop detector's decisions)."""
from __future__ import annotations

import numpy as np


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve: P(a random positive scores above a random negative), ties counting half."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(bool)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if not positives or not negatives:
        return float("nan")
    # Mann-Whitney U from ranks, tied scores sharing their mean rank.
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    mean_rank = np.cumsum(counts) - (counts - 1) / 2.0
    ranks = mean_rank[inverse]
    return float((ranks[labels].sum() - positives * (positives + 1) / 2.0) / (positives * negatives))


def best_threshold(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """The threshold (in scope: score >= threshold) with the best balanced accuracy, and that accuracy.

    Thresholds lie halfway between neighbouring distinct scores, so a score just beside one decides the
    same way as the pair it was chosen on.
    """
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(bool)
    if labels.all() or not labels.any():
        raise ValueError("choosing a threshold needs both in-scope and out-of-scope pairs")
    distinct = np.unique(scores)  # ascending
    cuts = np.concatenate([[distinct[0] - 1e-6], (distinct[:-1] + distinct[1:]) / 2, [distinct[-1] + 1e-6]])
    # For each cut: the share of positives at or above it and of negatives below it.
    order = np.sort(scores[labels]), np.sort(scores[~labels])
    recall = 1.0 - np.searchsorted(order[0], cuts, side="left") / len(order[0])
    specificity = np.searchsorted(order[1], cuts, side="left") / len(order[1])
    balanced = (recall + specificity) / 2
    best = int(np.argmax(balanced))
    return float(cuts[best]), float(balanced[best])
