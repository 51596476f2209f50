"""Launching one training run on N processes: a JSON run spec, the worker, and ``torchrun``.

Every rank reads the same :class:`RunSpec`, builds the same model from the same seed, reads the
same packed token file and keeps its rows of each batch; the engine named in the spec
(:mod:`llmbook.training.parallel`) does the communication. The training function,
:func:`train_run`, is the same for one process and for many::

    # CPU, two processes over gloo (what the tests and the chapter run)
    torchrun --standalone --nproc_per_node 2 -m llmbook.training.launch run.json
    # one node with 8 GPUs: NCCL, same file
    torchrun --standalone --nproc_per_node 8 -m llmbook.training.launch run.json
    accelerate launch --config_file src/lib/llmbook/training/configs/accelerate_multi_gpu.yaml \\
        -m llmbook.training.launch run.json

:func:`launch` does the first from Python and returns rank 0's per-step history.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llmbook.model import DecoderLM, ModelConfig, MoEConfig
from llmbook.positional import RopeConfig
from llmbook.training.data import LoaderConfig, PackedLoader
from llmbook.training.loop import TrainConfig, Trainer, check_checkpointing
from llmbook.training.parallel import ZERO_CONFIGS, DataParallel, DeepSpeedZero, SingleProcess, deepspeed_config
from llmbook.training.schedule import ScheduleConfig

ENGINES = ("single", "ddp", *ZERO_CONFIGS)


@dataclasses.dataclass(kw_only=True)
class RunSpec:
    """Everything a training process needs, as JSON: every rank reads the same file."""

    tokens: str  # .npy file of packed training tokens (memory-mapped by every rank)
    model: dict[str, Any]  # ModelConfig fields; rope / moe as nested dicts
    train: dict[str, Any]  # TrainConfig fields; schedule as a nested dict
    loader: dict[str, Any]  # LoaderConfig fields; batch_size is the GLOBAL micro-batch, split over ranks
    engine: str = "ddp"  # one of ENGINES
    deepspeed_config: str | None = None  # a DeepSpeed JSON replacing the shipped zeroN.json (zero engines only)
    bucket_cap_mb: float | None = None  # DDP gradient bucket size in MiB (engine "ddp" only); None: DDP's 25
    seed: int = 0  # model init; the loader has its own seed
    torch_threads: int = 1  # intra-op threads per process (ranks share the cores)
    device: str = "auto"  # "auto": GPUs where visible; "cpu": CPU and gloo even on a GPU host
    history_out: str | None = None  # rank 0 writes the per-step history here (JSON)
    stop_after: int | None = None  # stop at this step, before the schedule ends (an interrupted run)
    checkpoint_every: int = 0  # save checkpoint_dir/step-<step> every that many steps (0: never)
    checkpoint_dir: str | None = None
    resume_from: str | None = None  # a checkpoint directory to continue from (same engine and process count)

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {self.engine!r}")
        if self.deepspeed_config is not None and self.engine not in ZERO_CONFIGS:
            raise ValueError(f"deepspeed_config is read by the engines {ZERO_CONFIGS} only, not {self.engine!r}")
        if self.bucket_cap_mb is not None and (self.engine != "ddp" or not self.bucket_cap_mb > 0):
            raise ValueError(f"bucket_cap_mb is a size > 0 for the engine 'ddp' only (ZeRO's bucket sizes are in its "
                             f"DeepSpeed config), got {self.bucket_cap_mb} for {self.engine!r}")
        if self.device not in ("auto", "cpu"):
            raise ValueError(f"device must be 'auto' or 'cpu', got {self.device!r}")
        check_checkpointing(self.checkpoint_every, self.checkpoint_dir)  # before any process starts
        if self.stop_after is not None and self.stop_after < 1:
            raise ValueError(f"stop_after must be >= 1 or None, got {self.stop_after}")
        if self.torch_threads < 1:
            raise ValueError(f"torch_threads must be >= 1, got {self.torch_threads}")
        for name in ("model", "train", "loader"):  # hold what the JSON file will hold (tuples become lists)
            setattr(self, name, json.loads(json.dumps(getattr(self, name))))

    def save(self, path: str | Path) -> Path:
        Path(path).write_text(json.dumps(dataclasses.asdict(self), indent=1))
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> RunSpec:
        return cls(**json.loads(Path(path).read_text()))



def model_config(fields: dict[str, Any]) -> ModelConfig:
    """``ModelConfig`` from ``dataclasses.asdict`` output (nested configs rebuilt)."""
    fields = dict(fields)
    if isinstance(fields.get("rope"), dict):
        fields["rope"] = RopeConfig(**fields["rope"])
    if isinstance(fields.get("moe"), dict):
        fields["moe"] = MoEConfig(**fields["moe"])
    return ModelConfig(**fields)


def train_config(fields: dict[str, Any]) -> TrainConfig:
    """``TrainConfig`` from ``dataclasses.asdict`` output (JSON lists back to tuples)."""
    fields = dict(fields)
    schedule = dict(fields.pop("schedule", {}))
    if "wsd_ratio" in schedule:
        schedule["wsd_ratio"] = tuple(schedule["wsd_ratio"])
    if "betas" in fields:
        fields["betas"] = tuple(fields["betas"])
    return TrainConfig(**fields, schedule=ScheduleConfig(**schedule))


def one_process(spec: RunSpec) -> SingleProcess:
    """No parallelism, on ``spec.device``."""
    return SingleProcess("cpu" if spec.device == "cpu" else None)


def make_parallel(spec: RunSpec) -> SingleProcess:
    """The engine the spec names, set up for this process (reads torchrun's environment)."""
    cpu = spec.device == "cpu"
    if spec.engine == "single":
        return one_process(spec)
    if spec.engine == "ddp":
        return DataParallel(cpu=cpu, bucket_cap_mb=spec.bucket_cap_mb)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if spec.loader["batch_size"] % world:
        raise ValueError(f"loader batch_size {spec.loader['batch_size']} must be divisible by the {world} processes")
    train = train_config(spec.train)
    ds_cfg = deepspeed_config(
        spec.deepspeed_config or spec.engine,
        micro_batch_per_rank=spec.loader["batch_size"] // world,
        accum_steps=train.accum_steps,
        grad_clip=train.grad_clip,
        precision=train.precision,
    )
    stage = ds_cfg.get("zero_optimization", {}).get("stage")
    if stage != int(spec.engine[-1]):
        raise ValueError(f"engine {spec.engine!r} but the DeepSpeed config has ZeRO stage {stage}")
    return DeepSpeedZero(ds_cfg, cpu=cpu)


def train_run(
    spec: RunSpec, parallel: SingleProcess | None = None, *, progress: bool = False
) -> list[dict[str, float]]:
    """Build model, loader and trainer from ``spec`` and train; returns the per-step history.

    The same function runs in one process (``parallel`` None: one process on ``spec.device``,
    whatever ``spec.engine`` says) and in every rank of a launched job.
    """
    parallel = parallel or one_process(spec)
    torch.manual_seed(spec.seed)  # every rank starts from the same weights
    model = DecoderLM(model_config(spec.model)).to(parallel.device)
    loader = PackedLoader(np.load(spec.tokens, mmap_mode="r"), LoaderConfig(**spec.loader))
    trainer = Trainer(model, loader, train_config(spec.train), parallel=parallel)
    if spec.resume_from:
        trainer.load(spec.resume_from)
    trainer.run(
        spec.stop_after, progress=progress, checkpoint_every=spec.checkpoint_every, checkpoint_dir=spec.checkpoint_dir
    )
    return trainer.history


def main(argv: list[str] | None = None) -> None:
    """Worker entry point: ``torchrun ... -m llmbook.training.launch run.json``."""
    parser = argparse.ArgumentParser(description="Train one run spec on this process (launch with torchrun).")
    parser.add_argument("spec", help="RunSpec JSON file")
    args = parser.parse_args(argv)
    spec = RunSpec.load(args.spec)
    torch.set_num_threads(spec.torch_threads)
    parallel = make_parallel(spec)
    history = train_run(spec, parallel, progress=True)
    parallel.barrier()  # written only once every rank has finished: the file is the run's proof of completion
    if parallel.rank == 0 and spec.history_out:
        Path(spec.history_out).write_text(json.dumps(history))
    parallel.close()


def worker_failure(output: str) -> str:
    """The workers' own error in torchrun's output, not torchrun's summary of it."""
    lines = output.splitlines()
    exception = re.compile(r"^(\[rank\d+\]: )?[\w.]+(Error|Exception): ")
    errors = [line for line in lines if exception.match(line) and "ChildFailedError" not in line]
    if errors:
        return errors[-1]
    # a native crash: the C++ message and faulthandler's Python stack, which come before the summary
    fatal = [i for i, line in enumerate(lines) if re.search(r"terminate called|what\(\):|Fatal Python error", line)]
    start = fatal[0] if fatal else max(len(lines) - 25, 0)
    return "\n".join(lines[start:start + 40])


def launch(spec: RunSpec, nproc: int, workdir: str | Path, *, timeout_s: float = 900) -> list[dict[str, float]]:
    """Run ``spec`` on ``nproc`` local processes with ``torchrun``; returns rank 0's history.

    Writes ``run.json``, ``history.json`` and the job's output, ``launch.log``, into ``workdir``. A
    failed or timed-out job raises ``RuntimeError`` naming the workers' own exception. A job whose
    ranks all finished training but which then crashed while shutting down (gloo can abort a rank
    whose peer closed its connections first) returns its history with a warning.
    """
    if nproc < 1:
        raise ValueError(f"nproc must be >= 1, got {nproc}")
    if spec.engine == "single" and nproc > 1:
        raise ValueError(f"engine 'single' on {nproc} processes would train {nproc} separate copies; "
                         "use 'ddp' or a ZeRO engine")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    history = workdir / "history.json"
    history.unlink(missing_ok=True)  # a previous run's file must not pass for this one's
    spec = dataclasses.replace(spec, history_out=str(history))
    spec_path = spec.save(workdir / "run.json")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "llmbook.training.launch", str(spec_path)]
    # faulthandler: a worker killed by a signal (e.g. a C++ abort) still prints its Python stack
    env = {**os.environ, "OMP_NUM_THREADS": str(spec.torch_threads), "TQDM_DISABLE": "1", "PYTHONFAULTHANDLER": "1"}
    if spec.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # the engines are told cpu=True; this also keeps CUDA out of the workers
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.terminate()  # torchrun passes SIGTERM on to its workers, which a kill would orphan
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
        raise RuntimeError(f"{nproc}-process run (engine {spec.engine}) did not finish in {timeout_s} s") from None
    log = workdir / "launch.log"
    log.write_text(output)
    if proc.returncode != 0:
        what = (f"{nproc}-process run (engine {spec.engine}) failed with exit code {proc.returncode}: "
                f"{worker_failure(output)}")
        if not history.exists():
            raise RuntimeError(f"{what}\n(full output: {log})")
        warnings.warn(f"every rank finished training, then the job crashed while shutting down; the history is "
                      f"complete. {what}\n(full output: {log})", RuntimeWarning, stacklevel=2)
    return json.loads(history.read_text())


if __name__ == "__main__":
    main()
