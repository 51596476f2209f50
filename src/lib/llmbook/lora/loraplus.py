"""LoRA+ (Hayou et al., arXiv 2402.12354): train B with a learning rate ``ratio`` times A's.

With A and B on one learning rate, B (which starts at zero and multiplies A's output) learns
too slowly as the width grows; the paper's analysis gives η_B = λ η_A with λ ≈ 16 as a good default.
The groups equal ``peft.optimizers.create_loraplus_optimizer``'s: A at ``lr``; B and every trainable
vector (DoRA's magnitude, VeRA's scales) at ``lr * ratio``.
"""

from __future__ import annotations

from typing import Any

from torch import nn


def loraplus_param_groups(model: nn.Module, *, lr: float, ratio: float = 16.0,
                          weight_decay: float = 0.0) -> list[dict[str, Any]]:
    """Parameter groups for any torch optimizer (e.g. ``torch.optim.AdamW(groups)``)."""
    if ratio < 1:
        raise ValueError(f"LoRA+ ratio {ratio} must be >= 1: B learns at lr * ratio, faster than A")
    slow, fast = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        (fast if name.endswith("lora_B") or parameter.ndim == 1 else slow).append(parameter)
    return [{"params": slow, "lr": lr, "weight_decay": weight_decay},
            {"params": fast, "lr": lr * ratio, "weight_decay": weight_decay}]
