"""The pretraining chapter under the smoke profile: the issue's measured goals, from its metrics."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import LlamaForCausalLM

from llmbook.book import profiles, report, runner
from llmbook.chain.base_model import book_base_model
from llmbook.model import from_pretrained


@pytest.fixture
def smoke_book(smoke_chapter) -> runner.BookPaths:
    """The scratch site once this chapter has run (the other chapters may not have)."""
    return smoke_chapter("pretraining")


@pytest.fixture
def metrics(smoke_book: runner.BookPaths) -> dict:
    return report.load_metrics("pretraining", "smoke", smoke_book.runs_dir)


def test_loss_fell(metrics: dict) -> None:
    assert metrics["loss_fell"] is True
    first, last = metrics["val_loss_first"], metrics["val_loss_last"]
    assert last < first - 0.5, (first, last)
    assert metrics["train_loss_last"] < metrics["train_loss_first"] - 0.5
    assert 0 < metrics["val_bpb"] < 8, metrics["val_bpb"]  # compresses below raw UTF-8


def test_resume_is_exact(metrics: dict) -> None:
    assert metrics["resume_max_abs_diff"] == 0.0, metrics["resume_max_abs_diff"]


def test_mfu_is_the_measured_throughput_over_the_peak(metrics: dict) -> None:
    # Timings vary with the machine's load, so the test checks the accounting, not the speed:
    # MFU = tokens/s x FLOPs/token / peak, with FLOPs/token at least 6 per parameter of the matmuls.
    expected = metrics["tokens_per_s"] * metrics["flops_per_token"] / (metrics["peak_gflops"] * 1e9)
    assert math.isclose(metrics["mfu"], expected, rel_tol=1e-9), (metrics["mfu"], expected)
    assert math.isclose(metrics["mfu_pct"], 100 * metrics["mfu"], rel_tol=1e-9)
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
    smoke = profiles.resolve("pretraining", "smoke")
    assert metrics["sweep_runs"] == len(smoke.sweep_d_models) * len(smoke.sweep_tokens) >= 5
    # the law fitted on the sweep predicts the larger held-out run's loss before it is trained (smoke: 1.8 %)
    assert metrics["heldout_rel_error"] < 0.05, metrics["heldout_rel_error"]
    predicted, measured = metrics["heldout_predicted"], metrics["heldout_measured"]
    assert math.isclose(metrics["heldout_rel_error"], abs(predicted - measured) / measured, rel_tol=1e-9)
    assert math.isfinite(metrics["heldout_predicted"]) and metrics["heldout_predicted"] > 0
    assert metrics["fit_alpha"] > 0 and metrics["fit_beta"] > 0


def test_two_processes_follow_one(metrics: dict) -> None:
    smoke = profiles.resolve("pretraining", "smoke")
    assert metrics["dist_nproc"] == smoke.dist_nproc >= 2 and metrics["dist_steps"] == smoke.dist_steps > 0
    assert metrics["dist_max_diff_ddp"] < 1e-5, metrics["dist_max_diff_ddp"]
    # the launched run, resumed half-way from its checkpoint by a new job, is the same run
    assert metrics["dist_resume_step"] == metrics["dist_steps"] // 2
    assert metrics["dist_resume_max_abs_diff"] == 0.0, metrics["dist_resume_max_abs_diff"]


def test_activation_checkpointing_saves_memory(metrics: dict) -> None:
    assert metrics["ckpt_peak_saving"] > 0.1, metrics["ckpt_peak_saving"]  # measured, forward + backward peak


def test_base_model_artifact_loads_in_transformers(smoke_book: runner.BookPaths, metrics: dict, monkeypatch) -> None:
    """What later chapters get: the chapter's saved model, found by the library, loadable by transformers."""
    monkeypatch.setenv("LLMBOOK_CACHE", str(smoke_book.cache_dir))
    built_by_chapter = smoke_book.cache_dir / "base_model" / metrics["base_model_key"]
    assert built_by_chapter.is_dir()
    artifact = book_base_model(profiles.resolve("pretraining", "smoke"), progress=False)
    assert artifact.path == built_by_chapter, "the library must find the chapter's model, not train another"
    model = LlamaForCausalLM.from_pretrained(artifact.path)
    ids = torch.tensor([[1, 2, 3]])
    assert model(ids).logits.shape == (1, 3, model.config.vocab_size)
    assert (artifact.path / "tokenizer.json").exists()


def test_base_model_trains_on_a_cache_miss(smoke_book: runner.BookPaths, metrics: dict, monkeypatch) -> None:
    monkeypatch.setenv("LLMBOOK_CACHE", str(smoke_book.cache_dir))  # corpus and tokenizer come from the chapters
    cfg = profiles.resolve("pretraining", "smoke", steps=10, eval_every=10, resume_steps=2)
    artifact = book_base_model(cfg, progress=False)
    assert artifact.key != metrics["base_model_key"]
    model = from_pretrained(artifact.path)
    assert model.cfg.d_model == cfg.d_model and model.cfg.n_layers == cfg.n_layers


def test_pieces_match_their_libraries(metrics: dict) -> None:
    """AdamW, clipping, accumulation, both schedules and the loss scaler, on the chapter's model."""
    for key in ("adamw", "clip", "accumulation", "cosine", "wsd", "scaler"):
        assert metrics[f"check_{key}_max_abs_diff"] < 1e-5, (key, metrics[f"check_{key}_max_abs_diff"])
    assert metrics["fp16_tiny_unscaled"] == 0.0 and metrics["fp16_tiny_scaled_rel_err"] < 1e-2


def test_decoding_matches_transformers(metrics: dict) -> None:
    assert metrics["greedy_equals_hf"] is True
    assert metrics["beam_equals_hf"] is True
    assert metrics["filters_max_abs_diff"] < 1e-5 and metrics["filters_kept_tokens"] >= 1
