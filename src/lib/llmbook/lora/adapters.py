"""Low-rank adapters for one linear layer: LoRA, rsLoRA, DoRA, PiSSA initialisation and VeRA.

A frozen weight W (out x in) gets a trainable update ΔW; the layer computes y = W x + ΔW x.

- **LoRA** (Hu et al., arXiv 2106.09685): ΔW = s · B A with A (r x in), B (out x r), s = α / r.
  A starts Kaiming-uniform and B at zero, so training starts from the base model exactly.
- **rsLoRA** (Kalajdzievski, arXiv 2312.03732): s = α / √r, so the update's size does not
  collapse as the rank grows.
- **DoRA** (Liu et al., arXiv 2402.09353): W' = m ⊙ (W + s B A) / ‖W + s B A‖_row, a trainable
  magnitude m per output row times a direction; the norm is treated as a constant in backward
  (the paper's section 4.3), as peft does.
- **PiSSA** (Meng et al., arXiv 2404.02948): A and B start from the top-r singular triplets of W and
  the base keeps the residual W - s B A, so training moves the principal directions.
- **VeRA** (Kopiczko et al., arXiv 2310.11454): ΔW = diag(b) B diag(d) A with A, B frozen random
  matrices shared by every layer and only the vectors b (out) and d (r) trained.

Each adapter is a small module holding only its own tensors; :class:`AdaptedLinear` wraps the base
layer and sums the active adapter's output. Parameter names follow peft (``lora_A``, ``lora_B``,
``lora_magnitude_vector``, ``vera_lambda_b``, ``vera_lambda_d``) so the checkpoints interchange.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(kw_only=True)
class LoraConfig:
    """One LoRA adapter's settings (peft's ``LoraConfig`` fields in brackets)."""

    r: int = 8  # rank of B A [r]
    alpha: float = 16.0  # update scale numerator [lora_alpha]
    dropout: float = 0.0  # dropout on the adapter's input path only [lora_dropout]
    # module names: a list matches a full name or a ".name" suffix; a string is a regex matched against
    # the whole module path (peft's two forms) [target_modules]
    targets: tuple[str, ...] | list[str] | str = ("q_proj", "v_proj")
    rslora: bool = False  # s = alpha / sqrt(r) instead of alpha / r [use_rslora]
    dora: bool = False  # magnitude-direction decomposition [use_dora]
    init: str = "default"  # "default" (Kaiming A, zero B) or "pissa" (top-r SVD) [init_lora_weights]

    @property
    def scaling(self) -> float:
        return self.alpha / math.sqrt(self.r) if self.rslora else self.alpha / self.r


@dataclass(kw_only=True)
class VeraConfig:
    """One VeRA adapter's settings (peft's ``VeraConfig`` fields in brackets)."""

    r: int = 256  # rank of the shared random matrices; VeRA affords a large one: they are not trained [r]
    d_initial: float = 0.1  # initial value of every entry of d [d_initial]
    dropout: float = 0.0  # [vera_dropout]
    targets: tuple[str, ...] | list[str] | str = ("q_proj", "v_proj")  # as in LoraConfig [target_modules]
    projection_seed: int = 0  # seed of the shared A and B: a saved adapter can rebuild them [projection_prng_key]


def matches_target(name: str, targets: tuple[str, ...] | list[str] | str) -> bool:
    """peft's rule: a regex string must match the whole path; a list entry equals the name or its last parts."""
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)


def base_weight(base: nn.Module) -> torch.Tensor:
    """The dense weight of a base layer: an ``nn.Linear``'s own, or a quantised layer's dequantised copy."""
    dequantized = getattr(base, "weight_dequantized", None)
    return dequantized() if dequantized is not None else base.weight


