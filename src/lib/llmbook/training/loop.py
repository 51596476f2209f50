"""The training step and loop: gradient accumulation, clipping, mixed precision, evaluation in bits per byte.

One optimizer step over ``k`` micro-batches (gradient accumulation)::

    g = sum_i  (n_i / n) * grad(mean loss of micro-batch i)      n_i target tokens in micro-batch i, n = sum n_i

which is exactly the gradient of the mean loss over the big batch (each target token has weight
1/n), so accumulating ``k`` micro-batches of ``B/k`` rows equals one batch of ``B`` rows up to
rounding. Then: unscale (fp16), clip the global norm, AdamW step, zero the gradients.

Evaluation reports the mean next-token loss in nats and *bits per byte*::

    bpb = loss_nats * n_tokens / (n_bytes * ln 2)

which, unlike per-token loss or perplexity, does not depend on the tokenizer, so models with
different vocabularies compare on the same text (used by e.g. Gao et al. 2020, The Pile, arXiv:2101.00027).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from llmbook.model.modes import eval_mode
from llmbook.progress import ProgressBar
from llmbook.training.checkpoint import load_checkpoint, read_state, save_checkpoint
from llmbook.training.optim import AdamW, clip_grad_norm, global_grad_norm, param_groups
from llmbook.training.parallel import SingleProcess
from llmbook.training.precision import PRECISIONS, DynamicLossScaler, Precision, autocast
from llmbook.training.schedule import ScheduleConfig, set_lr

SINGLE_PROCESS = SingleProcess()


def bits_per_byte(loss_nats: float, n_tokens: int, n_bytes: int) -> float:
    """``loss_nats * n_tokens / (n_bytes * ln 2)``: total code length of the text in bits over its bytes."""
    if n_bytes <= 0:
        raise ValueError(f"n_bytes must be > 0, got {n_bytes}")
    return loss_nats * n_tokens / (n_bytes * math.log(2))


def count_targets(labels: torch.Tensor, ignore_index: int = -100) -> int:
    """Number of scored positions: labels shift left by one, ``ignore_index`` skipped."""
    return int((labels[:, 1:] != ignore_index).sum())


def _forward_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    kwargs = {k: v for k, v in batch.items() if k in ("attention_mask", "position_ids")}
    return model(input_ids=batch["input_ids"], labels=batch["labels"], **kwargs).loss


def accumulate_gradients(
    model: nn.Module,
    micro_batches: list[dict[str, torch.Tensor]],
    *,
    precision: Precision = "fp32",
    scaler: DynamicLossScaler | None = None,
    parallel: SingleProcess = SINGLE_PROCESS,
) -> tuple[float, int]:
    """Backward over all micro-batches with token weights ``n_i / n``; returns ``(mean loss, n)``.

    ``n`` counts the target tokens of every rank. Under data parallelism each rank weights its
    micro-batches by ``W n_i / n``: the engine averages gradients over the ``W`` ranks, which
    leaves exactly the single-process gradient. Gradients are *added* to ``.grad`` (zero them
    before the first call of a step).
    """
    n_total = int(parallel.all_reduce_sum(sum(count_targets(b["labels"]) for b in micro_batches)))
    if n_total == 0:
        raise ValueError("micro_batches contain no scored tokens (all labels are -100)")
    device = next(model.parameters()).device
    loss_sum = 0.0  # this rank's sum over its target tokens
    for i, batch in enumerate(micro_batches):
        batch = {k: v.to(device) for k, v in batch.items()}
        n_i = count_targets(batch["labels"])
        with parallel.accumulating(model, last=i == len(micro_batches) - 1):
            with autocast(device, precision):
                loss = _forward_loss(model, batch)
            scaled = loss.float() * (parallel.world_size * n_i / n_total)
            parallel.backward(scaler.scale(scaled) if scaler is not None else scaled)
        if n_i:  # a micro-batch without scored tokens has a NaN mean loss (0 / 0) and weight 0
            loss_sum += float(loss.detach()) * n_i
    return parallel.all_reduce_sum(loss_sum) / n_total, n_total


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    micro_batches: list[dict[str, torch.Tensor]],
    *,
    grad_clip: float | None = 1.0,
    precision: Precision = "fp32",
    scaler: DynamicLossScaler | None = None,
    parallel: SingleProcess = SINGLE_PROCESS,
) -> dict[str, float]:
    """One optimizer step: accumulate, (unscale), clip, step, zero grads.

    ``micro_batches`` are this rank's. Returns ``loss`` (token-weighted mean over the micro-batches
    of every rank), ``grad_norm`` (before clipping), ``tokens`` (input tokens processed by all
    ranks) and ``skipped`` (1.0 if the gradients overflowed). An engine that owns the step
    (DeepSpeed) clips to its config's ``gradient_clipping`` (not ``grad_clip``) and steps inside its backward.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp16" and scaler is None:
        raise ValueError("precision='fp16' needs a DynamicLossScaler (scaler=...)")
    loss, _ = accumulate_gradients(model, micro_batches, precision=precision, scaler=scaler, parallel=parallel)
    if parallel.owns_optimizer_step:  # clipped to the engine's own setting, stepped, or skipped on overflow
        grad_norm = parallel.grad_norm()
        found_inf = not math.isfinite(grad_norm)
    else:
        params = [p for g in optimizer.param_groups for p in g["params"]]
        found_inf = scaler.unscale_(params) if scaler is not None else False
        if grad_clip is not None and not found_inf:
            grad_norm = float(clip_grad_norm(params, grad_clip))
        else:
            grad_norm = float(global_grad_norm(params))
        if not found_inf:
            optimizer.step()
        if scaler is not None:
            scaler.update(found_inf)
        optimizer.zero_grad(set_to_none=True)
    tokens = parallel.world_size * sum(b["input_ids"].numel() for b in micro_batches)
    return {"loss": loss, "grad_norm": grad_norm, "tokens": float(tokens), "skipped": float(found_inf)}


