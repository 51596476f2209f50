"""The post-training chapter under the smoke profile: its checks against transformers and trl, from its metrics."""

from __future__ import annotations

import pytest

from llmbook.book import report, runner


@pytest.fixture
def smoke_book(smoke_chapter) -> runner.BookPaths:
    """The scratch site once this chapter has run (the other chapters may not have)."""
    return smoke_chapter("post_training")


@pytest.fixture
def metrics(smoke_book: runner.BookPaths) -> dict:
    return report.load_metrics("post_training", "smoke", smoke_book.runs_dir)


def test_chat_format_equals_transformers_and_packing_is_exact(metrics: dict) -> None:
    assert metrics["model_name"] == "SmolLM2-135M-Instruct"
    assert metrics["template_equal"] == "identical"
    assert 0 < metrics["assistant_share_pct"] < 100  # the loss reads some tokens, not all
    assert metrics["packing_loss_gap"] < 1e-4


def test_book_base_model_learns_the_chat_format(metrics: dict) -> None:
    assert metrics["book_added_tokens"] == 2  # <|im_start|> and <|im_end|>
    assert metrics["book_sft_loss_after"] < metrics["book_sft_loss_before"]


def test_losses_and_dpo_loop_equal_trl(metrics: dict) -> None:
    assert metrics["trl_loss_gap"] < 1e-5
    assert metrics["dpo_curve_verdict"] == "the same", metrics["dpo_curve_gap"]


def test_every_method_was_measured(metrics: dict) -> None:
    assert metrics["n_train_pairs"] >= 4 and metrics["n_dev_pairs"] >= 1
    for key in ("acc_zero_shot", "acc_sft", "acc_dpo", "acc_best", "acc_ppo", "acc_grpo", "win_checker", "win_rm",
                "win_lc", "judge_agreement", "rm_dev_accuracy"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["acc_sft_low"] <= metrics["acc_sft"] <= metrics["acc_sft_high"]
    assert metrics["milestone_verdict"] in ("met", "not met")
    assert metrics["kl_grpo"] >= -0.5  # a Monte-Carlo estimate of a KL: only noise can make it negative
    assert metrics["grpo_skipped"] == 0
    assert metrics["ppo_beta"] == 0.1  # the study map's KL penalty
    assert metrics["ppo_kl_last"] >= -0.5 and metrics["ppo_seconds_per_step"] > 0
