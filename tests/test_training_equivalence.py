"""The side-by-side checks the pretraining chapter shows, on a tiny model: each equals its library."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llmbook.model import ModelConfig, seeded_model
from llmbook.training import equivalence as eq
from llmbook.training.schedule import ScheduleConfig, wsd_phases

CFG = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, max_seq_len=16)


def make_model() -> torch.nn.Module:
    return seeded_model(CFG, seed=0)


def batches(n: int) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n):
        ids = torch.randint(0, 64, (4, 16), generator=gen)
        out.append({"input_ids": ids, "labels": ids})
    return out


def test_adamw_clipping_and_accumulation_equal_their_references() -> None:
    assert eq.adamw_vs_torch(make_model, batches(3), lr=1e-2, weight_decay=0.1) < 1e-6
    assert eq.clipping_vs_torch(make_model, batches(1)[0], max_norm=0.05) < 1e-6
    assert eq.accumulation_vs_one_batch(make_model, batches(1)[0]) < 1e-6


def test_the_checks_see_a_difference_when_there_is_one() -> None:
    # models from different seeds: the same comparison must report a gap
    other = iter([seeded_model(CFG, seed=0), seeded_model(CFG, seed=1)])
    assert eq.adamw_vs_torch(lambda: next(other), batches(1), lr=1e-2, weight_decay=0.1) > 1e-3


@pytest.mark.parametrize("kind", ["cosine", "wsd"])
def test_schedules_equal_transformers(kind: str) -> None:
    cfg = ScheduleConfig(kind=kind, total_steps=200, warmup_steps=20, min_lr_ratio=0.1)
    ours, ref = eq.schedule_vs_transformers(cfg)
    after_warmup = wsd_phases(200, cfg.wsd_ratio)[0] if kind == "wsd" else 0  # HF's WSD warms up from min_lr
    assert ours.shape == ref.shape == (200,)
    assert np.abs(ours[after_warmup:] - ref[after_warmup:]).max() < 1e-9
    with pytest.raises(ValueError, match="cosine' or 'wsd'"):
        eq.schedule_vs_transformers(ScheduleConfig(kind="constant", total_steps=10, warmup_steps=0))


def test_loss_scaler_trace_equals_grad_scaler() -> None:
    trace = eq.loss_scaler_vs_torch([False, True, False, False, False, True, True, False], growth_interval=3)
    assert [row["ours"] for row in trace] == [row["torch.amp.GradScaler"] for row in trace]
    # hand-derived: halve on each overflow, double after three clean steps
    assert [row["ours"] for row in trace] == [2.0**16, 2.0**15, 2.0**15, 2.0**15, 2.0**16, 2.0**15, 2.0**14, 2.0**14]
