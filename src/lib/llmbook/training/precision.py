"""Mixed precision: autocast contexts and a dynamic loss scaler written out.

- bf16 (GPU default): same exponent range as fp32, so no loss scaling; matmuls run in bf16
  under ``torch.autocast``, master weights and optimizer states stay fp32.
- fp16: 5 exponent bits, so small gradients underflow to 0. Multiply the loss by a scale S
  before ``backward`` and divide the gradients by S before the step (Micikevicius et al. 2018,
  arXiv:1710.03740). *Dynamic* scaling: if any gradient is inf/nan, skip the step and halve S;
  after ``growth_interval`` clean steps in a row, double S. This is ``torch.amp.GradScaler``'s
  update rule (tests/test_training_loop.py replays a scripted overflow sequence through both).
- fp32 on CPU: CPU bf16 autocast is correct but slow here (~15x), so the CPU path is fp32.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Literal

import torch

Precision = Literal["fp32", "bf16", "fp16"]
PRECISIONS = ("fp32", "bf16", "fp16")


def default_precision(device: str | torch.device) -> Precision:
    """bf16 on CUDA devices that support it, fp16 on older CUDA, fp32 elsewhere."""
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def autocast(device: str | torch.device, precision: Precision) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for bf16/fp16, a no-op context for fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


@dataclass(kw_only=True)
class DynamicLossScaler:
    """Loss scaling for fp16 with GradScaler's defaults and update rule.

    Use: ``scaler.scale(loss).backward()``; ``found_inf = scaler.unscale_(params)``;
    ``if not found_inf: optimizer.step()``; ``scaler.update(found_inf)``.
    """

    scale_value: float = 2.0**16  # S, the current loss multiplier
    growth_factor: float = 2.0  # S *= growth_factor after growth_interval clean steps
    backoff_factor: float = 0.5  # S *= backoff_factor after an overflow
    growth_interval: int = 2000  # clean steps in a row before growing
    growth_tracker: int = 0  # clean steps since the last change

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        return loss * self.scale_value

    @torch.no_grad()
    def unscale_(self, params: list[torch.Tensor]) -> bool:
        """Divide gradients by S in place; return True if any is inf or nan (then skip the step)."""
        found_inf = False
        inv = 1.0 / self.scale_value
        for p in params:
            if p.grad is None:
                continue
            p.grad.mul_(inv)
            found_inf = found_inf or not bool(torch.isfinite(p.grad).all())
        return found_inf

    def update(self, found_inf: bool) -> float:
        """Back off on overflow, grow after ``growth_interval`` clean steps; returns the new S."""
        if found_inf:
            self.scale_value *= self.backoff_factor
            self.growth_tracker = 0
        else:
            self.growth_tracker += 1
            if self.growth_tracker == self.growth_interval:
                self.scale_value *= self.growth_factor
                self.growth_tracker = 0
        return self.scale_value

    def state_dict(self) -> dict[str, float | int]:
        return {"scale_value": self.scale_value, "growth_tracker": self.growth_tracker}

    def load_state_dict(self, state: dict[str, float | int]) -> None:
        self.scale_value = float(state["scale_value"])
        self.growth_tracker = int(state["growth_tracker"])
