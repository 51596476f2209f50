"""Hybrid search: fuse the rankings of several retrievers (BM25, dense, query rewrites) into one.

- Reciprocal rank fusion (Cormack, Clarke & Büttcher, SIGIR 2009): a candidate scores
  ``sum_r w_r / (k + rank_r)`` over the rankings ``r`` that contain it (rank from 1). Only ranks
  are used, so retrievers with incomparable scores (BM25's unbounded sums, cosines) fuse safely;
  ``k = 60`` damps the weight of the very top ranks. Qdrant's ``Fusion.RRF`` is the same rule with
  its constant shifted by one (its ``k = 2`` is ``k = 1`` here).
- Weighted score fusion: each retriever's scores normalised to [0, 1] (min-max, or Qdrant's
  distribution-based 3-sigma rule "dbsf"), then a weighted sum; a candidate missing from a list
  gets 0 there. Uses the score gaps RRF throws away, at the price of trusting them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Ranked = list[tuple[str, float]]  # (id, score), best first

NORMALIZATIONS = ("minmax", "dbsf")


def _weights(weights: Sequence[float] | None, n: int) -> list[float]:
    if weights is None:
        return [1.0] * n
    if len(weights) != n or any(w < 0 for w in weights):
        raise ValueError(f"need one non-negative weight per ranking ({n}), got {list(weights)}")
    return list(weights)


def _ordered(scores: dict[str, float], limit: int | None) -> Ranked:
    # sorted() is stable: ties keep the order in which candidates were first seen
    return sorted(scores.items(), key=lambda item: -item[1])[:limit]


def reciprocal_rank_fusion(rankings: Sequence[Sequence[str]], *, k: float = 60.0,
                           weights: Sequence[float] | None = None, limit: int | None = None) -> Ranked:
    """``score(d) = sum_r w_r / (k + rank_r(d))``, best first."""
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    scores: dict[str, float] = {}
    for weight, ranking in zip(_weights(weights, len(rankings)), rankings, strict=True):
        for rank, doc_id in enumerate(ranking, start=1):
            scores[doc_id] = scores.get(doc_id, 0.0) + weight / (k + rank)
    return _ordered(scores, limit)


def normalize_scores(scores: Sequence[float], method: str = "minmax") -> np.ndarray:
    """Scores mapped to about [0, 1]: ``minmax`` ``(s - min) / (max - min)``; ``dbsf`` ``(s - (mu - 3 sigma)) /
    (6 sigma)`` with the sample standard deviation (Qdrant's distribution-based score fusion). One score,
    or all equal: 0.5."""
    if method not in NORMALIZATIONS:
        raise ValueError(f"unknown normalisation {method!r}; choose one of {NORMALIZATIONS}")
    values = np.asarray(scores, dtype=np.float64)
    if values.size < 2:
        return np.full(values.shape, 0.5)
    if method == "minmax":
        low, high = values.min(), values.max()
    else:
        mean, std = values.mean(), values.std(ddof=1)
        low, high = mean - 3 * std, mean + 3 * std
    return np.full(values.shape, 0.5) if high == low else (values - low) / (high - low)


def weighted_score_fusion(results: Sequence[Ranked], *, weights: Sequence[float] | None = None,
                          normalization: str = "minmax", limit: int | None = None) -> Ranked:
    """``score(d) = sum_r w_r * norm_r(score_r(d))`` over the result lists ``r`` that contain ``d``."""
    scores: dict[str, float] = {}
    for weight, ranked in zip(_weights(weights, len(results)), results, strict=True):
        if not ranked:
            continue
        normalized = normalize_scores([score for _, score in ranked], normalization)
        for (doc_id, _), value in zip(ranked, normalized, strict=True):
            scores[doc_id] = scores.get(doc_id, 0.0) + weight * float(value)
    return _ordered(scores, limit)
