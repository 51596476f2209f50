"""Building blocks of the LLaMA-style decoder: RMSNorm and the (gated) feed-forward network."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Activation = Literal["swiglu", "geglu", "gelu"]
ACTIVATIONS = ("swiglu", "geglu", "gelu")


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``y = w * x / sqrt(mean(x^2) + eps)`` (Zhang & Sennrich 2019, arXiv:1910.07467).

    No mean subtraction and no bias, unlike LayerNorm. Computed in fp32 and cast back, as HF does.
    """
    dtype = x.dtype
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + eps)
    return weight * x32.to(dtype)


class RMSNorm(nn.Module):
    """Thin wrapper over :func:`rms_norm` with a learned gain initialised to 1."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


class FeedForward(nn.Module):
    """Position-wise MLP. Gated variants (Shazeer 2020, arXiv:2002.05202):

    - swiglu: ``down(silu(gate(x)) * up(x))`` (LLaMA; HF ``hidden_act="silu"``)
    - geglu:  ``down(gelu(gate(x)) * up(x))`` (HF ``hidden_act="gelu"``)
    - gelu:   ``down(gelu(up(x)))`` (GPT-2 style, no gate)
    """

    def __init__(self, d_model: int, d_ff: int, activation: Activation = "swiglu", bias: bool = False) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        self.activation = activation
        if activation != "gelu":
            self.gate_proj = nn.Linear(d_model, d_ff, bias=bias)
        self.up_proj = nn.Linear(d_model, d_ff, bias=bias)
        self.down_proj = nn.Linear(d_ff, d_model, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.activation == "swiglu":
            return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        if self.activation == "geglu":
            return self.down_proj(F.gelu(self.gate_proj(x)) * self.up_proj(x))
        return self.down_proj(F.gelu(self.up_proj(x)))
