"""The LoRA chapter under the smoke profile: its checks against peft and bitsandbytes, from its metrics."""

from __future__ import annotations

import pytest

from llmbook.book import report, runner


@pytest.fixture
def smoke_book(smoke_chapter) -> runner.BookPaths:
    """The scratch site once this chapter has run (the other chapters may not have)."""
    return smoke_chapter("lora")


@pytest.fixture
def metrics(smoke_book: runner.BookPaths) -> dict:
    return report.load_metrics("lora", "smoke", smoke_book.runs_dir)


def test_equal_to_peft_on_the_real_model(metrics: dict) -> None:
    assert metrics["model_name"] == "SmolLM2-135M-Instruct"
    assert metrics["peft_max_logit_diff"] <= 1e-5 and metrics["peft_max_grad_diff"] <= 1e-5
    assert metrics["peft_format_diff"] <= 1e-5
    assert metrics["merge_logit_diff"] <= 1e-3  # one merged matmul instead of two: float rounding only


def test_nf4_equals_bitsandbytes(metrics: dict) -> None:
    assert metrics["nf4_table_equal"] is True and metrics["nf4_bytes_equal"] is True
    assert 4.0 < metrics["nf4_bits_per_param"] < 4.2  # 4-bit codes + double-quantised block constants
    assert metrics["nf4_verdict"] == "lowest"  # on real (near-normal) weights NF4 beats FP4 and int4
    assert metrics["nf4_mean_error"] < metrics["int4_mean_error"] < metrics["fp4_mean_error"]


def test_fine_tuning_methods(metrics: dict) -> None:
    assert metrics["qlora_curves_verdict"] == "lie on top of each other", metrics["qlora_curve_gap"]
    assert metrics["lora_trainable_pct"] < 1.0
    assert metrics["state_ratio_full_over_lora"] > 2
    assert metrics["weights_ratio_lora_over_qlora"] > 1
    assert metrics["formula_gap_pct"] < 1.0


def test_paper_memory(metrics: dict) -> None:
    assert metrics["paper_70b_full_gb"] > 1000 > 80 > metrics["paper_70b_qlora_gb"]
    assert metrics["paper_7b_qlora_gb"] < 6


def test_merging(metrics: dict) -> None:
    assert metrics["fp32_merge_logit_diff"] <= 1e-3
    assert metrics["requantization_error"] > 0
    assert metrics["best_merge_weight"] in (0.5, 0.75, 1.0)
    assert 0 < metrics["ties_rank_kept_pct"] <= 100
