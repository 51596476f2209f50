"""Data parallelism on real engines: one training step, three ways to run it.

Data parallelism gives each of ``W`` processes (ranks) ``B / W`` rows of the global batch; after
the backward pass the gradients are averaged across ranks, so every rank takes the same
optimizer step a single process would take on the whole batch::

    g = (1 / W) * sum_r g_r        g_r = gradient of rank r's share of the loss

The loss of the step is a mean over all ``n`` target tokens of the global batch, so rank ``r``
scales its micro-batch losses by ``W * n_ri / n`` (:func:`llmbook.training.loop.accumulate_gradients`):
averaging then gives exactly ``sum_i (n_i / n) g_i``, the single-process gradient.

The engines here all answer the same five questions for :class:`llmbook.training.loop.Trainer`
(which ranks am I, how do I wrap the model, which rows are mine, how do I sum a number across
ranks, how do I run backward), so the training step is written once:

- :class:`SingleProcess` — no parallelism (the default).
- :class:`DataParallel` — PyTorch DDP through Hugging Face ``accelerate``: every rank keeps the
  full model and optimizer; gradients are all-reduced in buckets during backward (Li et al. 2020,
  arXiv:2006.15704). Launch with ``torchrun`` or ``accelerate launch``.
- :class:`DeepSpeedZero` — DeepSpeed's ZeRO (Rajbhandari et al. 2020, arXiv:1910.02054): stage 1
  shards the optimizer states across ranks, stage 2 also the gradients, stage 3 also the weights.
  The engine owns backward, clipping and the optimizer step.

On a CPU, collectives go over gloo. ``accelerate`` needs ``cpu=True`` to form a process group there
(:class:`DataParallel` passes it when no GPU is present), and ``accelerate launch --cpu`` starts a
single process whatever ``--num_processes`` says: use ``torchrun --nproc_per_node 2``.

A process group the caller created itself (``torch.multiprocessing.spawn`` and
``torch.distributed.init_process_group``, no launcher) is joined, and left to the caller to destroy.
DeepSpeed picks such a group up by itself; ``accelerate`` reads the ranks from the launcher's
environment only, so :class:`DataParallel` writes the group's ranks there first, and refuses to run
when ``accelerate`` still sees another number of processes than the group has: a rank must never
train alone in silence.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn

ZERO_CONFIGS = ("zero1", "zero2", "zero3")  # DeepSpeed JSON files shipped in llmbook/training/configs
SHARD_TAG = "shards"  # DeepSpeed's checkpoint sub-directory inside a Trainer checkpoint


class SingleProcess:
    """One process, no communication: the engine :class:`~llmbook.training.loop.Trainer` uses by default."""

    rank = 0
    world_size = 1
    owns_optimizer_step = False  # True when the engine clips and steps inside backward (DeepSpeed)
    shards_state = False  # True when each rank holds only part of the model / optimizer state (ZeRO)

    def __init__(self, device: str | torch.device | None = None) -> None:
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))

    def prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[nn.Module, Any]:
        """Wrap model and optimizer for the engine; returns the objects to train with."""
        return model, optimizer

    def unwrap(self, model: nn.Module) -> nn.Module:
        """The user's model inside whatever :meth:`prepare` (or ``torch.compile``) wrapped it in."""
        return getattr(model, "_orig_mod", model)

    def check_train_config(self, accum_steps: int, grad_clip: float | None) -> None:
        """Raise if the engine was set up for another accumulation or clipping than the run's."""

    def shard(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """This rank's rows of a global batch ``(B, T)``: rows ``[r B/W, (r+1) B/W)``."""
        b = batch["input_ids"].shape[0]
        if b % self.world_size:
            raise ValueError(f"batch size {b} must be divisible by the number of processes {self.world_size}")
        k = b // self.world_size
        return {name: t[self.rank * k : (self.rank + 1) * k] for name, t in batch.items()}

    def all_reduce_sum(self, value: float) -> float:
        """Sum of ``value`` over all ranks (every rank gets the result)."""
        return value

    def accumulating(self, model: nn.Module, *, last: bool) -> contextlib.AbstractContextManager:
        """Context for one micro-batch's forward and backward; ``last`` marks the step's final one."""
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def grad_norm(self) -> float:
        """Global gradient norm of the step, for engines that own the step."""
        raise NotImplementedError("only engines with owns_optimizer_step report the gradient norm")

    def barrier(self) -> None:
        """Wait until every rank gets here."""

    def close(self) -> None:
        """End the run on this rank (call it on every rank, last)."""


class _Distributed(SingleProcess):
    """Shared by the multi-process engines: a float all-reduce and a barrier over torch.distributed.

    Outside a launcher (no process group) they act as one process, so an engine also runs in a notebook.
    """

    owns_process_group = True  # False when the caller created the group: close() then leaves it to the caller

    def all_reduce_sum(self, value: float) -> float:
        if not torch.distributed.is_initialized():
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t)
        return float(t)

    def barrier(self) -> None:
        if torch.distributed.is_initialized():
            torch.distributed.barrier()

    def close(self) -> None:
        # every rank waits, then tears its connections down: a rank that exits while a peer's gloo
        # connection is still open can make that peer abort (gloo::IoException "Connection closed by peer")
        if torch.distributed.is_initialized():
            torch.distributed.barrier()
            if self.owns_process_group:
                torch.distributed.destroy_process_group()


