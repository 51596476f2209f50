"""Run comparison helpers: loss differences, side-by-side tables, installed engines."""

import importlib.util

import pytest

from llmbook.training.runs import installed_engines, loss_table, max_loss_diff


def rows(losses, first_step=1):
    return [{"step": float(first_step + i), "loss": loss, "lr": 1e-3} for i, loss in enumerate(losses)]


def test_max_loss_diff_is_the_largest_stepwise_difference():
    assert max_loss_diff(rows([3.0, 2.5, 2.0]), rows([3.0, 2.25, 2.125])) == 0.25
    assert max_loss_diff(rows([1.0, 2.0]), rows([1.0, 2.0])) == 0.0
    assert isinstance(max_loss_diff(rows([1.0]), rows([1.5])), float)


def test_max_loss_diff_pairs_steps_in_order_up_to_the_shorter_run():
    assert max_loss_diff(rows([1.0, 2.0, 9.0]), rows([1.0, 2.5])) == 0.5
    assert max_loss_diff([], rows([1.0])) == 0.0


def test_loss_table_indexes_by_the_first_runs_steps():
    table = loss_table({"a": rows([3.0, 2.0], first_step=4), "b": rows([3.5, 2.5])})
    assert table.index.name == "step" and list(table.index) == [4, 5]
    assert list(table.columns) == ["a", "b"]
    assert table.loc[5, "b"] == 2.5


def test_loss_table_rejects_runs_of_different_lengths():
    with pytest.raises(ValueError, match="different lengths"):
        loss_table({"a": rows([1.0, 2.0]), "b": rows([1.0])})
    with pytest.raises(ValueError):
        loss_table({})


def test_installed_engines_keeps_order_and_checks_packages():
    have_accelerate = importlib.util.find_spec("accelerate") is not None
    have_deepspeed = importlib.util.find_spec("deepspeed") is not None
    expected = ["single"] + ["zero2"] * have_deepspeed + ["ddp"] * have_accelerate
    assert installed_engines(["single", "zero2", "ddp"]) == expected
    with pytest.raises(ValueError, match="unknown engine"):
        installed_engines(["fsdp"])
