"""Two processes over gloo train exactly like one: DDP through accelerate, ZeRO-2/3 through DeepSpeed.

The ranks start with ``torch.multiprocessing`` and form the gloo group themselves, which is also how
:class:`DataParallel` is used without a launcher; each rank then does what ``python -m
llmbook.training.launch`` does under ``torchrun`` (:func:`run_rank`). Starting two processes costs more
than any one run, so two jobs hold every run: :func:`caller_group_rank` (the DDP checks, the MoE run,
every engine's run) and :func:`second_job_rank` (a stale rank's refusals, the ZeRO runs resumed).
``launch`` itself (torchrun) is tested by :func:`test_failed_launch_reports_the_error` and, on success,
by the pretraining chapter (tests/test_chapter_pretraining.py).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import re
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from llmbook.model import DecoderLM, ModelConfig, MoEConfig, MoEFeedForward, route
from llmbook.training import LoaderConfig, ScheduleConfig, TrainConfig, Trainer, accumulate_gradients
from llmbook.training.launch import RunSpec, launch, make_parallel, model_config, train_config, train_run
from llmbook.training.parallel import DataParallel, SingleProcess, deepspeed_config

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


ENGINES = ("ddp", "zero1", "zero2", "zero3")
RESUMED = ("ddp", "zero2", "zero3")  # ZeRO-1 saves like ZeRO-2: not repeated


def write_engine_specs(out: Path) -> None:
    """``out/<engine>.spec.json``: the run of :func:`make_spec` on each engine, the resumed engines
    checkpointing at steps 4 and 8 (which does not change their steps); ``out/<engine>-resumed.spec.json``:
    a new job continuing that run from its step-4 checkpoint. Written once, before any rank reads the tokens."""
    for engine in ENGINES:
        spec = make_spec(out, engine)
        if engine in RESUMED:
            spec = dataclasses.replace(spec, checkpoint_every=STEPS // 2, checkpoint_dir=str(out / engine / "ckpt"))
            step4 = out / engine / "ckpt" / f"step-{STEPS // 2:06d}"
            resume = dataclasses.replace(spec, checkpoint_every=0, resume_from=str(step4))
            resume.save(out / f"{engine}-resumed.spec.json")
        spec.save(out / f"{engine}.spec.json")


def spec_of(out: Path, name: str) -> RunSpec:
    return RunSpec.load(out / f"{name}.spec.json")


def as_launched(rank: int, world: int) -> None:
    """The variables torchrun sets, which :func:`make_parallel` reads for the ZeRO engines' batch split."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))


def run_rank(out: Path, name: str) -> None:
    """What ``python -m llmbook.training.launch`` does on one rank, in the caller's group: train the spec
    ``name`` (:func:`write_engine_specs`) on its engine; rank 0 saves the history (``name.history.json``)."""
    spec = spec_of(out, name)
    parallel = make_parallel(spec)
    history = train_run(spec, parallel)
    parallel.barrier()
    if parallel.rank == 0:
        (out / f"{name}.history.json").write_text(json.dumps(history))
    parallel.close()


@pytest.fixture(scope="module")
def single_run(caller_group: Path) -> list[dict[str, float]]:
    """The engines' run in this process, on the whole batch (``spec.engine`` is ignored without an engine)."""
    return train_run(spec_of(caller_group, "ddp"))


@pytest.fixture(scope="module")
def resumed(caller_group: Path) -> Path:
    """The runs of :func:`caller_group_rank`, resumed from step 4 (the directory of their histories).

    The ZeRO runs resume in a new job, :func:`second_job_rank`, which also runs the refusal checks of a stale
    rank; the DDP run resumed in its own job (:func:`caller_group_rank`). A new DDP job resuming through
    ``launch`` (torchrun and the library's worker) is the pretraining chapter's (tests/test_chapter_pretraining.py).
    """
    spawn_ranks(second_job_rank, str(caller_group), timeout_s=600.0)
    return caller_group


