"""Ranking metrics for retrieval: recall@k, reciprocal rank and nDCG@k, per query, with bootstrap intervals.

For one query with ranked ids ``r_1, r_2, ...`` and a set of relevant ids ``R`` (or graded relevance
``rel(d)``):

- recall@k = ``|R ∩ {r_1..r_k}| / |R|`` (with one relevant passage per question: did it make the top k);
- reciprocal rank = ``1 / min{i : r_i in R}`` (0 if none is retrieved); its mean over queries is MRR;
- nDCG@k = ``DCG@k / IDCG@k`` with ``DCG@k = sum_{i<=k} rel(r_i) / log2(i + 1)`` (Järvelin & Kekäläinen,
  2002), IDCG the DCG of the ideal order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from llmbook.evaluation.stats import Interval, bootstrap_ci

Relevance = set[str] | Mapping[str, float]


def _gains(relevant: Relevance) -> Mapping[str, float]:
    return relevant if isinstance(relevant, Mapping) else dict.fromkeys(relevant, 1.0)


def recall_at_k(ranked: Sequence[str], relevant: Relevance, k: int) -> float:
    gains = _gains(relevant)
    positive = {d for d, g in gains.items() if g > 0}
    return len(positive.intersection(ranked[:k])) / len(positive) if positive else 0.0


def reciprocal_rank(ranked: Sequence[str], relevant: Relevance) -> float:
    gains = _gains(relevant)
    return next((1.0 / i for i, d in enumerate(ranked, start=1) if gains.get(d, 0) > 0), 0.0)


def ndcg_at_k(ranked: Sequence[str], relevant: Relevance, k: int = 10) -> float:
    gains = _gains(relevant)
    dcg = sum(gains.get(d, 0.0) / np.log2(i + 1) for i, d in enumerate(ranked[:k], start=1))
    ideal = sorted((g for g in gains.values() if g > 0), reverse=True)[:k]
    idcg = sum(g / np.log2(i + 1) for i, g in enumerate(ideal, start=1))
    return float(dcg / idcg) if idcg > 0 else 0.0


def per_query_metrics(rankings: Sequence[Sequence[str]], relevant: Sequence[Relevance],
                      ks: Sequence[int] = (1, 5, 10)) -> dict[str, np.ndarray]:
    """``{"R@1": ..., "R@5": ..., "R@10": ..., "MRR": ..., "nDCG@10": ...}``, one value per query."""
    if len(rankings) != len(relevant):
        raise ValueError(f"{len(rankings)} rankings but {len(relevant)} relevance sets")
    metrics = {f"R@{k}": np.array([recall_at_k(r, g, k) for r, g in zip(rankings, relevant, strict=True)])
               for k in ks}
    metrics["MRR"] = np.array([reciprocal_rank(r, g) for r, g in zip(rankings, relevant, strict=True)])
    metrics["nDCG@10"] = np.array([ndcg_at_k(r, g, 10) for r, g in zip(rankings, relevant, strict=True)])
    return metrics


def summarize(metrics: Mapping[str, np.ndarray], *, n_resamples: int = 2000, seed: int = 0) -> dict[str, Interval]:
    """Mean of each metric with a 95 % percentile-bootstrap interval over queries."""
    return {name: bootstrap_ci(values, n_resamples=n_resamples, seed=seed) for name, values in metrics.items()}
