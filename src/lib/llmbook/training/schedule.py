"""Learning-rate schedules as pure functions of the step: warmup + cosine, warmup-stable-decay.

Both return a *multiplier* of the peak learning rate (what ``torch.optim.lr_scheduler.LambdaLR``
calls ``lr_lambda``), so the peak lives in the optimizer's param groups.

- Warmup + cosine (Loshchilov & Hutter 2017, SGDR, arXiv:1608.03983; GPT-3/LLaMA use it)::

      m(t) = t / W                                              t < W
      m(t) = r + (1 - r) * 0.5 * (1 + cos(pi * (t - W) / (S - W)))   W <= t <= S
      m(t) = r                                                  t > S

  with W warmup steps, S total steps, r = min_lr_ratio. Equals
  ``transformers.get_cosine_with_min_lr_schedule_with_warmup`` (and, with r = 0,
  ``get_cosine_schedule_with_warmup``).

- Warmup-stable-decay (WSD; Hu et al. 2024, MiniCPM, arXiv:2404.06395): linear warmup for W
  steps, constant 1 for the stable phase, then a short decay of D steps to r (linear, cosine or
  ``1-sqrt``). Ratio ``1:8:1`` = 10% warmup, 80% stable, 10% decay. Because the stable phase
  is flat, a run can be extended from any stable checkpoint and decayed later.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

ScheduleKind = Literal["cosine", "wsd", "constant"]
SCHEDULES = ("cosine", "wsd", "constant")
DecayShape = Literal["linear", "cosine", "1-sqrt"]
DECAY_SHAPES = ("linear", "cosine", "1-sqrt")


def cosine_with_warmup(step: int, *, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0) -> float:
    """Multiplier of the peak LR at ``step`` for linear warmup then half-cosine decay to ``min_lr_ratio``."""
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    factor = 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    return max(0.0, factor * (1.0 - min_lr_ratio) + min_lr_ratio)


def wsd(
    step: int,
    *,
    warmup_steps: int,
    stable_steps: int,
    decay_steps: int,
    min_lr_ratio: float = 0.0,
    decay_shape: DecayShape = "linear",
) -> float:
    """Multiplier of the peak LR at ``step`` for warmup-stable-decay."""
    if decay_shape not in DECAY_SHAPES:
        raise ValueError(f"decay_shape must be one of {DECAY_SHAPES}, got {decay_shape!r}")
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    if step < warmup_steps + stable_steps:
        return 1.0
    progress = min(1.0, (step - warmup_steps - stable_steps) / max(1, decay_steps))
    if decay_shape == "linear":
        factor = 1.0 - progress
    elif decay_shape == "cosine":
        factor = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        factor = 1.0 - math.sqrt(progress)
    return factor * (1.0 - min_lr_ratio) + min_lr_ratio


def wsd_phases(total_steps: int, ratio: tuple[int, int, int] = (1, 8, 1)) -> tuple[int, int, int]:
    """Split ``total_steps`` into (warmup, stable, decay) in the given ratio; rounding goes to stable."""
    if total_steps < 1 or any(r < 0 for r in ratio) or sum(ratio) == 0:
        raise ValueError(f"total_steps must be >= 1 and ratio non-negative, got {total_steps}, {ratio}")
    warmup = total_steps * ratio[0] // sum(ratio)
    decay = total_steps * ratio[2] // sum(ratio)
    return warmup, total_steps - warmup - decay, decay


@dataclass(kw_only=True)
class ScheduleConfig:
    """Which schedule and its shape; the peak LR is the optimizer's."""

    kind: ScheduleKind = "cosine"  # "cosine", "wsd" or "constant"
    total_steps: int = 1000  # optimizer steps in the whole run
    warmup_steps: int = 100  # linear ramp from 0 (cosine; WSD uses wsd_ratio instead when None)
    min_lr_ratio: float = 0.1  # final LR as a fraction of the peak (LLaMA: 0.1)
    wsd_ratio: tuple[int, int, int] = (1, 8, 1)  # warmup : stable : decay for kind="wsd"
    decay_shape: DecayShape = "linear"  # WSD's decay curve

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise ValueError(f"kind must be one of {SCHEDULES}, got {self.kind!r}")
        if self.total_steps < 1 or not 0 <= self.warmup_steps <= self.total_steps:
            raise ValueError(
                "need total_steps >= 1 and 0 <= warmup_steps <= total_steps, "
                f"got {self.total_steps}, {self.warmup_steps}"
            )
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")


def lr_multiplier(cfg: ScheduleConfig, step: int) -> float:
    """The multiplier of ``cfg``'s schedule at ``step`` (0-based: the LR used by optimizer step ``step + 1``)."""
    if cfg.kind == "constant":
        return 1.0
    if cfg.kind == "cosine":
        return cosine_with_warmup(
            step, warmup_steps=cfg.warmup_steps, total_steps=cfg.total_steps, min_lr_ratio=cfg.min_lr_ratio
        )
    w, s, d = wsd_phases(cfg.total_steps, cfg.wsd_ratio)
    return wsd(
        step, warmup_steps=w, stable_steps=s, decay_steps=d, min_lr_ratio=cfg.min_lr_ratio, decay_shape=cfg.decay_shape
    )


def set_lr(optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, step: int) -> float:
    """Set every group's ``lr = initial_lr * multiplier(step)``; returns the first group's LR.

    Stateless: the step is the only state, so resuming needs nothing but the step counter.
    ``initial_lr`` is stored in each group the first time (as torch's schedulers do).
    """
    mult = lr_multiplier(cfg, step)
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
        group["lr"] = group["initial_lr"] * mult
    return optimizer.param_groups[0]["lr"]