@pytest.mark.parametrize("engine", ENGINES)
def test_two_processes_match_one_and_resume_exactly(
    caller_group: Path, resumed: Path, single_run: list[dict[str, float]], engine: str
) -> None:
    """Two ranks (half the batch each) train like one process; a run resumed from its step-4 checkpoint
    repeats steps 5-8 to the bit. Under ZeRO each rank writes and reads its own shard (DeepSpeed's files),
    the rest is the Trainer's."""
    single = single_run
    double = json.loads((caller_group / f"{engine}.history.json").read_text())
    assert len(double) == STEPS
    assert single[-1]["loss"] < single[0]["loss"] - 0.5, "the run must learn, or equal curves prove little"
    loss_diff = max(abs(a["loss"] - b["loss"]) for a, b in zip(single, double))
    norm_diff = max(abs(a["grad_norm"] - b["grad_norm"]) for a, b in zip(single, double))
    assert loss_diff < 1e-5, f"{engine}: max_abs_diff of the loss curves = {loss_diff}"
    assert norm_diff < 1e-4, f"{engine}: max_abs_diff of the gradient norms = {norm_diff}"
    assert double[0]["tokens"] == single[0]["tokens"]  # tokens count both ranks
    if engine not in RESUMED:
        return
    spec = spec_of(caller_group, f"{engine}-resumed")
    step4 = Path(spec.resume_from)
    files = {p.name for p in step4.iterdir()}
    assert {"trainer_state.json", "rng.safetensors"} <= files
    assert ("model.safetensors" in files) == (engine == "ddp"), files  # ZeRO: the engine's shards instead
    again = json.loads((resumed / f"{engine}-resumed.history.json").read_text())
    assert [r["loss"] for r in again] == [r["loss"] for r in double[STEPS // 2:]], (double, again)
    assert [r["step"] for r in again] == [r["step"] for r in double[STEPS // 2:]]
    if engine == "zero2":  # shards of 2 ranks cannot be read by 1: one clear message, before any step
        # in this process (a one-process launch would only add ~15 s of start-up): the engine a one-process
        # job gets differs from DeepSpeedZero only in its world size, and must refuse before reading a shard
        with pytest.raises(ValueError, match="ZeRO shards of 2 processes; resume it on 2, not 1"):
            train_run(spec, OneShardedProcess())


class OneShardedProcess(SingleProcess):
    """A ZeRO engine's view of a one-process job: state in shards, a world of 1; reading a shard is a failure."""

    shards_state = True

    def load_shards(self, path: Path) -> None:
        raise AssertionError(f"read the shards under {path} before checking the world size")


def spawn_ranks(worker: Callable[..., None], *args: Any, world: int = 2, timeout_s: float = 120.0) -> None:
    """Run ``worker(rank, world, port, *args)`` in ``world`` fresh processes; a rank's exception is raised here.

    This process holds the rendezvous store on 127.0.0.1 (port 0: the OS picks a free one); the
    workers form the gloo group on it themselves (:func:`join_group`), without a launcher.
    """
    store = torch.distributed.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    ranks = torch.multiprocessing.start_processes(
        worker, args=(world, store.port, *args), nprocs=world, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + timeout_s
    try:
        while not ranks.join(timeout=1.0):  # True once every rank exited cleanly; raises if one failed
            if time.monotonic() > deadline:
                raise TimeoutError(f"{world} ranks of {worker.__name__} did not finish in {timeout_s} s")
    finally:
        for process in ranks.processes:
            if process.is_alive():
                process.terminate()


def join_group(rank: int, world: int, port: int) -> None:
    """In a spawned worker: one thread, and the gloo group over the parent's store, on the loopback only."""
    torch.set_num_threads(1)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    timeout = datetime.timedelta(seconds=60)
    store = torch.distributed.TCPStore("127.0.0.1", port, is_master=False, timeout=timeout)
    torch.distributed.init_process_group("gloo", store=store, rank=rank, world_size=world, timeout=timeout)


def flat_parameters(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


class RecordsRouting:
    """Engine mixin: keeps the prepared model and every MoE router's logits, one tensor per forward call.

    The routing decisions are :func:`llmbook.model.route` of these logits, exactly what the model computed.
    """

    def prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[nn.Module, Any]:
        self.router_logits: list[torch.Tensor] = []
        for module in model.modules():
            if isinstance(module, MoEFeedForward):
                module.router.register_forward_hook(lambda _m, _x, out: self.router_logits.append(out.detach().clone()))
        self.model, optimizer = super().prepare(model, optimizer)
        return self.model, optimizer


class RecordingSingle(RecordsRouting, SingleProcess):
    pass


class RecordingDDP(RecordsRouting, DataParallel):
    pass


MOE = MoEConfig(n_experts=32, top_k=1, normalize_gates=False, aux_loss_coef=0.0)


def caller_group_rank(rank: int, world: int, port: int, ddp_spec: str, moe_spec: str, out_dir: str) -> None:
    """A rank in a group it created (no launcher): the DDP checks, the MoE run, then every engine's run (the
    DDP run also resumed), each saving what it saw.

    One start of two processes for all of them: starting them costs more than any one's work.
    """
    join_group(rank, world, port)
    ddp_checks(rank, ddp_spec, out_dir)
    moe_run(rank, moe_spec, out_dir)
    out = Path(out_dir)
    as_launched(rank, world)
    for engine in ENGINES:  # each engine's run of test_two_processes_match_one_and_resume_exactly
        run_rank(out, engine)
    run_rank(out, "ddp-resumed")  # a new engine and Trainer, in this job
    torch.distributed.destroy_process_group()  # still there: the engines' close() leaves the caller's group alone


@pytest.fixture(scope="module")
def caller_group(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The directory holding the specs (DDP's with bucket_cap_mb=1.5) and what each rank of
    :func:`caller_group_rank` saved."""
    out = tmp_path_factory.mktemp("caller_group")
    ddp_spec = dataclasses.replace(make_spec(out, "ddp"), bucket_cap_mb=1.5).save(out / "ddp.json")
    moe_spec = make_spec(out, "ddp", moe=MOE).save(out / "moe.json")
    write_engine_specs(out)
    spawn_ranks(caller_group_rank, str(ddp_spec), str(moe_spec), str(out), timeout_s=600.0)
    return out


def moe_run(rank: int, spec_path: str, out_dir: str) -> None:
    """A rank of the MoE run: trains the spec with DataParallel in the caller's group, saves what it saw."""
    engine = RecordingDDP(cpu=True)
    history = train_run(RunSpec.load(spec_path), engine)
    params = flat_parameters(engine.unwrap(engine.model))
    seen = {"world_size": engine.world_size, "history": history, "logits": engine.router_logits, "params": params}
    torch.save(seen, f"{out_dir}/moe_rank{rank}.pt")
    engine.close()


def test_two_processes_match_one_moe(caller_group: Path) -> None:
    """DDP with a top-1 MoE matches one process exactly until a routing decision differs, and loosely after.

    32 experts and 64 tokens per rank and forward: some expert gets no token, and DDP must still see a
    gradient for it. Top-1 routing is discontinuous: when a token's two best experts are a rounding
    error apart, the rank (half the batch, another summation order) may pick the other one. The test
    finds the first forward call where any decision differs and reports it; before it every logit,
    loss and gradient norm must agree to rounding. Switch gates (raw p): renormalised top-1 gates are
    all exactly 1, so the router would get a gradient of pure rounding noise (~1e-11) that AdamW
    scales up to full-size steps, and the routing would follow the rounding. No load-balancing loss:
    that is computed per rank's batch (as in real MoE training), not over the global batch.
    """
    spec = RunSpec.load(caller_group / "moe.json")
    single_engine = RecordingSingle("cpu")
    single = train_run(spec, single_engine)  # in this process, the whole batch
    ranks = [torch.load(caller_group / f"moe_rank{r}.pt") for r in range(2)]
    assert [r["world_size"] for r in ranks] == [2, 2], "the ranks trained alone"
    double = ranks[0]["history"]
    assert len(double) == STEPS
    assert single[-1]["loss"] < single[0]["loss"] - 0.5, "the run must learn, or equal curves prove little"
    # the gradients were all-reduced: both ranks end with the same weights, to the bit (alone, they would part)
    assert torch.equal(ranks[0]["params"], ranks[1]["params"]), "the ranks' weights differ: gradients not synchronised"

    calls = single_engine.router_logits  # per step: accum_steps micro-batches x n_layers routers
    per_step = len(calls) // STEPS
    assert len(calls) == STEPS * 2 * 2 and all(len(r["logits"]) == len(calls) for r in ranks)
    first_differing = len(calls)  # forward call index of the first differing routing decision
    logit_diff = 0.0  # over the calls up to and including that one
    idle_experts = 0
    for call, logits in enumerate(calls):
        halves = logits.chunk(2)  # rows (B, T) flatten row-major: rank r holds tokens [r N/2, (r+1) N/2)
        for half, rank in zip(halves, ranks):
            logit_diff = max(logit_diff, (half - rank["logits"][call]).abs().max().item())
            rank_experts = route(rank["logits"][call], 1, normalize=False)[1]
            idle_experts += MOE.n_experts - len(rank_experts.unique())
            if not torch.equal(route(half, 1, normalize=False)[1], rank_experts):
                first_differing = min(first_differing, call)
        if first_differing <= call:
            break
    exact_steps = first_differing // per_step  # steps before the one where routing first differs
    if exact_steps < STEPS:
        warnings.warn(f"moe: top-1 routing first differs at step {exact_steps + 1} (forward call {first_differing}); "
                      f"compared exactly through step {exact_steps}, loosely after", stacklevel=1)
    assert idle_experts > 0, "every expert got a token on every rank: the test no longer covers idle experts"
    # a decision can only flip at a near-tie: the router logits agree to rounding up to the flip
    assert logit_diff < 1e-4, f"moe: router logits differ by {logit_diff} (first differing call {first_differing})"
    loss_diff = max((abs(a["loss"] - b["loss"]) for a, b in zip(single[:exact_steps], double)), default=0.0)
    norm_diff = max((abs(a["grad_norm"] - b["grad_norm"]) for a, b in zip(single[:exact_steps], double)), default=0.0)
    assert loss_diff < 1e-5, f"moe: max_abs_diff of the losses in steps 1-{exact_steps} = {loss_diff}"
    assert norm_diff < 1e-4, f"moe: max_abs_diff of the gradient norms in steps 1-{exact_steps} = {norm_diff}"
    # loose after a flip: one token through another expert changes its output, and the curves part by ~1e-3
    late = max(abs(a["loss"] - b["loss"]) for a, b in zip(single, double))
    assert late < 2e-2, f"moe: max_abs_diff of the losses over all steps = {late} (exact through step {exact_steps})"


def ddp_checks(rank: int, spec_path: str, out_dir: str) -> None:
    """A rank in the caller's group: one DDP step on its own rows, then one without all-reduce, for contrast."""
    engine = make_parallel(RunSpec.load(spec_path))  # DataParallel with the spec's bucket size, joining the group
    model = tiny_model()
    model, optimizer = engine.prepare(model, torch.optim.SGD(model.parameters(), lr=0.5))
    batch = rank_batch(rank)

    def step(*, synchronise: bool) -> torch.Tensor:
        with engine.accumulating(model, last=synchronise):  # last=False: DDP's no_sync, this rank's gradient only
            engine.backward(model(**batch).loss)
        optimizer.step()
        optimizer.zero_grad()
        return flat_parameters(engine.unwrap(model))

    result = {"rank": engine.rank, "world_size": engine.world_size, "owns_group": engine.owns_process_group,
              "wrapped": type(model).__name__, "bucket_bytes": getattr(model, "bucket_bytes_cap", None)}
    result["synchronised"] = step(synchronise=True)
    result["alone"] = step(synchronise=False)
    other = tiny_model()
    default, _ = DataParallel(cpu=True).prepare(other, torch.optim.SGD(other.parameters()))
    result["default_bucket_bytes"] = getattr(default, "bucket_bytes_cap", None)
    torch.save(result, f"{out_dir}/ddp_rank{rank}.pt")
    engine.close()


def rank_batch(rank: int) -> dict[str, torch.Tensor]:
    x = torch.randint(0, 40, (2, 12), generator=torch.Generator().manual_seed(100 + rank))  # every rank its own rows
    return {"input_ids": x, "labels": x}


def test_data_parallel_joins_a_process_group_the_caller_created(caller_group: Path) -> None:
    """No launcher: the workers call init_process_group themselves; DataParallel must train on that group.

    It used to fall back to one process there (accelerate reads the ranks from the launcher's
    variables only): each rank then trained alone. The spec's ``bucket_cap_mb`` reaches DDP.
    """
    ranks = [torch.load(caller_group / f"ddp_rank{r}.pt") for r in range(2)]
    assert [(r["rank"], r["world_size"], r["owns_group"]) for r in ranks] == [(0, 2, False), (1, 2, False)]
    assert [r["wrapped"] for r in ranks] == ["DistributedDataParallel"] * 2
    assert [r["bucket_bytes"] for r in ranks] == [int(1.5 * 2**20)] * 2
    assert [r["default_bucket_bytes"] for r in ranks] == [25 * 2**20] * 2  # bucket_cap_mb=None: DDP's default
    # after the synchronised step both ranks hold the same weights: those of the averaged gradient
    assert torch.equal(ranks[0]["synchronised"], ranks[1]["synchronised"]), "gradients were not synchronised"
    model = tiny_model()
    sgd = torch.optim.SGD(model.parameters(), lr=0.5)
    for rank in range(2):
        (model(**rank_batch(rank)).loss / 2).backward()
    sgd.step()
    diff = (ranks[0]["synchronised"] - flat_parameters(model)).abs().max().item()
    assert diff < 1e-6, f"max_abs_diff to the step on the averaged gradient = {diff}"
    # the contrast: a step without the all-reduce leaves the ranks apart, so the check above can fail
    assert not torch.equal(ranks[0]["alone"], ranks[1]["alone"])


def second_job_rank(rank: int, world: int, port: int, out_dir: str) -> None:
    """A rank whose accelerate state predates the group: DataParallel must refuse it. Then, DeepSpeed (which
    never reads accelerate's state) resumes the ZeRO-2 and ZeRO-3 runs from their checkpoints in this new job.

    One start of two processes for both: starting them costs more than either's work.
    """
    from accelerate import PartialState

    PartialState(cpu=True)  # no group yet, no launcher variables: accelerate settles on one process for good
    join_group(rank, world, port)
    refusals = []
    os.environ["WORLD_SIZE"] = "3"  # a launcher variable that contradicts the group
    for _ in range(2):  # then without it
        try:
            DataParallel(cpu=True)
            refusals.append(None)
        except Exception as error:  # the test checks its type and message
            refusals.append(f"{type(error).__name__}: {error}")
        os.environ.pop("WORLD_SIZE", None)
    Path(out_dir, f"refusals_rank{rank}.json").write_text(json.dumps(refusals))
    out = Path(out_dir)
    as_launched(rank, world)
    run_rank(out, "zero2-resumed")
    run_rank(out, "zero3-resumed")
    torch.distributed.destroy_process_group()


def test_data_parallel_refuses_to_train_a_rank_alone(resumed: Path) -> None:
    for rank in range(2):
        refusals = json.loads((resumed / f"refusals_rank{rank}.json").read_text())
        assert len(refusals) == 2 and None not in refusals, refusals
        assert re.fullmatch(f"ValueError: WORLD_SIZE=3 in the environment, but this process is rank {rank} of a "
                            "process group of 2", refusals[0]), refusals[0]
        assert re.match("RuntimeError: accelerate runs 1 process.* the process group has 2: this rank would "
                        "train without synchronising", refusals[1]), refusals[1]


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
        cfg = TrainConfig(schedule=ScheduleConfig(total_steps=2, warmup_steps=1))
        trainer = Trainer(tiny_model(), loader, cfg, parallel=engine)
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
    run_values = cfg["train_micro_batch_size_per_gpu"], cfg["gradient_accumulation_steps"], cfg["gradient_clipping"]
    assert run_values == (4, 2, 1.0)
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
    ddp = dataclasses.replace(spec, engine="ddp", bucket_cap_mb=50.0)
    assert RunSpec.load(ddp.save(tmp_path / "ddp.json")).bucket_cap_mb == 50.0
    with pytest.raises(ValueError, match="bucket_cap_mb is a size > 0 for the engine 'ddp' only"):
        dataclasses.replace(spec, bucket_cap_mb=50.0)  # ZeRO: bucket sizes live in the DeepSpeed config
    with pytest.raises(ValueError, match="bucket_cap_mb is a size > 0"):
        dataclasses.replace(ddp, bucket_cap_mb=0)
    with pytest.raises(ValueError, match="bucket_cap_mb must be > 0"):
        DataParallel(bucket_cap_mb=-1)  # checked before accelerate is set up


