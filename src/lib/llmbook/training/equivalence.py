"""The book's training pieces run side by side with the libraries a user would otherwise pick.

Each function runs ours and the reference on the same inputs and returns the largest absolute
difference (or both traces, for the curves the chapter plots): AdamW against ``torch.optim.AdamW``,
global-norm clipping against ``torch.nn.utils.clip_grad_norm_``, gradient accumulation against one
big batch, the LR schedules against ``transformers``' schedulers, and the fp16 loss scaler against
``torch.amp.GradScaler``. The tests and the pretraining chapter call the same functions, so the
chapter shows on its real model what the tests check on tiny ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn
from transformers import get_cosine_with_min_lr_schedule_with_warmup, get_wsd_schedule

from llmbook.training.loop import accumulate_gradients
from llmbook.training.optim import AdamW, clip_grad_norm, param_groups
from llmbook.training.precision import DynamicLossScaler
from llmbook.training.schedule import ScheduleConfig, lr_multiplier, wsd_phases

Batch = dict[str, torch.Tensor]  # {"input_ids": (B, T), "labels": (B, T)}


def max_abs_diff(xs: Iterable[torch.Tensor], ys: Iterable[torch.Tensor]) -> float:
    """Largest |x - y| over pairs of tensors."""
    return max(float((x - y).detach().abs().max()) for x, y in zip(xs, ys))


def _backward(model: nn.Module, batch: Batch) -> None:
    model(batch["input_ids"], labels=batch["labels"]).loss.backward()


def adamw_vs_torch(
    make_model: Callable[[], nn.Module], batches: Sequence[Batch], *, lr: float, weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.95),
) -> float:
    """Weights after ``len(batches)`` steps of our AdamW and torch's, from two identical models."""
    ours, ref = make_model(), make_model()
    ours_opt = AdamW(param_groups(ours, weight_decay), lr=lr, betas=betas)
    ref_opt = torch.optim.AdamW(param_groups(ref, weight_decay), lr=lr, betas=betas, foreach=False)
    for batch in batches:
        for model, opt in ((ours, ours_opt), (ref, ref_opt)):
            opt.zero_grad()
            _backward(model, batch)
            opt.step()
    return max_abs_diff(ours.parameters(), ref.parameters())


def clipping_vs_torch(make_model: Callable[[], nn.Module], batch: Batch, max_norm: float) -> float:
    """Returned norm and clipped gradients of ours and ``clip_grad_norm_`` (choose a norm that bites)."""
    ours, ref = make_model(), make_model()
    _backward(ours, batch)
    _backward(ref, batch)
    norm_ours = float(clip_grad_norm(ours.parameters(), max_norm))
    norm_ref = float(torch.nn.utils.clip_grad_norm_(ref.parameters(), max_norm))
    grads = max_abs_diff([p.grad for p in ours.parameters()], [p.grad for p in ref.parameters()])
    return max(abs(norm_ours - norm_ref), grads)


def accumulation_vs_one_batch(make_model: Callable[[], nn.Module], batch: Batch) -> float:
    """Gradients of one batch against the same rows accumulated one micro-batch (row) at a time."""
    whole, accumulated = make_model(), make_model()
    accumulate_gradients(whole, [batch])
    rows = batch["input_ids"].shape[0]
    accumulate_gradients(accumulated, [{k: v[i : i + 1] for k, v in batch.items()} for i in range(rows)])
    return max_abs_diff([p.grad for p in whole.parameters()], [p.grad for p in accumulated.parameters()])


def schedule_vs_transformers(cfg: ScheduleConfig) -> tuple[np.ndarray, np.ndarray]:
    """LR multipliers of ours and of transformers' scheduler at every step of ``cfg`` (cosine or WSD).

    WSD's phases come from ``cfg.wsd_ratio`` (1:8:1 by default). transformers' WSD warms up from
    ``min_lr_ratio`` where ours starts at 0, so compare the two after the warm-up.
    """
    dummy = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    if cfg.kind == "cosine":
        ref = get_cosine_with_min_lr_schedule_with_warmup(dummy, cfg.warmup_steps, cfg.total_steps,
                                                          min_lr_rate=cfg.min_lr_ratio)
    elif cfg.kind == "wsd":
        warmup, stable, decay = wsd_phases(cfg.total_steps, cfg.wsd_ratio)
        ref = get_wsd_schedule(dummy, num_warmup_steps=warmup, num_stable_steps=stable, num_decay_steps=decay,
                               decay_type=cfg.decay_shape, min_lr_ratio=cfg.min_lr_ratio)
    else:
        raise ValueError(f"cfg.kind must be 'cosine' or 'wsd', got {cfg.kind!r}")
    steps = range(cfg.total_steps)
    return np.array([lr_multiplier(cfg, t) for t in steps]), np.array([ref.lr_lambdas[0](t) for t in steps])


def loss_scaler_vs_torch(
    overflows: Sequence[bool], *, init_scale: float = 2.0**16, growth_interval: int = 3
) -> list[dict[str, float]]:
    """The loss scale of ours and ``torch.amp.GradScaler`` step by step, with an inf gradient where ``overflows``.

    An overflow skips the step and halves the scale; ``growth_interval`` clean steps double it.
    """
    p_ours, p_ref = nn.Parameter(torch.ones(4)), nn.Parameter(torch.ones(4))
    ours = DynamicLossScaler(scale_value=init_scale, growth_interval=growth_interval)
    ref = torch.amp.GradScaler("cpu", init_scale=init_scale, growth_interval=growth_interval)
    opt_ours, opt_ref = torch.optim.SGD([p_ours], lr=0.01), torch.optim.SGD([p_ref], lr=0.01)
    trace = []
    for overflow in overflows:
        ours.scale(p_ours.sum()).backward()
        ref.scale(p_ref.sum()).backward()
        if overflow:  # an fp16 overflow: one gradient entry became inf
            p_ours.grad[0] = p_ref.grad[0] = float("inf")
        found = ours.unscale_([p_ours])
        if not found:
            opt_ours.step()
        ours.update(found)
        ref.step(opt_ref)
        ref.update()
        trace.append({"overflow": overflow, "ours": ours.scale_value, "torch.amp.GradScaler": ref.get_scale()})
        opt_ours.zero_grad()
        opt_ref.zero_grad()
    return trace
