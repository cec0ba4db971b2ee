"""Hybrid ranking: reciprocal rank fusion (Cormack et al., 2009) of dense and sparse result lists."""
from __future__ import annotations

from typing import Sequence


def reciprocal_rank_fusion(
    rankings: Sequence[Sequence[int]], k: int, weights: Sequence[float] | None = None, k0: int = 60
) -> list[tuple[int, float]]:
    """Fuse ranked id lists: score(id) = sum_i w_i / (k0 + rank_i(id)), rank from 1. Returns the top k."""
    weights = weights or [1.0] * len(rankings)
    if len(weights) != len(rankings):
        raise ValueError("one weight per ranking")
    scores: dict[int, float] = {}
    for ranking, weight in zip(rankings, weights):
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + weight / (k0 + rank)
    # Ties broken by id so the order is reproducible.
    return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
