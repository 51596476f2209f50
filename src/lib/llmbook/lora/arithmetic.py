"""Adapter arithmetic: several adapters on one base combined into one ("model soup", task vectors).

Each adapter is a task vector per layer, τ_i = ΔW_i, the change it makes to W (DoRA's row
rescaling included) (Ilharco et al., arXiv 2212.04089). Two rules:

- **linear** (task arithmetic): τ = Σ w_i τ_i. Negative weights subtract a task.
- **TIES** (Yadav et al., arXiv 2306.01708): trim each τ_i to its top ``density`` share of entries by
  magnitude, elect each entry's sign as the sign of Σ_i trimmed τ_i, and average, per entry, only the
  trimmed values that agree with the elected sign (disjoint mean); then scale by the weights' sum.

The combined ΔW of each layer is stored as a new LoRA adapter of rank ``rank`` by truncated SVD
(ΔW ≈ U_r S_r V_rᵀ, B = U_r √S_r, A = √S_r V_rᵀ, s = 1). A linear combination of rank-r_i adapters
has rank ≤ Σ r_i, so with ``rank = Σ r_i`` (the default) the linear rule is stored exactly; the
report says how much of each layer's combined update the factorisation kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from llmbook.lora.adapters import LoraAdapter, LoraConfig, base_weight
from llmbook.lora.inject import adapted_layers, adapter_names, add_adapter


def _rank(adapter: nn.Module) -> int:
    return adapter.lora_A.shape[0] if isinstance(adapter, LoraAdapter) else adapter.vera_lambda_d.shape[0]


def ties(deltas: list[torch.Tensor], weights: list[float], density: float) -> torch.Tensor:
    """TIES-merging of same-shaped task vectors: trim, elect sign, weighted disjoint mean.

    As ``peft.utils.merge_utils.ties``: the top ``int(density * numel)`` entries of each τ_i by magnitude
    survive; the sign of each entry is elected from the unweighted sum (ties go to +); only surviving
    entries of the elected sign are averaged.
    """
    if not 0 < density <= 1:
        raise ValueError(f"TIES density {density} must be in (0, 1]: the share of each task vector kept")
    trimmed = []
    for delta in deltas:
        keep = torch.zeros(delta.numel(), dtype=delta.dtype)
        keep[delta.abs().flatten().topk(int(density * delta.numel())).indices] = 1
        trimmed.append(delta * keep.view_as(delta))
    stacked = torch.stack(trimmed)  # (N, *shape)
    elected = torch.where(stacked.sum(dim=0) >= 0, 1.0, -1.0)
    agree = stacked.sign() == elected
    weighted = stacked * torch.tensor(weights, dtype=stacked.dtype).view(-1, *[1] * (stacked.dim() - 1))
    return (weighted * agree).sum(dim=0) / agree.sum(dim=0).clamp(min=1)


@dataclass(kw_only=True)
class CombineReport:
    adapter: str  # the new adapter's name
    rank: int
    kept: float  # smallest share of a layer's combined update (Frobenius) that the rank-r factors keep


def combine_adapters(model: nn.Module, weights: dict[str, float], name: str, *, method: str = "linear",
                     density: float = 0.2, rank: int | None = None) -> CombineReport:
    """Add adapter ``name`` = the ``method`` combination of the named adapters with ``weights``; activate it."""
    missing = [n for n in weights if n not in adapter_names(model)]
    if missing or not weights:
        raise ValueError(f"cannot combine {list(weights)}: this model has adapters {adapter_names(model)}")
    if method not in ("linear", "ties"):
        raise ValueError(f"unknown combination {method!r}: use 'linear' or 'ties'")
    layers = {p: layer for p, layer in adapted_layers(model).items() if all(n in layer.adapters for n in weights)}
    if len(layers) != len(adapted_layers(model)):
        raise ValueError(f"adapters {list(weights)} do not cover the same layers: they cannot be combined")
    first = next(iter(layers.values()))
    if rank is None:
        if any(getattr(first.adapters[n], "lora_magnitude_vector", None) is not None for n in weights):
            raise ValueError("a DoRA adapter rescales whole rows of W, so its update is not low-rank: pass rank= "
                             "(the report's `kept` says how much of the update that rank holds)")
        rank = sum(_rank(first.adapters[n]) for n in weights)  # enough to hold a linear combination exactly
    rank = min(rank, *(min(layer.in_features, layer.out_features) for layer in layers.values()))
    combined = {}
    with torch.no_grad():
        for path, layer in layers.items():
            weight = base_weight(layer.base_layer).float()
            # the update each adapter really makes (DoRA's includes its row rescaling)
            deltas = [layer.adapters[n].merged_weight(weight) - weight for n in weights]
            if method == "linear":
                combined[path] = sum(w * d for w, d in zip(weights.values(), deltas))
            else:
                combined[path] = ties(deltas, list(weights.values()), density)
    add_adapter(model, LoraConfig(r=rank, alpha=rank, targets=list(layers)), name)
    kept = 1.0
    with torch.no_grad():
        for path, layer in adapted_layers(model).items():
            adapter, r = layer.adapters[name], rank
            u, s, vh = torch.linalg.svd(combined[path], full_matrices=False)
            adapter.scaling = 1.0
            adapter.lora_B.copy_(u[:, :r] * s[:r].sqrt())
            adapter.lora_A.copy_(s[:r].sqrt()[:, None] * vh[:r])
            total = combined[path].norm()
            if total > 0:
                kept = min(kept, (s[:r].square().sum().sqrt() / total).item())
    return CombineReport(adapter=name, rank=rank, kept=kept)
