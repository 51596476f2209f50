"""The serving chapter under the smoke profile: its equivalences and the shape of its measurements, from its metrics."""

from __future__ import annotations

import math

import pytest

from llmbook.book import report, runner


@pytest.fixture
def smoke_book(smoke_chapter) -> runner.BookPaths:
    """The scratch site once this chapter has run (the other chapters may not have)."""
    return smoke_chapter("serving")


@pytest.fixture
def metrics(smoke_book: runner.BookPaths) -> dict:
    return report.load_metrics("serving", "smoke", smoke_book.runs_dir)


def test_engine_equals_generate_even_when_preempting(metrics: dict) -> None:
    assert metrics["equivalent_prompts"] == metrics["equivalence_prompts"] >= 3
    assert metrics["equivalence_preemptions"] >= 1  # the tight pool really preempted
    assert metrics["demo_preemptions"] >= 1 and metrics["demo_steps"] > 12  # chunks and decodes over many steps


def test_cache_measurements(metrics: dict) -> None:
    assert 0 <= metrics["paged_waste_pct"] < metrics["contiguous_waste_pct"] <= 100
    assert metrics["max_blocks_used"] <= metrics["pool_blocks"]
    assert metrics["prefix_computed_ratio"] > 1.5 and metrics["prefix_same_outputs"] == "the same"


def test_speculation_keeps_the_output_and_the_server_streams(metrics: dict) -> None:
    assert metrics["spec_identical"] == 1  # smoke: one prompt per draft, identical to plain decoding
    assert 0 <= metrics["lookup_acceptance"] <= 1 and 0 <= metrics["layer_draft_acceptance"] <= 1
    assert metrics["stream_matches"] == "matches" and metrics["chat_completion_tokens"] >= 1


def test_roofline_and_load_numbers_are_measured(metrics: dict) -> None:
    assert metrics["cpu_gflops"] > 0 and metrics["cpu_bandwidth_gbs"] > 0 and metrics["h100_ridge"] == 295
    assert metrics["decode_speedup_max_batch"] > 1  # four sequences per step beat one
    assert metrics["speedup_vs_hf"] > 0 and metrics["speedup_vs_static"] > 0
    assert metrics["speedup_verdict"] in ("meets", "misses")
    assert math.isnan(metrics["int8_agreement_pct"]) or 0 <= metrics["int8_agreement_pct"] <= 100
