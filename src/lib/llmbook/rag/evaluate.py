"""Evaluating retrieval on labelled questions: which documents answer each question, and how well a
retriever ranks them.

Relevance is judged per document: a question's answer may be cut into several chunks, and any of
them retrieving it counts. A chunk ranking therefore becomes a document ranking (first occurrence
of each document) before the metrics of :mod:`llmbook.evaluation.retrieval` are computed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from llmbook.data.faq import FaqPair
from llmbook.evaluation.retrieval import per_query_metrics, summarize
from llmbook.rag.index import Index

QUERY_KINDS = ("en", "zh", "zh→en")  # monolingual English, monolingual Chinese, Chinese question -> English answer


@dataclass(frozen=True, kw_only=True)
class Query:
    text: str
    relevant: frozenset[str]  # ids of the documents that answer it
    kind: str  # one of QUERY_KINDS


def faq_queries(pairs: Sequence[FaqPair]) -> dict[str, list[Query]]:
    """English questions -> their English answer; Chinese questions -> their Chinese answer and, for the
    cross-lingual set, the English answer of the same question (the parallel Debian FAQ)."""
    english_of = {p.pair: p.id for p in pairs if p.lang == "en" and p.pair}
    return {
        "en": [Query(text=p.question, relevant=frozenset({p.id}), kind="en") for p in pairs if p.lang == "en"],
        "zh": [Query(text=p.question, relevant=frozenset({p.id}), kind="zh") for p in pairs if p.lang == "zh"],
        "zh→en": [Query(text=p.question, relevant=frozenset({english_of[p.pair]}), kind="zh→en")
                  for p in pairs if p.lang == "zh" and p.pair in english_of],
    }


def doc_id_of(chunk_id: str) -> str:
    """``"<doc_id>#<n>"`` -> ``doc_id``."""
    return chunk_id.rsplit("#", 1)[0]


def document_ranking(chunk_ids: Sequence[str]) -> list[str]:
    """Documents in the order their first chunk appears."""
    return list(dict.fromkeys(doc_id_of(c) for c in chunk_ids))


@dataclass(kw_only=True)
class Evaluation:
    metrics: dict[str, np.ndarray]  # per query: R@1, R@5, R@10, MRR, nDCG@10
    rankings: list[list[str]]  # document rankings
    seconds_per_query: float


def evaluate_retriever(retrieve: Callable[[str], Sequence[str]], queries: Sequence[Query]) -> Evaluation:
    """Run ``retrieve`` (query text -> chunk ids, best first) on every query and score the document rankings."""
    if not queries:
        raise ValueError("no queries to evaluate")
    start = time.perf_counter()
    rankings = [document_ranking(retrieve(q.text)) for q in queries]
    seconds = (time.perf_counter() - start) / len(queries)
    return Evaluation(metrics=per_query_metrics(rankings, [set(q.relevant) for q in queries]), rankings=rankings,
                      seconds_per_query=seconds)


def results_table(results: dict[tuple[str, str], Evaluation], *,
                  metrics: Sequence[str] = ("R@1", "R@5", "R@10", "MRR", "nDCG@10"),
                  intervals: Sequence[str] = ("MRR",), seed: int = 0) -> pd.DataFrame:
    """One row per (method, query kind): each metric's mean, and for ``intervals`` the ends of its 95 %
    bootstrap interval over queries (columns ``"<metric> low"``, ``"<metric> high"``)."""
    rows = []
    for (method, kind), evaluation in results.items():
        row: dict[str, object] = {"method": method, "queries": kind, "n": len(evaluation.rankings)}
        for name in metrics:
            row[name] = float(evaluation.metrics[name].mean())
        for name, interval in summarize({m: evaluation.metrics[m] for m in intervals}, seed=seed).items():
            row.update({f"{name} low": interval.low, f"{name} high": interval.high})
        rows.append(row)
    return pd.DataFrame(rows).set_index(["method", "queries"])


def best_threshold(positive: Sequence[float], negative: Sequence[float]) -> tuple[float, float]:
    """The score threshold that best separates ``positive`` (should pass: >= t) from ``negative`` (should be
    refused: < t), and its accuracy; ties go to the lower threshold (refuse less)."""
    pos, neg = np.asarray(positive, dtype=float), np.asarray(negative, dtype=float)
    if not len(pos) or not len(neg):
        raise ValueError("need at least one positive and one negative score")
    candidates = np.unique(np.concatenate([pos, neg, [np.inf]]))
    accuracy = [(np.sum(pos >= t) + np.sum(neg < t)) / (len(pos) + len(neg)) for t in candidates]
    best = int(np.argmax(accuracy))
    return float(candidates[best]), float(accuracy[best])


def reranker_examples(index: Index, queries: Sequence[Query], *, negatives: int = 3,
                      candidates: int = 30) -> list[tuple[str, str, float]]:
    """(query, passage, label) pairs to train a reranker: each query's answer (the first chunk of each
    relevant document) labelled 1, and its ``negatives`` best-ranked wrong chunks (hybrid search: the hard
    negatives a reranker must learn to push down) labelled 0."""
    first_chunk: dict[str, str] = {}
    for chunk in index.chunks:
        if chunk is not None:
            first_chunk.setdefault(chunk.doc_id, chunk.text)
    examples = []
    for query in queries:
        examples += [(query.text, first_chunk[d], 1.0) for d in sorted(query.relevant) if d in first_chunk]
        wrong = [c for c, _ in index.ranking(query.text, candidates) if doc_id_of(c) not in query.relevant]
        examples += [(query.text, index.chunk(c).text, 0.0) for c in wrong[:negatives]]
    return examples
