"""The RAG chapter under the smoke profile: its equivalence checks and the shape of its results, from its metrics."""

from __future__ import annotations

import pytest

from llmbook.book import profiles, report, runner


@pytest.fixture
def smoke_book(smoke_chapter) -> runner.BookPaths:
    """The scratch site once this chapter has run (the other chapters may not have)."""
    return smoke_chapter("rag")


@pytest.fixture
def metrics(smoke_book: runner.BookPaths) -> dict:
    return report.load_metrics("rag", "smoke", smoke_book.runs_dir)


def test_retrievers_equal_their_libraries(metrics: dict) -> None:
    assert metrics["bm25_max_diff"] < 1e-6  # bm25s, same tokens, Lucene idf
    assert metrics["dense_max_diff"] < 1e-5  # sentence-transformers
    assert metrics["flat_same_ids_pct"] >= 95 and metrics["flat_max_diff"] < 1e-5  # FAISS IndexFlatIP
    assert metrics["store_agree_pct"] >= 90 and metrics["store_size_after_delete"] < metrics["n_chunks"]


def test_retrieval_results_are_sane(metrics: dict) -> None:
    # with few documents any retriever finds English answers; dense retrieval cannot read Chinese
    assert metrics["mrr_bm25_en"] > 0.5 and metrics["mrr_dense_en"] > 0.5
    assert metrics["unk_pct_zh"] > 20 > metrics["unk_pct_en"]
    assert metrics["mrr_bm25_zh"] > metrics["mrr_dense_zh"]
    assert metrics["best_dense_weight"] in profiles.resolve("rag", "smoke").dense_weights
    assert metrics["ann_best_recall"] >= 0.9


def test_answers_and_refusals(metrics: dict) -> None:
    assert 0 <= metrics["refusal_threshold"] <= 1 and metrics["refusal_dev_acc"] >= 0.5
    assert metrics["n_answers"] >= 1 and 0 <= metrics["refused_pct"] <= 100
    assert metrics["rerank_train_pairs"] >= 4 * metrics["n_test_en"]  # answer + 3 hard negatives per question


def test_rerank_weight_is_chosen_on_held_out_dev_questions(metrics: dict) -> None:
    """The cross-encoder trains on part of dev; the rest picks how much its order counts in the pipeline."""
    assert metrics["n_held_out"] >= 1 and metrics["final_loss"] > 0
    if metrics["rerank_weight"] == "0 (hybrid only)":  # nothing fused: the pipeline is hybrid search itself
        assert metrics["mrr_best_en"] == metrics["mrr_hybrid_en"]
        assert metrics["mrr_best_zh"] == metrics["mrr_hybrid_zh"]
