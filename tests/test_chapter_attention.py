"""The attention chapter under the smoke profile: the issue's measured goals, from its metrics."""

from __future__ import annotations

import pytest

from llmbook.book import profiles, report, runner


@pytest.fixture
def smoke_book(smoke_chapter) -> runner.BookPaths:
    """The scratch site once this chapter has run (the other chapters may not have)."""
    return smoke_chapter("attention")


@pytest.fixture
def metrics(smoke_book: runner.BookPaths) -> dict:
    return report.load_metrics("attention", "smoke", smoke_book.runs_dir)


def test_verification_diffs_below_tolerance(metrics: dict) -> None:
    assert metrics["hf_logits_max_abs_diff"] < 1e-4, metrics["hf_logits_max_abs_diff"]
    assert metrics["tiled_vs_sdpa_max_abs_diff"] < 1e-4, metrics["tiled_vs_sdpa_max_abs_diff"]
    assert metrics["tiled_vs_sdpa_grad_max_abs_diff"] < 1e-4, metrics["tiled_vs_sdpa_grad_max_abs_diff"]
    assert metrics["tiled_vs_sdpa_model_logits_max_abs_diff"] < 1e-4
    assert metrics["kv_decode_max_abs_diff"] < 1e-4, metrics["kv_decode_max_abs_diff"]
    assert metrics["eager_vs_sdpa_max_abs_diff"] < 1e-5 and metrics["weights_future_mass"] == 0


def test_kv_cache_bytes(metrics: dict) -> None:
    assert metrics["llama3_kv_bytes_per_token"] == 2 * 32 * 8 * 128 * 2 == 131072
    assert metrics["qwen25_kv_bytes_per_token"] == 2 * 28 * 4 * 128 * 2
    assert metrics["dsv2_kv_bytes_per_token"] == 60 * (512 + 64) * 2
    assert metrics["kv_measured_over_formula_max_err"] < 1e-9  # KVCache.nbytes() equals the formula


def test_training_loss_fell(metrics: dict) -> None:
    first, last = metrics["rope_loss_first"], metrics["rope_loss_last"]
    assert last < first - 1.0, (first, last)


def test_tiled_memory_below_eager_at_largest_t(metrics: dict) -> None:
    assert metrics["peak_mib_tiled_max_t"] < metrics["peak_mib_eager_max_t"]
    assert metrics["peak_mib_eager_max_t"] >= metrics["dense_scores_mib_max_t"]  # eager holds the T x T scores


def test_learned_positions_cannot_extrapolate(metrics: dict) -> None:
    smoke = profiles.resolve("attention", "smoke")
    beyond_training = sum(m > 1 for m in smoke.eval_multiples)  # lengths past train_len have no position vector
    assert metrics["learned_missing_lengths"] == beyond_training >= 1
    assert "ppl_learned_max" not in metrics and "ppl_alibi_max" in metrics and "ppl_rope_max" in metrics