@dataclass
class EvalResult:
    """Mean next-token loss over ``n_tokens`` scored tokens (and bpb when the byte count is known)."""

    loss: float  # nats per token
    n_tokens: int  # scored tokens
    bpb: float | None = None  # bits per byte, if n_bytes was given

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable[dict[str, torch.Tensor]],
    *,
    n_bytes: int | None = None,
    precision: Precision = "fp32",
) -> EvalResult:
    """Token-weighted mean loss over ``batches``: ``sum_b n_b * loss_b / sum_b n_b`` (nats per token).

    ``n_b`` counts batch ``b``'s scored targets. :func:`llmbook.training.data.eval_windows` scores
    every token once; :func:`llmbook.training.data.disjoint_windows` scores each window from its own
    start (loss at a given context length). The model runs in eval mode and gets its mode back.
    """
    device = next(model.parameters()).device
    nll, n = 0.0, 0
    with eval_mode(model):
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            k = count_targets(batch["labels"])
            with autocast(device, precision):
                nll += float(_forward_loss(model, batch).float()) * k
            n += k
    if n == 0:
        raise ValueError("batches contain no scored tokens")
    loss = nll / n
    return EvalResult(loss=loss, n_tokens=n, bpb=bits_per_byte(loss, n, n_bytes) if n_bytes else None)