def _kaiming_uniform(shape: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """Kaiming-uniform (gain √2) from a private generator: VeRA's shared matrices, rebuilt from the seed."""
    bound = math.sqrt(3.0) * math.sqrt(2.0) / math.sqrt(shape[1])
    return torch.empty(shape).uniform_(-bound, bound, generator=generator)


class LoraAdapter(nn.Module):
    """ΔW = s · B A (LoRA, rsLoRA, PiSSA), optionally with DoRA's magnitude vector."""

    def __init__(self, base: nn.Module, config: LoraConfig) -> None:
        super().__init__()
        out_features, in_features = base.out_features, base.in_features
        if config.r < 1 or config.r > min(in_features, out_features):
            raise ValueError(
                f"LoRA rank r={config.r} must be between 1 and min(in, out) = {min(in_features, out_features)} "
                f"for a {in_features} -> {out_features} layer: a larger rank adds parameters, not expressiveness"
            )
        weight = base_weight(base)
        self.scaling = config.scaling
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        # Same draws, in the same order, as peft (it builds A and B as nn.Linear, then re-draws A), so
        # one seed gives the same adapter in both libraries.
        a = torch.empty(config.r, in_features)
        nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        nn.init.kaiming_uniform_(torch.empty(out_features, config.r), a=math.sqrt(5))
        nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        b = torch.zeros(out_features, config.r)
        if config.init == "pissa":
            a, b = self._pissa(base, config)
        elif config.init != "default":
            raise ValueError(f"unknown LoRA init {config.init!r}: use 'default' or 'pissa'")
        self.lora_A = nn.Parameter(a.to(weight.device, weight.dtype))
        self.lora_B = nn.Parameter(b.to(weight.device, weight.dtype))
        self.lora_magnitude_vector = None
        if config.dora:  # m starts at the row norms, so W' = W at step 0
            self.lora_magnitude_vector = nn.Parameter(self.row_norm(weight).detach().clone())

    def _pissa(self, base: nn.Module, config: LoraConfig) -> tuple[torch.Tensor, torch.Tensor]:
        """A = √S_r Vᵀ_r, B = U_r √S_r (S divided by s so s·B A is the rank-r part); base keeps W - s B A."""
        if not isinstance(base, nn.Linear):
            raise ValueError("PiSSA rewrites the base weight: it needs a floating-point nn.Linear base")
        weight = base.weight.data.float()
        u, s, vh = torch.linalg.svd(weight, full_matrices=False)
        s_r = s[: config.r] / self.scaling
        a = torch.diag(s_r.sqrt()) @ vh[: config.r]
        b = u[:, : config.r] @ torch.diag(s_r.sqrt())
        base.weight.data = (weight - self.scaling * b @ a).to(base.weight.dtype)
        return a, b

    def delta_weight(self) -> torch.Tensor:
        return self.scaling * self.lora_B @ self.lora_A

    def row_norm(self, weight: torch.Tensor) -> torch.Tensor:
        # ‖W + s B A‖ per output row; B A enters detached (the DoRA paper's section 4.3)
        return torch.linalg.norm(weight + self.delta_weight().detach(), dim=1)

    def output(self, x: torch.Tensor, base_out: torch.Tensor, base: nn.Module) -> torch.Tensor:
        """What the adapter adds to the base layer's output ``base_out`` for input ``x``."""
        dropped = self.dropout(x)
        lora_out = F.linear(F.linear(dropped, self.lora_A), self.lora_B) * self.scaling
        if self.lora_magnitude_vector is None:
            return lora_out
        weight = base_weight(base)
        factor = self.lora_magnitude_vector / self.row_norm(weight).detach()  # (out,)
        if isinstance(self.dropout, nn.Identity) or not self.training:
            bias = getattr(base, "bias", None)
            direct = base_out - bias if bias is not None else base_out  # W x, without the bias
        else:  # dropout changed the input: W must see the same dropped x as B A
            direct = F.linear(dropped, weight.to(x.dtype))
        return (factor - 1) * direct + factor * lora_out

    def merged_weight(self, weight: torch.Tensor) -> torch.Tensor:
        """The single weight that computes base + adapter (DoRA rescales each row by m / ‖·‖)."""
        merged = weight + self.delta_weight()
        if self.lora_magnitude_vector is not None:
            merged = (self.lora_magnitude_vector / self.row_norm(weight))[:, None] * merged
        return merged


class VeraAdapter(nn.Module):
    """ΔW = diag(b) B diag(d) A, with A (r x in_max) and B (out_max x r) shared, frozen and sliced."""

    def __init__(self, base: nn.Module, config: VeraConfig, shared: tuple[torch.Tensor, torch.Tensor]) -> None:
        super().__init__()
        weight = base_weight(base)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        # b starts at zero (ΔW = 0 at step 0), d at d_initial
        self.vera_lambda_b = nn.Parameter(torch.zeros(self.out_features, device=weight.device, dtype=weight.dtype))
        self.vera_lambda_d = nn.Parameter(
            torch.full((config.r,), config.d_initial, device=weight.device, dtype=weight.dtype)
        )
        # One tensor object for every layer (not copies); kept out of the state dict, which saves them once.
        self.register_buffer("vera_A", shared[0], persistent=False)
        self.register_buffer("vera_B", shared[1], persistent=False)

    @staticmethod
    def shared_projections(config: VeraConfig, in_max: int, out_max: int) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator(device="cpu").manual_seed(config.projection_seed)
        a = _kaiming_uniform((config.r, in_max), generator)
        b = _kaiming_uniform((out_max, config.r), generator)
        return a, b

    def delta_weight(self) -> torch.Tensor:
        a = self.vera_A[:, : self.in_features]  # (r, in)
        b = self.vera_B[: self.out_features]  # (out, r)
        return self.vera_lambda_b[:, None] * (b @ (self.vera_lambda_d[:, None] * a))

    def output(self, x: torch.Tensor, base_out: torch.Tensor, base: nn.Module) -> torch.Tensor:
        a = self.vera_A[:, : self.in_features].to(x.dtype)
        b = self.vera_B[: self.out_features].to(x.dtype)
        return self.vera_lambda_b * F.linear(self.vera_lambda_d * F.linear(self.dropout(x), a), b)

    def merged_weight(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.delta_weight()


class AdaptedLinear(nn.Module):
    """A frozen base layer (``nn.Linear`` or a quantised layer) plus named adapters, one active at a time."""

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.base_layer = base  # peft's attribute name, so module paths line up
        self.adapters = nn.ModuleDict()
        self.active: str | None = None
        self.merged: str | None = None  # the adapter folded into the base weight, if any
        self._row_factor: torch.Tensor | None = None  # DoRA's m / ‖W + ΔW‖ at merge time, to undo it
        self._unmerged_base: nn.Module | None = None  # a quantised base as it was before merging

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        if self.active is None or self.merged is not None:
            return out
        return out + self.adapters[self.active].output(x, out, self.base_layer)

    def merge(self) -> float:
        """Fold the active adapter into the base weight; return the largest error that leaves in it.

        0 for a floating-point base. A 4-bit base must re-quantise W + ΔW, which rounds the update
        away where it is smaller than the code spacing of its block: the returned number says how much.
        """
        if self.merged is not None or self.active is None:
            raise ValueError(f"cannot merge: merged={self.merged!r}, active={self.active!r}")
        adapter = self.adapters[self.active]
        base = self.base_layer
        with torch.no_grad():
            weight = base_weight(base)
            target = adapter.merged_weight(weight.float())
            magnitude = getattr(adapter, "lora_magnitude_vector", None)
            self._row_factor = None if magnitude is None else magnitude / adapter.row_norm(weight.float())
            if hasattr(base, "weight_dequantized"):  # quantised: re-quantise W + ΔW, keep the old layer
                dense = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None)
                dense.weight.data = target.to(weight.dtype)
                if base.bias is not None:
                    dense.bias.data = base.bias.detach().clone()
                requantized = type(base).from_linear(dense, code=base.code, blocksize=base.blocksize,
                                                     double_quant=base.absmax_codes is not None)
                self._unmerged_base, self.base_layer = base, requantized
                error = (base_weight(self.base_layer).float() - target).abs().max().item()
            else:
                base.weight.data = target.to(weight.dtype)
                error = 0.0
        self.merged = self.active
        return error

    def unmerge(self) -> None:
        """Undo :meth:`merge`: subtract ΔW (after undoing DoRA's row scaling); a quantised base gets its
        old codes back."""
        if self.merged is None:
            raise ValueError("no adapter is merged into this layer")
        adapter = self.adapters[self.merged]
        with torch.no_grad():
            if self._unmerged_base is not None:
                self.base_layer, self._unmerged_base = self._unmerged_base, None
            else:
                weight = self.base_layer.weight
                unmerged = weight.float()
                if self._row_factor is not None:
                    unmerged = unmerged / self._row_factor[:, None]
                weight.data = (unmerged - adapter.delta_weight()).to(weight.dtype)
        self.merged, self._row_factor = None, None
