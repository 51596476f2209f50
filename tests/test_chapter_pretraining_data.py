"""The pretraining_data chapter under the smoke profile: the study map's milestones, from its metrics."""

from __future__ import annotations

import pytest

from llmbook.book import profiles, report, runner
from llmbook.chain import corpus as chain


@pytest.fixture
def smoke_book(smoke_chapter) -> runner.BookPaths:
    """The scratch site once this chapter has run (the other chapters may not have)."""
    return smoke_chapter("pretraining_data")


@pytest.fixture
def metrics(smoke_book: runner.BookPaths) -> dict:
    return report.load_metrics("pretraining_data", "smoke", smoke_book.runs_dir)


def test_milestones(metrics: dict) -> None:
    # Duplicate rate below 5 % after dedup (from a planted ~14 %); PII recall above 95 %.
    assert metrics["dup_rate_before"] > 0.1 and metrics["dup_rate_after"] < 0.05
    assert metrics["pii_micro_recall"] > 0.95 and metrics["pii_min_recall"] > 0.9
    assert metrics["pii_micro_precision"] > 0.95
    assert metrics["pii_pipeline_items"] > 5 and metrics["pii_pipeline_leaked"] == 0


def test_funnel_filters_and_dedup(metrics: dict) -> None:
    assert 0.3 < metrics["kept_doc_frac"] < 0.95 and metrics["junk_removed_frac"] > 0.85
    assert metrics["c4_list_moby_dick_chapters"] > 10  # the word-list false positives the chapter shows
    assert metrics["langid_nb_accuracy"] > 0.9 and metrics["langid_nb_code_recall"] > metrics["langid_fast_code_recall"]
    assert metrics["signature_max_abs_diff"] == 0  # MinHash signatures equal datasketch's
    assert metrics["s_curve_verdict"] == "follows" and metrics["s_curve_max_dev"] < 0.35  # the plotted claim
    assert metrics["pair_precision"] > 0.9 and metrics["pair_recall"] > 0.6
    assert metrics["classifier_clean_false_drop"] < 0.1


def test_web_text_goals_on_test_splits(metrics: dict) -> None:
    # the crawl went through a WARC file: every response read back (only the warcinfo record is not one)
    assert metrics["raw_docs"] == metrics["planted_docs"] + metrics["web_pages_in_crawl"] > metrics["planted_docs"]
    assert metrics["warc_skipped"] == "1 not_response"
    # extraction on test pages: near trafilatura and resiliparse, well above keeping the whole page
    assert metrics["ext_test_f1_ours"] > 0.9 and metrics["ext_test_f1_ours"] > metrics["ext_test_f1_whole_page"] + 0.03
    assert abs(metrics["ext_test_f1_ours"] - metrics["ext_test_f1_trafilatura"]) < 0.05
    assert metrics["ext_site2_f1_ours"] > 0.9 and metrics["page_blocks_kept"] > 0
    # PII: >= 0.95 precision and recall on every type, in each language, on the test split
    assert metrics["pii_min_recall"] >= 0.95 and metrics["pii_min_precision"] >= 0.95
    # language ID in >= 10 languages, near py3langid on sentences and on short strings
    assert metrics["langid15_langs"] >= 10 and metrics["langid15_long_f1_ours"] > 0.97
    assert metrics["langid15_short_f1_ours"] > metrics["langid15_short_f1_py3langid"] - 0.03
    # the real-data quality classifier, on held-out pages and on a site it never saw
    assert metrics["webq_seen_low_f1"] > 0.9 and metrics["webq_unseen_low_f1"] > 0.85
    assert metrics["webq_classifier_flags_high"] < metrics["webq_gopher_flags_high"]
    assert metrics["verify_exact_precision"] >= metrics["verify_none_precision"]
    assert metrics["stream_verdict"] == "the same ids as"


def test_selection_and_mixing(metrics: dict) -> None:
    assert metrics["sel_rm_loss"] < metrics["sel_random_loss"]  # reference-model selection beats random
    assert metrics["best_mixture_loss"] <= metrics["proportional_loss"]


def test_corpus_artifact_is_reused(
    smoke_book: runner.BookPaths, metrics: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert metrics["corpus_roundtrip"] is True and metrics["corpus_tokens"] > 10_000
    monkeypatch.setenv("LLMBOOK_CACHE", str(smoke_book.cache_dir))
    corpus = chain.pretraining_corpus(profiles.resolve("pretraining_data", "smoke"))
    assert corpus.artifact.hit and corpus.artifact.key == metrics["corpus_key"]
    assert len(corpus.tokens) == metrics["corpus_tokens"] and corpus.n_docs == metrics["corpus_docs"]
