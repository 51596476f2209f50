"""AdamW written out, parameter groups without weight decay, and global-norm gradient clipping.

AdamW (Loshchilov & Hutter 2019, arXiv:1711.05101; Adam: Kingma & Ba 2015, arXiv:1412.6980),
for each parameter ``p`` with gradient ``g`` at step ``t = 1, 2, ...``::

    p   <- p - lr * wd * p                      decoupled weight decay (not added to g)
    m   <- beta1 * m + (1 - beta1) * g          first moment
    v   <- beta2 * v + (1 - beta2) * g^2        second moment
    m^  =  m / (1 - beta1^t)                    bias corrections (m, v start at 0)
    v^  =  v / (1 - beta2^t)
    p   <- p - lr * m^ / (sqrt(v^) + eps)

The order of floating-point operations follows ``torch.optim.AdamW``'s single-tensor path so
the two agree to rounding (tests/test_training_optim.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn


@torch.no_grad()
def adamw_update(
    param: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    step: int,
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
) -> None:
    """One AdamW update of ``param`` in place (``exp_avg``/``exp_avg_sq`` updated in place too)."""
    param.mul_(1.0 - lr * weight_decay)  # decoupled decay: shrink p, independent of the gradient
    exp_avg.lerp_(grad, 1.0 - beta1)  # m = beta1 m + (1 - beta1) g
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)  # v = beta2 v + (1 - beta2) g^2
    bias_correction1 = 1.0 - beta1**step
    bias_correction2 = 1.0 - beta2**step
    step_size = lr / bias_correction1
    denom = (exp_avg_sq.sqrt() / math.sqrt(bias_correction2)).add_(eps)  # sqrt(v^) + eps
    param.addcdiv_(exp_avg, denom, value=-step_size)


class AdamW(torch.optim.Optimizer):
    """AdamW with the update of :func:`adamw_update`; per-parameter state ``step, exp_avg, exp_avg_sq``.

    ``torch.optim.Optimizer`` is used only for the bookkeeping (param groups, ``zero_grad``,
    ``state_dict``); the arithmetic is in :func:`adamw_update`. State names match
    ``torch.optim.AdamW`` so checkpoints of either load into the other.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
    ) -> None:
        if lr < 0:
            raise ValueError(f"lr must be >= 0, got {lr}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"betas must each be in [0, 1), got {betas}")
        if eps < 0 or weight_decay < 0:
            raise ValueError(f"eps and weight_decay must be >= 0, got eps={eps}, weight_decay={weight_decay}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise TypeError("AdamW does not support sparse gradients")
                state = self.state[p]
                if not state:  # lazy init, as torch does: step counter as a tensor, moments at 0
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                adamw_update(
                    p,
                    p.grad,
                    state["exp_avg"],
                    state["exp_avg_sq"],
                    int(state["step"].item()),
                    lr=group["lr"],
                    beta1=beta1,
                    beta2=beta2,
                    eps=group["eps"],
                    weight_decay=group["weight_decay"],
                )
        return loss


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: matrices (embeddings, linear weights) decay; vectors (norm gains, biases) do not.

    Decaying a norm gain or a bias pulls it toward 0, which is not a sensible prior for them
    (the GPT-2/nanoGPT/LLaMA convention: decay only parameters with ``ndim >= 2``).
    Tied weights appear once.
    """
    decay, no_decay, seen = [], [], set()
    for _, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (decay if p.ndim >= 2 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def global_grad_norm(params: Iterable[torch.Tensor]) -> torch.Tensor:
    """``||g||_2`` over all gradients concatenated: ``sqrt(sum_p ||g_p||^2)`` (fp32)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    norms = torch.stack([torch.linalg.vector_norm(g.detach(), 2.0, dtype=torch.float32) for g in grads])
    return torch.linalg.vector_norm(norms, 2.0)


@torch.no_grad()
def clip_grad_norm(params: Iterable[torch.Tensor], max_norm: float, eps: float = 1e-6) -> torch.Tensor:
    """Scale all gradients by ``min(1, max_norm / (||g|| + eps))``; returns the norm before clipping.

    Global-norm clipping (Pascanu et al. 2013, arXiv:1211.5063), the same rule as
    ``torch.nn.utils.clip_grad_norm_`` (which also adds ``1e-6``).
    """
    if max_norm <= 0:
        raise ValueError(f"max_norm must be > 0, got {max_norm}")
    params = [p for p in params if p.grad is not None]
    total = global_grad_norm(params)
    coef = torch.clamp(max_norm / (total + eps), max=1.0)
    for p in params:
        p.grad.mul_(coef.to(p.grad.dtype))
    return total
