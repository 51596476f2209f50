"""The pretraining chapter under the smoke profile: the issue's measured goals, from its metrics."""

from __future__ import annotations

import math

import pytest
from llmbook import report, runner

pytestmark = pytest.mark.xdist_group("book")


@pytest.fixture
def metrics(smoke_book: runner.BookPaths) -> dict:
    return report.load_metrics("pretraining", "smoke", smoke_book.runs_dir)


def test_loss_fell(metrics: dict) -> None:
    assert metrics["loss_fell"] is True
    assert metrics["val_loss_last"] < metrics["val_loss_first"] - 0.5, (metrics["val_loss_first"], metrics["val_loss_last"])
    assert metrics["train_loss_last"] < metrics["train_loss_first"] - 0.5
    assert 0 < metrics["val_bpb"] < 8, metrics["val_bpb"]  # compresses below raw UTF-8


def test_resume_is_exact(metrics: dict) -> None:
    assert metrics["resume_max_abs_diff"] == 0.0, metrics["resume_max_abs_diff"]


def test_throughput_and_mfu(metrics: dict) -> None:
    assert metrics["tokens_per_s"] > 0
    assert 0 < metrics["mfu"] < 1, metrics["mfu"]


def test_memory_states_match_formula(metrics: dict) -> None:
    assert metrics["state_bytes_match"] is True
    # ZeRO stages shrink the per-GPU total monotonically; only sharding brings 7B under 80 GB
    totals = [metrics[f"zero{s}_total_gb"] for s in range(4)]
    assert totals == sorted(totals, reverse=True) and totals[0] > 80 > totals[3], totals


def test_decoding_table(metrics: dict) -> None:
    assert metrics["decoding_rows"] == 7
    assert metrics["penalty_distinct"] >= metrics["greedy_distinct"]


def test_scaling_fit_prediction_recorded(metrics: dict) -> None:
    assert metrics["sweep_runs"] >= 5
    assert math.isfinite(metrics["heldout_rel_error"]) and metrics["heldout_rel_error"] >= 0
    assert math.isfinite(metrics["heldout_predicted"]) and metrics["heldout_predicted"] > 0
    assert metrics["fit_alpha"] > 0 and metrics["fit_beta"] > 0