def _export_process_group(*, cpu: bool) -> dict[str, str]:
    """Write the caller's initialised process group into the variables a launcher (``torchrun``) sets.

    ``accelerate`` takes the ranks from ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``, never from the
    group itself: without them it runs every rank as a single process. Variables already set must
    agree with the group. ``LOCAL_RANK`` is the rank on a CPU and the current CUDA device on GPUs
    (call ``torch.cuda.set_device`` first, as for any NCCL job); ``OMP_NUM_THREADS`` keeps this
    process's thread count, which ``accelerate`` would otherwise reset on a CPU. Returns what it set.
    """
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    if cpu and torch.distributed.get_backend() == "nccl":
        raise ValueError("the process group uses NCCL, which cannot reduce CPU tensors: create it with gloo "
                         "or run DataParallel on GPUs (cpu=False)")
    for name, value in (("RANK", rank), ("WORLD_SIZE", world)):
        if name in os.environ and int(os.environ[name]) != value:
            raise ValueError(f"{name}={os.environ[name]} in the environment, but this process is rank {rank} "
                             f"of a process group of {world}")
    wanted = {
        "RANK": rank,
        "WORLD_SIZE": world,
        "LOCAL_RANK": rank if cpu else torch.cuda.current_device(),
        "LOCAL_WORLD_SIZE": world,  # read by accelerate on a CPU only (its multi-node check and thread count)
        "OMP_NUM_THREADS": torch.get_num_threads(),
    }
    exported = {name: str(value) for name, value in wanted.items() if name not in os.environ}
    os.environ.update(exported)
    return exported


