"""Two processes over gloo train exactly like one: DDP through accelerate, ZeRO-2/3 through DeepSpeed."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from llmbook.model import ModelConfig
from llmbook.training import LoaderConfig, ScheduleConfig, TrainConfig
from llmbook.training.launch import RunSpec, launch, model_config, train_config, train_run
from llmbook.training.parallel import SingleProcess, deepspeed_config

pytestmark = pytest.mark.xdist_group("distributed")  # the launched runs use both cores: run them one after another

STEPS = 8


def make_spec(tmp_path, engine: str, accum_steps: int = 2) -> RunSpec:
    period = np.random.default_rng(0).integers(0, 96, 89)  # a learnable stream: loss must fall fast
    tokens = np.tile(period, 60).astype(np.int32)
    np.save(tmp_path / "tokens.npy", tokens)
    model = ModelConfig(vocab_size=96, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=32)
    train = TrainConfig(lr=1e-2, accum_steps=accum_steps, schedule=ScheduleConfig(total_steps=STEPS, warmup_steps=2))
    return RunSpec(
        tokens=str(tmp_path / "tokens.npy"),
        model=dataclasses.asdict(model),
        train=dataclasses.asdict(train),
        loader=dataclasses.asdict(LoaderConfig(seq_len=32, batch_size=4, seed=3)),
        engine=engine,
    )


@pytest.mark.parametrize("engine", ["ddp", "zero2", "zero3"])
def test_two_processes_match_one(tmp_path, engine: str) -> None:
    spec = make_spec(tmp_path, engine)
    single = train_run(spec)  # in this process, the whole batch
    double = launch(spec, 2, tmp_path / engine)  # two ranks, half the batch each
    assert len(double) == STEPS
    loss_diff = max(abs(a["loss"] - b["loss"]) for a, b in zip(single, double))
    norm_diff = max(abs(a["grad_norm"] - b["grad_norm"]) for a, b in zip(single, double))
    assert loss_diff < 1e-5, f"{engine}: max_abs_diff of the loss curves = {loss_diff}"
    assert norm_diff < 1e-4, f"{engine}: max_abs_diff of the gradient norms = {norm_diff}"
    assert single[-1]["loss"] < single[0]["loss"] - 0.5, "the run must learn, or equal curves prove little"
    assert double[0]["tokens"] == single[0]["tokens"]  # tokens count both ranks


def test_failed_launch_reports_the_error(tmp_path) -> None:
    spec = dataclasses.replace(make_spec(tmp_path, "ddp"), tokens=str(tmp_path / "missing.npy"))
    with pytest.raises(RuntimeError, match="missing.npy"):
        launch(spec, 2, tmp_path / "run")


def test_shard_takes_this_ranks_rows() -> None:
    batch = {"input_ids": torch.arange(12).view(6, 2), "labels": torch.arange(12).view(6, 2)}
    engine = SingleProcess()
    engine.rank, engine.world_size = 1, 3
    assert engine.shard(batch)["input_ids"].tolist() == [[4, 5], [6, 7]]
    engine.world_size = 4
    with pytest.raises(ValueError, match="divisible"):
        engine.shard(batch)


def test_deepspeed_config_fills_auto_from_the_run() -> None:
    cfg = deepspeed_config("zero2", micro_batch_per_rank=4, accum_steps=2, grad_clip=1.0, precision="bf16")
    assert cfg["zero_optimization"]["stage"] == 2
    assert (cfg["train_micro_batch_size_per_gpu"], cfg["gradient_accumulation_steps"], cfg["gradient_clipping"]) == (4, 2, 1.0)
    assert cfg["bf16"] == {"enabled": True}
    with pytest.raises(ValueError, match="gradient_accumulation_steps"):
        deepspeed_config({"gradient_accumulation_steps": 8}, micro_batch_per_rank=4, accum_steps=2, grad_clip=1.0,
                         precision="fp32")
    with pytest.raises(ValueError, match="zero1"):
        deepspeed_config("zero9", micro_batch_per_rank=4, accum_steps=1, grad_clip=1.0, precision="fp32")
    with pytest.raises(ValueError, match="fp16"):
        deepspeed_config("zero1", micro_batch_per_rank=4, accum_steps=1, grad_clip=1.0, precision="fp16")


def test_spec_round_trips_and_rejects_unknown_engine(tmp_path) -> None:
    spec = make_spec(tmp_path, "zero3")
    again = RunSpec.load(spec.save(tmp_path / "run.json"))
    assert again == spec
    assert model_config(again.model) == model_config(spec.model)
    assert train_config(again.train) == train_config(spec.train)
    with pytest.raises(ValueError, match="engine must be one of"):
        dataclasses.replace(spec, engine="fsdp")