@dataclass(kw_only=True)
class TrainConfig:
    """Optimizer, schedule and step settings of a pretraining run."""

    lr: float = 3e-4  # peak learning rate
    betas: tuple[float, float] = (0.9, 0.95)  # AdamW moments (LLaMA: 0.9, 0.95)
    eps: float = 1e-8  # AdamW epsilon
    weight_decay: float = 0.1  # decoupled decay on matrices only (param_groups)
    grad_clip: float | None = 1.0  # global-norm clip; None = off
    accum_steps: int = 1  # micro-batches per optimizer step
    precision: Precision = "fp32"  # "fp32" (CPU), "bf16" (GPU), "fp16" (with dynamic loss scaling)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)  # LR shape; total_steps = run length

    def __post_init__(self) -> None:
        if self.accum_steps < 1:
            raise ValueError(f"accum_steps must be >= 1, got {self.accum_steps}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


class Trainer:
    """Model + AdamW + schedule + loader with a step counter; :meth:`save` / :meth:`load` resume exactly.

    ``history`` holds one dict per optimizer step: step, lr, loss, grad_norm, tokens, seconds,
    tokens_per_s. With a multi-process ``parallel`` engine every rank builds the same loader and
    keeps its own rows of each batch (:meth:`SingleProcess.shard`).
    """

    def __init__(
        self,
        model: nn.Module,
        loader: Iterator[dict[str, torch.Tensor]],
        cfg: TrainConfig,
        optimizer: torch.optim.Optimizer | None = None,
        parallel: SingleProcess = SINGLE_PROCESS,
    ) -> None:
        parallel.check_train_config(cfg.accum_steps, cfg.grad_clip)
        optimizer = optimizer or AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
        self.model, self.optimizer = parallel.prepare(model, optimizer)
        self.loader, self.cfg, self.parallel = loader, cfg, parallel
        self.scaler = DynamicLossScaler() if cfg.precision == "fp16" else None
        self.step = 0
        self.history: list[dict[str, float]] = []

    def train_step(self) -> dict[str, float]:
        self.model.train()
        lr = set_lr(self.optimizer, self.cfg.schedule, self.step)
        t0 = time.perf_counter()
        micro = [self.parallel.shard(next(self.loader)) for _ in range(self.cfg.accum_steps)]
        metrics = train_step(
            self.model,
            self.optimizer,
            micro,
            grad_clip=self.cfg.grad_clip,
            precision=self.cfg.precision,
            scaler=self.scaler,
            parallel=self.parallel,
        )
        seconds = time.perf_counter() - t0
        if not math.isfinite(metrics["loss"]):
            raise FloatingPointError(
                f"loss became {metrics['loss']} at step {self.step + 1} (lr {lr:.3g}); lower the learning rate"
            )
        self.step += 1
        row = {"step": float(self.step), "lr": lr, **metrics, "seconds": seconds,
               "tokens_per_s": metrics["tokens"] / seconds}
        self.history.append(row)
        return row

    def run(
        self,
        until_step: int | None = None,
        *,
        progress: bool = False,
        desc: str = "train",
        checkpoint_every: int = 0,
        checkpoint_dir: str | Path | None = None,
    ) -> list[dict[str, float]]:
        """Train until ``until_step`` (default: the schedule's total); returns the new history rows.

        ``checkpoint_every`` > 0 saves ``checkpoint_dir/step-<step>`` every that many steps.
        """
        until = self.cfg.schedule.total_steps if until_step is None else until_step
        check_checkpointing(checkpoint_every, checkpoint_dir)
        rows = []
        bar = None
        if progress and self.parallel.rank == 0:
            bar = ProgressBar(total=until, initial=self.step, desc=desc, unit="step")  # tqdm shows the ETA
        while self.step < until:
            row = self.train_step()
            rows.append(row)
            if bar is not None:
                bar.set_postfix(loss=f"{row['loss']:.3f}", tok_s=f"{row['tokens_per_s']:.0f}")
                bar.update(1)
            if checkpoint_every and self.step % checkpoint_every == 0:
                self.save(Path(checkpoint_dir) / f"step-{self.step:06d}")
        if bar is not None:
            bar.close()
        return rows

    def save(self, path: str | Path) -> Path:
        """Write a checkpoint (see :mod:`llmbook.training.checkpoint`); call it on every rank.

        Data-parallel ranks hold identical states, so rank 0 writes them; under ZeRO every rank
        also writes its own shard of the model and optimizer through the engine.
        """
        path = Path(path)
        sharded = self.parallel.shards_state
        if sharded:
            self.parallel.save_shards(path)
        if self.parallel.rank == 0:
            save_checkpoint(path, model=None if sharded else self.parallel.unwrap(self.model),
                            optimizer=None if sharded else self.optimizer, step=self.step, loader=self.loader,
                            scaler=self.scaler, extra={"world_size": self.parallel.world_size})
        self.parallel.barrier()
        return path

    def load(self, path: str | Path) -> dict[str, Any]:
        """Restore a checkpoint written by :meth:`save` (with the same engine and number of ranks)."""
        sharded = self.parallel.shards_state
        if sharded:
            saved_world = read_state(path)["extra"].get("world_size")
            if saved_world != self.parallel.world_size:  # DDP resumes on any count: ranks hold full copies
                raise ValueError(f"{path} holds ZeRO shards of {saved_world} processes; resume it on {saved_world}, "
                                 f"not {self.parallel.world_size}")
            self.parallel.load_shards(Path(path))
        state = load_checkpoint(path, model=None if sharded else self.parallel.unwrap(self.model),
                                optimizer=None if sharded else self.optimizer, loader=self.loader, scaler=self.scaler)
        self.step = int(state["step"])
        return state


def check_checkpointing(every: int, directory: str | Path | None) -> None:
    """``checkpoint_every`` is >= 0 and, when set, has a directory to write to."""
    if every < 0 or (every and not directory):
        raise ValueError(f"checkpoint_every must be >= 0 and needs a checkpoint_dir, got {every}, {directory!r}")


def train_on_batches(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    *,
    steps: int,
    lr: float,
    warmup: int | None = None,
    weight_decay: float = 0.1,
    grad_clip: float = 1.0,
    progress: bool = False,
    desc: str = "train",
) -> list[float]:
    """Train ``model`` on ``steps`` batches of ``(B, T)`` token windows; return the per-step losses.

    A :class:`Trainer` with the pretraining recipe, for ablations that compare models: AdamW (betas 0.9, 0.95, decay on
    matrices only), linear warm-up over ``warmup`` steps (default 10 %) then cosine decay to
    ``lr / 10``, global-norm clipping at ``grad_clip`` (0 = off). The model is left in eval mode.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    warmup = max(1, steps // 10) if warmup is None else warmup
    schedule = ScheduleConfig(kind="cosine", total_steps=steps, warmup_steps=warmup, min_lr_ratio=0.1)
    cfg = TrainConfig(lr=lr, weight_decay=weight_decay, grad_clip=grad_clip or None, schedule=schedule)
    loader = ({"input_ids": x, "labels": x} for x in batches)  # the model shifts labels itself
    rows = Trainer(model, loader, cfg).run(progress=progress, desc=desc)
    model.eval()
    return [row["loss"] for row in rows]