class DataParallel(_Distributed):
    """PyTorch DistributedDataParallel set up by ``accelerate`` (gloo on CPU, NCCL on GPUs).

    During gradient accumulation, every micro-batch but the last runs under DDP's ``no_sync`` so
    gradients are all-reduced once per optimizer step, not once per micro-batch. DDP expects every
    parameter to get a gradient in every step (the book's mixture of experts runs idle experts on
    zero rows for that reason).

    Started by a launcher (``torchrun``, ``accelerate launch``), ``accelerate`` forms the process
    group; a group the caller already initialised is joined (its ranks are written where accelerate
    reads them). Either way every rank of the group trains in this engine, or the constructor raises.

    ``bucket_cap_mb`` is the size of DDP's gradient buckets, each all-reduced as soon as all its
    gradients exist during backward. ``None`` keeps DDP's default (25 MiB, and a 1 MiB first bucket).
    Smaller buckets start communicating earlier and overlap more of it with backward; larger ones
    make fewer, bigger all-reduces, which pays on slow links where each call's latency dominates.
    """

    def __init__(self, *, cpu: bool = False, bucket_cap_mb: float | None = None) -> None:
        try:
            from accelerate import Accelerator
            from accelerate.utils import DistributedDataParallelKwargs
        except ImportError as err:
            raise ImportError("DataParallel needs accelerate: pip install 'llmbook[distributed]'") from err
        if bucket_cap_mb is not None and not bucket_cap_mb > 0:
            raise ValueError(f"bucket_cap_mb must be > 0 or None (DDP's default), got {bucket_cap_mb}")
        cpu = cpu or not torch.cuda.is_available()
        self.owns_process_group = not torch.distributed.is_initialized()
        if not self.owns_process_group:
            _export_process_group(cpu=cpu)
        ddp = [] if bucket_cap_mb is None else [DistributedDataParallelKwargs(bucket_cap_mb=bucket_cap_mb)]
        self.accelerator = Accelerator(cpu=cpu, kwargs_handlers=ddp)
        self.rank, self.world_size = self.accelerator.process_index, self.accelerator.num_processes
        self.device = self.accelerator.device
        group = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        if self.world_size != group:  # e.g. accelerate's state was set up in this process before the group
            raise RuntimeError(f"accelerate runs {self.world_size} process(es) but the process group has {group}: "
                               "this rank would train without synchronising its gradients. Build DataParallel "
                               "once per process, after init_process_group, or launch with torchrun")

    def prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[nn.Module, Any]:
        return self.accelerator.prepare(model, optimizer)

    def unwrap(self, model: nn.Module) -> nn.Module:
        return super().unwrap(self.accelerator.unwrap_model(model))

    def accumulating(self, model: nn.Module, *, last: bool) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext() if last else self.accelerator.no_sync(model)

    def backward(self, loss: torch.Tensor) -> None:
        self.accelerator.backward(loss)


def deepspeed_config(
    config: str | Path | dict,
    *,
    micro_batch_per_rank: int,
    accum_steps: int,
    grad_clip: float | None,
    precision: str,
) -> dict[str, Any]:
    """A DeepSpeed config with its ``"auto"`` entries filled from the run.

    ``config`` is a dict, a JSON path, or one of :data:`ZERO_CONFIGS` (shipped with the library).
    The batch shape, clipping and precision always come from the run, so the JSON carries only
    what is DeepSpeed's own (ZeRO stage, bucket sizes, offload).
    """
    if isinstance(config, dict):
        cfg = copy.deepcopy(config)
    elif str(config) in ZERO_CONFIGS:
        cfg = json.loads(resources.files("llmbook.training").joinpath(f"configs/{config}.json").read_text())
    elif Path(config).is_file():
        cfg = json.loads(Path(config).read_text())
    else:
        raise ValueError(f"config must be a dict, a JSON file or one of {ZERO_CONFIGS}, got {config!r}")
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision with DeepSpeed must be 'fp32' or 'bf16' (fp16 loss scaling is DeepSpeed's own), "
                         f"got {precision!r}")
    run_values = {
        "train_micro_batch_size_per_gpu": micro_batch_per_rank,
        "gradient_accumulation_steps": accum_steps,
        "gradient_clipping": grad_clip or 0.0,
    }
    for key, value in run_values.items():
        if cfg.get(key, "auto") not in ("auto", value):
            raise ValueError(f"DeepSpeed config sets {key}={cfg[key]!r} but the run uses {value!r}; write \"auto\"")
        cfg[key] = value
    cfg.pop("train_batch_size", None)  # implied: micro-batch x accumulation x ranks
    cfg["bf16"] = {"enabled": precision == "bf16"}
    cfg["zero_allow_untested_optimizer"] = True  # we pass a torch optimizer, not DeepSpeed's fused Adam
    cfg.setdefault("steps_per_print", 10**9)
    return cfg


