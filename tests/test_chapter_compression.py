"""The compression chapter under the smoke profile: its checks against the libraries and its measurements."""

from __future__ import annotations

import math

import pytest

from llmbook.book import report, runner


@pytest.fixture
def smoke_book(smoke_chapter) -> runner.BookPaths:
    """The scratch site once this chapter has run (the other chapters may not have)."""
    return smoke_chapter("compression")


@pytest.fixture
def metrics(smoke_book: runner.BookPaths) -> dict:
    return report.load_metrics("compression", "smoke", smoke_book.runs_dir)


def test_grids_equal_the_libraries(metrics: dict) -> None:
    assert metrics["twins_compared"] >= 6  # bitsandbytes, torchao, quanto, hqq: all installed by make setup
    # only values at float32 rounding ties may round the other way: a handful among ~900k codes
    assert metrics["twins_codes_differ_max"] <= 1e-3 * metrics["twins_codes_total"]
    assert metrics["twins_error_gap"] < 1e-4
    assert metrics["granularity_verdict"] == "shrinks"
    assert metrics["int4_group_error"] < metrics["int4_tensor_error"]


def test_llama_cpp_formats_and_gguf_file(metrics: dict) -> None:
    assert metrics["ggml_bytes_equal"] is True
    assert metrics["gguf_logit_diff"] <= 1e-4  # transformers' GGUF load = our rounding in memory
    assert 4.5 <= metrics["gguf_bits_per_param"] < 9  # Q4_0 linears, a Q8_0 embedding, F32 norms
    # the shipped SmolLM2 weights already lie on the Q4_1 grid; Q4_0 moves them
    assert metrics["q4_1_requant_error"] < 1e-4 < metrics["q4_0_requant_error"]


def test_calibrated_methods(metrics: dict) -> None:
    assert metrics["gptq_layers_better"] == metrics["gptq_layers_total"] >= 7
    assert metrics["gptq_median_ratio"] < 1
    assert metrics["attn_outlier_ratio"] > 1 and metrics["down_outlier_ratio"] > 1
    assert metrics["masks_2_4_ok"] is True


def test_frontier_numbers(metrics: dict) -> None:
    assert metrics["fp32_ppl"] > 1 and 0 <= metrics["fp32_acc"] <= 1
    assert abs(metrics["int8_ppl_gap_pct"]) < 2  # int8 with a scale per row is nearly free even here
    for key in ("rtn4", "gptq4", "awq4", "nf4", "rtn3", "gptq3", "w8a8", "smoothquant", "llm_int8"):
        assert math.isfinite(metrics[f"{key}_ppl"]), key
    assert metrics["rtn4_mb"] < metrics["fp32_mb"] / 2
    for key in ("gptq4_verdict", "awq4_verdict", "gptq3_verdict", "smoothquant_verdict", "wanda_verdict",
                "sparsegpt_verdict", "whitened_verdict", "distill_verdict"):
        assert metrics[key] in ("below", "not below"), key


def test_int8_kernels_and_other_models(metrics: dict) -> None:
    assert metrics["int8_speedup"] > 0 and metrics["int8_mlp_error"] < 0.3  # activations: one scale per tensor
    assert math.isfinite(metrics["scratch_student_ppl"]) and math.isfinite(metrics["distilled_student_ppl"])
    assert abs(metrics["own_int8_gap_pct"]) < 2  # the book's own float32-trained model
