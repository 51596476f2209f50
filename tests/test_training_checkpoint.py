"""Stop at step 8, resume from the checkpoint: every later loss is bit-identical to an uninterrupted run."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from llmbook.model import DecoderLM, ModelConfig
from llmbook.training import (
    LoaderConfig,
    PackedLoader,
    ScheduleConfig,
    TrainConfig,
    Trainer,
    load_checkpoint,
    save_checkpoint,
)

TOTAL, STOP = 20, 8


def make_trainer(seed: int, tie: bool = False) -> Trainer:
    torch.manual_seed(seed)  # a different seed for the resumed run: everything must come from the checkpoint
    cfg = ModelConfig(vocab_size=61, d_model=16, n_layers=2, n_heads=2, n_kv_heads=1, dropout=0.1, tie_embeddings=tie)
    model = DecoderLM(cfg)
    tokens = (np.arange(4000) * 7919 % 61).astype(np.int32)
    loader = PackedLoader(tokens, LoaderConfig(seq_len=16, batch_size=2, seed=5))
    train_cfg = TrainConfig(
        lr=3e-3, accum_steps=2, schedule=ScheduleConfig(kind="cosine", total_steps=TOTAL, warmup_steps=3)
    )
    return Trainer(model, loader, train_cfg)


@pytest.mark.parametrize("tie", [False, True])
def test_resume_is_bit_identical(tmp_path, tie: bool) -> None:
    full = make_trainer(0, tie)
    full_losses = [r["loss"] for r in full.run(TOTAL)]

    first = make_trainer(0, tie)
    first.run(STOP)
    first.save(tmp_path / "ckpt")
    for _ in range(3):  # burn RNG state so a missing RNG restore would show
        torch.rand(10)

    resumed = make_trainer(123, tie)
    resumed.load(tmp_path / "ckpt")
    assert resumed.step == STOP
    resumed_losses = [r["loss"] for r in resumed.run(TOTAL)]
    diff = max(abs(a - b) for a, b in zip(resumed_losses, full_losses[STOP:]))
    assert resumed_losses == full_losses[STOP:], f"max_abs_diff={diff}"
    for p, q in zip(full.model.parameters(), resumed.model.parameters()):
        assert torch.equal(p, q)
    assert full_losses[-1] < full_losses[0]  # it trained


def test_resume_without_rng_or_loader_differs(tmp_path) -> None:
    """The test above can fail: dropping the loader position changes the later losses."""
    full = make_trainer(0)
    full_losses = [r["loss"] for r in full.run(10)]
    first = make_trainer(0)
    first.run(STOP)
    first.save(tmp_path / "ckpt")
    resumed = make_trainer(0)
    load_checkpoint(tmp_path / "ckpt", model=resumed.model, optimizer=resumed.optimizer)  # no loader
    resumed.step = STOP
    losses = [r["loss"] for r in resumed.run(10)]
    assert losses != full_losses[STOP:]


def test_checkpoint_files_have_no_pickle(tmp_path) -> None:
    t = make_trainer(0)
    t.run(2)
    np.random.seed(7)
    random.seed(7)
    state_np, state_py = np.random.rand(), random.random()
    np.random.seed(7)
    random.seed(7)
    path = save_checkpoint(tmp_path / "c", model=t.model, optimizer=t.optimizer, step=2, loader=t.loader)
    files = ["model.safetensors", "optimizer.safetensors", "rng.safetensors", "trainer_state.json"]
    assert sorted(p.name for p in path.iterdir()) == files
    meta = json.loads((path / "trainer_state.json").read_text())
    assert meta["step"] == 2 and meta["loader"]["cursor"] == 8
    np.random.rand(), random.random()
    load_checkpoint(path, model=t.model, optimizer=t.optimizer)
    assert np.random.rand() == state_np and random.random() == state_py
    # the optimizer state also loads into torch's own AdamW
    ref_groups = [
        {"params": g["params"], **{k: v for k, v in g.items() if k != "params"}} for g in t.optimizer.param_groups
    ]
    ref = torch.optim.AdamW(ref_groups)
    load_checkpoint(path, model=t.model, optimizer=ref)
    assert torch.equal(ref.state_dict()["state"][0]["exp_avg"], t.optimizer.state_dict()["state"][0]["exp_avg"])
    with pytest.raises(ValueError, match="checkpoint directory"):
        load_checkpoint(tmp_path, model=t.model)
    # a ZeRO run's checkpoint leaves model and optimizer to the engine's shards: a plain load says so
    sharded = save_checkpoint(tmp_path / "zero", model=None, optimizer=None, step=2, loader=t.loader)
    assert not (sharded / "model.safetensors").exists()
    with pytest.raises(ValueError, match="ZeRO"):
        load_checkpoint(sharded, model=t.model)