class DeepSpeedZero(_Distributed):
    """DeepSpeed ZeRO stage 1/2/3 around a torch optimizer (``deepspeed.initialize``).

    ``config`` is the output of :func:`deepspeed_config`. The engine scales nothing itself
    (``scale_wrt_gas=False``: the step already weights micro-batches by tokens), counts
    micro-batches, and at the last one of a step clips (``gradient_clipping`` of the config) and
    steps the sharded optimizer: its :meth:`backward` is backward *and* step. ``cpu=True`` keeps
    it on the CPU with gloo on a GPU host. Needs a launcher (``torchrun``) to set the ranks.
    """

    owns_optimizer_step = True
    shards_state = True  # model and optimizer states are saved by the engine, each rank its part

    def __init__(self, config: dict[str, Any], *, cpu: bool = False) -> None:
        use_gpu = torch.cuda.is_available() and not cpu
        if not use_gpu:
            os.environ["DS_ACCELERATOR"] = "cpu"  # read when deepspeed picks its accelerator, at import
        try:
            import deepspeed
        except ImportError as err:
            hint = "DeepSpeedZero needs deepspeed: DS_BUILD_OPS=0 pip install 'llmbook[distributed]'"
            raise ImportError(hint) from err
        self._deepspeed = deepspeed
        self.config = config
        self.owns_process_group = not torch.distributed.is_initialized()  # else DeepSpeed joins the caller's
        if not use_gpu:
            # On CPU, init_distributed JIT-compiles a shared-memory all-reduce (~80 s) that only DeepSpeed's
            # inference engine uses, never ZeRO training: mark it unavailable so nothing is built.
            deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        deepspeed.init_distributed(dist_backend="nccl" if use_gpu else "gloo")
        self.rank, self.world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
        self.device = torch.device("cpu")
        if use_gpu:  # one GPU per rank; modulo: some schedulers show each rank a single GPU
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
            torch.cuda.set_device(self.device)
        self.engine: Any = None

    def check_train_config(self, accum_steps: int, grad_clip: float | None) -> None:
        ds_accum, ds_clip = self.config["gradient_accumulation_steps"], self.config["gradient_clipping"]
        if (ds_accum, ds_clip) != (accum_steps, grad_clip or 0.0):
            raise ValueError(f"the DeepSpeed config has gradient_accumulation_steps={ds_accum}, "
                             f"gradient_clipping={ds_clip} but the run uses {accum_steps}, {grad_clip}: "
                             "build it with deepspeed_config(...) from the run")

    def prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[nn.Module, Any]:
        self.engine, optimizer, _, _ = self._deepspeed.initialize(model=model, optimizer=optimizer, config=self.config)
        return self.engine, optimizer

    def unwrap(self, model: nn.Module) -> nn.Module:
        return super().unwrap(model.module if hasattr(model, "module") else model)

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss, scale_wrt_gas=False)
        self.engine.step()  # a no-op except at the step's last micro-batch

    def grad_norm(self) -> float:
        norm = self.engine.get_global_grad_norm()
        return float("nan") if norm is None else float(norm)

    def save_shards(self, path: Path) -> None:
        """Every rank writes its model and optimizer shards (DeepSpeed's format; a collective call)."""
        self.engine.save_checkpoint(str(path), tag=SHARD_TAG)

    def load_shards(self, path: Path) -> None:
        """Every rank reads its shards back; needs the world size and ZeRO stage that wrote them."""
        loaded, _ = self.engine.load_checkpoint(str(path), tag=SHARD_TAG)
        if loaded is None:  # DeepSpeed only logs a warning
            raise FileNotFoundError(f"no DeepSpeed checkpoint under {path}")
