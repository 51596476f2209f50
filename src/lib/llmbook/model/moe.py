"""Mixture-of-experts feed-forward: top-k softmax routing and the Switch load-balancing loss.

Each token's router logits ``z = W_r x`` give probabilities ``p = softmax(z)`` over E experts; the
token goes to its ``k`` most probable experts and the output is ``sum_{e in topk} g_e * FFN_e(x)``
with gates ``g_e = p_e`` (Switch Transformer, Fedus et al. 2021, arXiv:2101.03961) or ``p_e``
renormalised over the chosen k (Mixtral). To keep experts evenly used, Switch adds

    aux = E * sum_e f_e * P_e,

``f_e`` = fraction of the N*k routing slots assigned to expert e (not differentiable) and
``P_e`` = mean router probability of e over the N tokens (differentiable). Perfectly balanced
routing gives aux = 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from llmbook.model.layers import Activation, FeedForward


@dataclass(kw_only=True)
class MoEConfig:
    """Sparse feed-forward replacing the dense MLP in every block."""

    n_experts: int = 4  # E
    top_k: int = 2  # experts per token (Switch: 1, Mixtral: 2)
    d_ff: int | None = None  # hidden width of each expert; None = the dense d_ff
    # renormalise top-k gates to sum to 1 (Mixtral); False = raw p (Switch). With top_k=1 a renormalised gate is
    # always exactly 1, so the router gets no gradient but rounding noise: use False there, as Switch does
    normalize_gates: bool = True
    aux_loss_coef: float = 0.01  # weight of the load-balancing loss added to the LM loss

    def __post_init__(self) -> None:
        if not 1 <= self.top_k <= self.n_experts:
            raise ValueError(f"top_k must be in [1, n_experts={self.n_experts}], got {self.top_k}")


def route(
    router_logits: torch.Tensor, top_k: int, *, normalize: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k routing. ``router_logits (N, E)`` -> gates ``(N, k)``, expert ids ``(N, k)``, probs ``(N, E)``."""
    probs = torch.softmax(router_logits.float(), dim=-1)
    gates, idx = probs.topk(top_k, dim=-1)
    if normalize:
        gates = gates / gates.sum(dim=-1, keepdim=True)
    return gates.to(router_logits.dtype), idx, probs


def load_balancing_loss(probs: torch.Tensor, expert_idx: torch.Tensor, n_experts: int) -> torch.Tensor:
    """Switch auxiliary loss ``E * sum_e f_e * P_e`` for probs ``(N, E)`` and assignments ``(N, k)``."""
    counts = torch.bincount(expert_idx.reshape(-1), minlength=n_experts).to(probs.dtype)
    f = counts / expert_idx.numel()  # fraction of routing slots per expert
    p_mean = probs.mean(dim=0)  # (E,)
    return n_experts * (f * p_mean).sum()


class MoEFeedForward(nn.Module):
    """Router + E expert MLPs; ``forward`` returns ``(y, aux_loss)``."""

    def __init__(self, d_model: int, d_ff: int, cfg: MoEConfig, activation: Activation = "swiglu") -> None:
        super().__init__()
        self.cfg = cfg
        self.router = nn.Linear(d_model, cfg.n_experts, bias=False)
        self.experts = nn.ModuleList(
            FeedForward(d_model, cfg.d_ff or d_ff, activation) for _ in range(cfg.n_experts)
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])  # (B, T, C) -> (N, C)
        gates, idx, probs = route(self.router(flat), self.cfg.top_k, normalize=self.cfg.normalize_gates)
        out = torch.zeros_like(flat)
        for e, expert in enumerate(self.experts):
            token, slot = torch.where(idx == e)  # tokens routed to expert e, and in which of their k slots
            # an expert with no token still runs (on 0 rows): its weights get a zero gradient rather than
            # none, so every step updates the same parameters and data-parallel ranks stay in step
            y = expert(flat[token]) * gates[token, slot, None]  # (n_e, C)
            out.index_add_(0, token, y)
        aux = load_balancing_loss(probs, idx, self.cfg.n_experts)
        return out.reshape(shape), aux
