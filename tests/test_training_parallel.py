"""Two processes over gloo train exactly like one: DDP through accelerate, ZeRO-2/3 through DeepSpeed."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from llmbook.model import DecoderLM, ModelConfig, MoEConfig
from llmbook.training import LoaderConfig, ScheduleConfig, Trainer, TrainConfig, accumulate_gradients
from llmbook.training.launch import RunSpec, launch, model_config, train_config, train_run
from llmbook.training.parallel import SingleProcess, deepspeed_config

pytestmark = pytest.mark.xdist_group("distributed")  # the launched runs use both cores: run them one after another

STEPS = 8


def make_spec(tmp_path, engine: str, accum_steps: int = 2, moe: MoEConfig | None = None) -> RunSpec:
    period = np.random.default_rng(0).integers(0, 96, 89)  # a learnable stream: loss must fall fast
    tokens = np.tile(period, 60).astype(np.int32)
    np.save(tmp_path / "tokens.npy", tokens)
    model = ModelConfig(vocab_size=96, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=32, moe=moe)
    train = TrainConfig(lr=1e-2, accum_steps=accum_steps, schedule=ScheduleConfig(total_steps=STEPS, warmup_steps=2))
    return RunSpec(
        tokens=str(tmp_path / "tokens.npy"),
        model=dataclasses.asdict(model),
        train=dataclasses.asdict(train),
        loader=dataclasses.asdict(LoaderConfig(seq_len=32, batch_size=4, seed=3)),
        engine=engine,
        device="cpu",  # gloo on every host: two ranks must not share one GPU
    )


@pytest.mark.parametrize("engine", ["ddp", "zero1", "zero2", "zero3", "ddp-moe"])
def test_two_processes_match_one(tmp_path, engine: str) -> None:
    # ddp-moe: 32 experts, top-1, so some expert gets no token in a step (DDP must still see a gradient
    # for it). No load-balancing loss: that is computed per rank's batch (as in real MoE training).
    moe = MoEConfig(n_experts=32, top_k=1, aux_loss_coef=0.0) if engine == "ddp-moe" else None
    engine = engine.removesuffix("-moe")
    spec = make_spec(tmp_path, engine, moe=moe)
    single = train_run(spec)  # in this process, the whole batch
    double = launch(spec, 2, tmp_path / engine)  # two ranks, half the batch each
    assert len(double) == STEPS
    assert single[-1]["loss"] < single[0]["loss"] - 0.5, "the run must learn, or equal curves prove little"
    if moe is not None:
        # top-1 routing is discontinuous: once rounding flips one token's expert the curves part a little,
        # so the MoE run is held to the first steps exactly and to the whole curve loosely
        early = max(abs(a["loss"] - b["loss"]) for a, b in zip(single[:4], double[:4]))
        late = max(abs(a["loss"] - b["loss"]) for a, b in zip(single, double))
        assert early < 1e-5 and late < 2e-2, f"moe: max_abs_diff first 4 steps {early}, all steps {late}"
        single, double = single[:4], double[:4]
    loss_diff = max(abs(a["loss"] - b["loss"]) for a, b in zip(single, double))
    norm_diff = max(abs(a["grad_norm"] - b["grad_norm"]) for a, b in zip(single, double))
    assert loss_diff < 1e-5, f"{engine}: max_abs_diff of the loss curves = {loss_diff}"
    assert norm_diff < 1e-4, f"{engine}: max_abs_diff of the gradient norms = {norm_diff}"
    assert double[0]["tokens"] == single[0]["tokens"]  # tokens count both ranks


def test_failed_launch_reports_the_error(tmp_path) -> None:
    spec = dataclasses.replace(make_spec(tmp_path, "ddp"), tokens=str(tmp_path / "missing.npy"))
    with pytest.raises(RuntimeError, match="missing.npy"):
        launch(spec, 2, tmp_path / "run")
    with pytest.raises(ValueError, match="separate copies"):
        launch(dataclasses.replace(spec, engine="single"), 2, tmp_path / "run")


GLOO_ABORT = """[rank0]: step 8 done
terminate called after throwing an instance of 'gloo::IoException'
  what():  [../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.0.1]:5012
Fatal Python error: Aborted
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
llmbook.training.launch FAILED
"""


class CrashingJob:
    """Stands in for torchrun: the workers crash with a gloo abort, after (or before) writing the history."""

    def __init__(self, finished: bool):
        self.finished, self.returncode = finished, 1

    def __call__(self, cmd, **kwargs):
        spec = RunSpec.load(cmd[-1])
        if self.finished:
            Path(spec.history_out).write_text(json.dumps([{"step": 1.0, "loss": 2.0}]))
        return self

    def communicate(self, timeout=None):
        return GLOO_ABORT, None


@pytest.mark.parametrize("finished", [True, False])
def test_crash_while_shutting_down(tmp_path, monkeypatch, finished: bool) -> None:
    spec = make_spec(tmp_path, "ddp")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "history.json").write_text("[]")  # a previous run's file must not count
    monkeypatch.setattr("llmbook.training.launch.subprocess.Popen", CrashingJob(finished))
    if finished:  # every rank got past the final barrier: the history is complete, the crash is reported
        with pytest.warns(RuntimeWarning, match="Connection closed by peer"):
            assert launch(spec, 2, tmp_path / "run") == [{"step": 1.0, "loss": 2.0}]
    else:
        with pytest.raises(RuntimeError, match="(?s)terminate called.*Connection closed by peer.*launch.log"):
            launch(spec, 2, tmp_path / "run")


class FakeRank(SingleProcess):
    """Rank ``rank`` of ``world`` in one process: the all-reduce returns a sum computed beforehand."""

    def __init__(self, rank: int, world: int, global_sum: float) -> None:
        super().__init__("cpu")
        self.rank, self.world_size, self.global_sum, self.barriers = rank, world, global_sum, 0

    def all_reduce_sum(self, value: float) -> float:
        return self.global_sum

    def barrier(self) -> None:
        self.barriers += 1


def tiny_model() -> DecoderLM:
    torch.manual_seed(0)
    return DecoderLM(ModelConfig(vocab_size=40, d_model=16, n_layers=1, n_heads=2))


def test_rank_weights_give_the_global_gradient_with_unequal_token_counts() -> None:
    """Ranks weight their losses by W n_i / n; averaging their gradients (what DDP does) gives the full batch's."""
    x = torch.randint(0, 40, (4, 12), generator=torch.Generator().manual_seed(1))
    labels = x.clone()
    labels[0, :9] = -100  # rank 0 scores far fewer tokens than rank 1
    full = {"input_ids": x, "labels": labels}
    single = tiny_model()
    accumulate_gradients(single, [full])
    n_global = int((labels[:, 1:] != -100).sum())
    rank_grads = []
    for rank in range(2):
        engine = FakeRank(rank, 2, float(n_global))
        model = tiny_model()
        accumulate_gradients(model, [engine.shard(full)], parallel=engine)
        rank_grads.append([p.grad for p in model.parameters()])
    averaged = [(a + b) / 2 for a, b in zip(*rank_grads)]
    diff = max((p.grad - g).abs().max().item() for p, g in zip(single.parameters(), averaged))
    assert diff < 1e-6, f"max_abs_diff={diff:.3e}"


def test_only_rank_zero_writes_the_checkpoint(tmp_path) -> None:
    for rank in (1, 0):
        engine = FakeRank(rank, 2, 0.0)
        loader = iter([])
        trainer = Trainer(tiny_model(), loader, TrainConfig(schedule=ScheduleConfig(total_steps=2, warmup_steps=1)), parallel=engine)
        trainer.save(tmp_path / f"ckpt{rank}")
        assert (tmp_path / f"ckpt{rank}" / "model.safetensors").exists() == (rank == 0)
        assert engine.barriers == 1  # every rank waits for the write


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
    with pytest.raises(ValueError, match="deepspeed_config"):
        dataclasses.replace(spec, engine="ddp", deepspeed_config="zero2.json")
    with pytest.raises(ValueError, match="needs a checkpoint_dir"):
        dataclasses.replace(spec, checkpoint_every=2)


@pytest.mark.parametrize("engine", ["ddp", "zero2", "zero3"])
def test_two_process_run_resumes_exactly(tmp_path, engine: str) -> None:
    # one run checkpoints at steps 4 and 8; a new job resumes from step 4: its steps 5-8 must be the same to the bit.
    # Under ZeRO each rank writes and reads its own shard (DeepSpeed's files), the rest is the Trainer's.
    spec = dataclasses.replace(make_spec(tmp_path, engine), checkpoint_every=STEPS // 2, checkpoint_dir=str(tmp_path / "ckpt"))
    full = launch(spec, 2, tmp_path / "full")
    step4 = tmp_path / "ckpt" / f"step-{STEPS // 2:06d}"
    files = {p.name for p in step4.iterdir()}
    assert {"trainer_state.json", "rng.safetensors"} <= files
    assert ("model.safetensors" in files) == (engine == "ddp"), files  # ZeRO: the engine's shards instead
    resumed = launch(dataclasses.replace(spec, checkpoint_every=0, resume_from=str(step4)), 2, tmp_path / "resumed")
    assert [r["loss"] for r in resumed] == [r["loss"] for r in full[STEPS // 2:]], (full, resumed)
    assert [r["step"] for r in resumed] == [r["step"] for r in full[STEPS // 2:]]
    if engine == "zero2":  # shards of 2 ranks cannot be read by 1: one clear message, before any step
        with pytest.raises(RuntimeError, match="ZeRO shards of 2 processes; resume it on 2, not 1"):
            launch(dataclasses.replace(spec, checkpoint_every=0, resume_from=str(step4)), 1, tmp_path / "one")
