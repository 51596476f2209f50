"""Low-rank factorisation of linear layers: replace ``W`` (out, in) by ``A B`` with ``A`` (out, r), ``B`` (r, in).

A rank-``r`` pair stores ``r (out + in)`` numbers instead of ``out * in`` and costs as many multiply-adds per
token, so it pays once ``r < out * in / (out + in)``. Three ways to pick the factors, from blind to calibrated:

- **SVD** (:func:`svd_factorize`): ``W = U S V^T``, keep the ``r`` largest singular values. By Eckart--Young
  (1936) this is the best rank-``r`` matrix in the Frobenius norm of the *weight* error ``||W - A B||_F``, which
  equals ``sqrt(sum_{i > r} s_i^2)``.
- **ASVD** (Yuan et al. 2023, arXiv:2312.05821, :func:`asvd_factorize`): scale input channel ``j`` by
  ``d_j = mean|X_j|^alpha`` before the SVD and undo it after, ``W ~ (W D)_r D^{-1}``, so channels that carry
  large activations are kept more faithfully.
- **Whitened SVD** (SVD-LLM, Wang et al. 2024, arXiv:2403.07378, :func:`whitened_svd_factorize`): with ``X``
  the (N, in) calibration inputs and ``X^T X = S S^T`` (Cholesky), the *output* error is
  ``||(W - W') X^T||_F = ||(W - W') S||_F``; so truncating the SVD of ``W S`` and un-whitening,
  ``W' = (W S)_r S^{-1}``, is the best rank-``r`` matrix for the output error (Eckart--Young applied to ``W S``).

All factors split the kept singular values evenly, ``A = U_r sqrt(S_r)``, ``B = sqrt(S_r) V_r^T`` (times
``S^{-1}`` or ``D^{-1}`` when whitened or scaled): both factors then have comparable magnitudes, which is
what a later quantisation or fine-tuning of ``A`` and ``B`` wants. The SVDs run in float64.

:class:`LowRankLinear` is the layer (``nn.Linear`` in -> r without bias, then r -> out with the bias);
:func:`low_rank_linear` builds one from an ``nn.Linear`` and its
:class:`~llmbook.compression.calibration.LinearStats` at a parameter budget, and :func:`factorize_model` does every
decoder block of a Hugging Face LLaMA-style model, calibrating each block on
the outputs of the already-factorised blocks before it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from llmbook.compression.calibration import LinearStats, decoder_blocks, iterate_blocks, linear_layers

METHODS = ("svd", "whitened", "asvd")
Method = Literal["svd", "whitened", "asvd"]


@dataclass(kw_only=True)
class LowRankConfig:
    """How :func:`factorize_model` factorises each linear layer."""

    keep_fraction: float = 0.5  # parameters kept per layer: r (out + in) <= keep_fraction * out * in
    method: Method = "whitened"  # "svd" needs no calibration; "asvd" and "whitened" use the layer's inputs
    alpha: float = 0.5  # ASVD's exponent on mean|X_j| (0 is plain SVD; the paper finds 0.5 works best)
    damp: float = 1e-6  # whitened SVD: X^T X + damp * mean(diag) * I, so the Cholesky exists for dead channels


# ---------------------------------------------------------------------------------------------------------------
# Factorisations (pure functions on tensors)


def _check_weight_rank(weight: torch.Tensor, rank: int) -> tuple[int, int]:
    if weight.ndim != 2:
        raise ValueError(f"weight must be 2-D (out, in), got shape {tuple(weight.shape)}")
    out_features, in_features = weight.shape
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= min(out_features, in_features):
        raise ValueError(
            f"rank must be an int in [1, min(out, in)] = [1, {min(out_features, in_features)}] for a weight of shape "
            f"{tuple(weight.shape)}, got {rank!r}"
        )
    return out_features, in_features


def _truncated_factors(matrix: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(U_r sqrt(S_r), sqrt(S_r) V_r^T)`` of a float64 matrix: the best rank-``r`` pair in Frobenius norm."""
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)  # u (out, k), s (k,), vh (k, in); k = min(out, in)
    root = s[:rank].sqrt()
    return u[:, :rank] * root, root[:, None] * vh[:rank]  # (out, r), (r, in)


def svd_factorize(weight: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A, B)``, ``A`` (out, r), ``B`` (r, in): truncated SVD ``W ~ U_r S_r V_r^T`` with ``A = U_r sqrt(S_r)``,
    ``B = sqrt(S_r) V_r^T``. Optimal in ``||W - A B||_F`` (Eckart--Young); the error is ``sqrt(sum_{i>r} s_i^2)``.
    The factors come back in ``weight``'s dtype and device."""
    _check_weight_rank(weight, rank)
    a, b = _truncated_factors(weight.detach().double(), rank)
    return a.to(weight), b.to(weight)


def whitened_svd_factorize(
    weight: torch.Tensor, xtx: torch.Tensor, rank: int, *, damp: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """SVD-LLM's truncation-aware whitening (arXiv:2403.07378): the rank-``r`` ``A B`` minimising the output error
    ``||(W - A B) X^T||_F`` over the calibration inputs ``X`` (N, in), given ``xtx = X^T X`` (in, in).

    ``X^T X + damp * mean(diag(X^T X)) * I = S S^T`` (Cholesky, ``S`` lower triangular); ``W S = U S' V^T``;
    ``A = U_r sqrt(S'_r)``, ``B = sqrt(S'_r) V_r^T S^{-1}``. Then ``(W - A B) S = W S - (W S)_r``, and
    ``||E X^T||_F^2 = tr(E X^T X E^T) = ||E S||_F^2``, so Eckart--Young on ``W S`` makes ``A B`` optimal
    (exactly so at ``damp = 0``; the default damping changes the error by about ``damp`` relative).
    """
    _, in_features = _check_weight_rank(weight, rank)
    if xtx.shape != (in_features, in_features):
        raise ValueError(f"xtx must be (in, in) = ({in_features}, {in_features}), got {tuple(xtx.shape)}")
    if not damp >= 0:
        raise ValueError(f"damp must be >= 0, got {damp}")
    gram = xtx.detach().double().cpu()  # (in, in)
    scale = gram.diagonal().mean().item()
    if not scale > 0:
        raise ValueError("xtx is zero: gather calibration inputs (LinearStats.update) before a whitened SVD")
    gram = gram + damp * scale * torch.eye(in_features, dtype=torch.float64)
    s, info = torch.linalg.cholesky_ex(gram)  # (in, in) lower triangular, gram = s s^T
    if info.item() != 0:
        raise ValueError(
            f"X^T X is not positive definite (Cholesky failed at column {info.item()}): raise damp (now {damp}) "
            "or calibrate on more tokens than input features"
        )
    a, b_white = _truncated_factors(weight.detach().double().cpu() @ s, rank)  # (out, r), (r, in) in whitened space
    b = torch.linalg.solve_triangular(s, b_white, upper=False, left=False)  # (r, in): b_white S^{-1}
    return a.to(weight), b.to(weight)


def asvd_factorize(
    weight: torch.Tensor, abs_mean: torch.Tensor, rank: int, *, alpha: float = 0.5, eps: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """ASVD (arXiv:2312.05821): ``W ~ (W D)_r D^{-1}`` with ``D = diag(mean|X_j|^alpha)`` (activation-aware
    scaling of input channel ``j``), ``A = U_r sqrt(S_r)``, ``B = sqrt(S_r) V_r^T D^{-1}`` from the SVD of ``W D``.
    A channel whose scale is below ``eps`` times the largest is floored there, so ``D`` stays invertible."""
    _, in_features = _check_weight_rank(weight, rank)
    if abs_mean.shape != (in_features,):
        raise ValueError(f"abs_mean must be (in,) = ({in_features},), got {tuple(abs_mean.shape)}")
    if not alpha >= 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    d = abs_mean.detach().double().cpu().clamp_min(0) ** alpha  # (in,)
    if not d.max() > 0:
        raise ValueError("abs_mean is zero: gather calibration inputs (LinearStats.update) before ASVD")
    d = d.clamp_min(eps * d.max())
    a, b_scaled = _truncated_factors(weight.detach().double().cpu() * d, rank)  # (out, r), (r, in)
    return a.to(weight), (b_scaled / d).to(weight)


def output_error(weight: torch.Tensor, approx: torch.Tensor, xtx: torch.Tensor) -> float:
    """``||(W - W') X^T||_F = sqrt(tr(E X^T X E^T))``, ``E = W - W'``, from ``xtx = X^T X`` alone (float64)."""
    if weight.shape != approx.shape or xtx.shape != (weight.shape[1], weight.shape[1]):
        raise ValueError(
            f"shapes must be W (out, in), W' (out, in), xtx (in, in); got {tuple(weight.shape)}, "
            f"{tuple(approx.shape)}, {tuple(xtx.shape)}"
        )
    e = (weight.detach().double() - approx.detach().double()).cpu()  # (out, in)
    return math.sqrt(max(((e @ xtx.detach().double().cpu()) * e).sum().item(), 0.0))


def rank_for_budget(out_features: int, in_features: int, keep_fraction: float) -> int:
    """The largest ``r`` with ``r (out + in) <= keep_fraction * out * in``: the rank a parameter budget affords."""
    if not 0 < keep_fraction <= 1:
        raise ValueError(f"keep_fraction must be in (0, 1], got {keep_fraction}")
    if out_features < 1 or in_features < 1:
        raise ValueError(f"features must be positive, got out={out_features}, in={in_features}")
    budget = keep_fraction * out_features * in_features
    rank = math.floor(budget / (out_features + in_features))
    while rank * (out_features + in_features) > budget:  # guard the floor against float rounding
        rank -= 1
    while (rank + 1) * (out_features + in_features) <= budget:
        rank += 1
    if rank < 1:
        need = (out_features + in_features) / (out_features * in_features)
        raise ValueError(
            f"keep_fraction={keep_fraction} affords rank 0 for a ({out_features}, {in_features}) weight: rank 1 needs "
            f"keep_fraction >= (out + in) / (out * in) = {need:.4g}; raise keep_fraction or keep this layer dense"
        )
    return rank


# ---------------------------------------------------------------------------------------------------------------
# The layer


class LowRankLinear(nn.Module):
    """``y = up(down(x)) = x B^T A^T + b``: ``down`` (in -> r, no bias, weight ``B``), ``up`` (r -> out, weight
    ``A``, the original layer's bias)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int,
        *,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.down = nn.Linear(in_features, rank, bias=False, device=device, dtype=dtype)
        self.up = nn.Linear(rank, out_features, bias=bias, device=device, dtype=dtype)

    @classmethod
    def from_linear(cls, layer: nn.Linear, a: torch.Tensor, b: torch.Tensor) -> LowRankLinear:
        """The factorised ``layer``: ``A`` (out, r), ``B`` (r, in) replace its weight; its bias is kept."""
        out_features, in_features = layer.weight.shape
        rank = a.shape[1] if a.ndim == 2 else -1
        if a.shape != (out_features, rank) or b.shape != (rank, in_features):
            raise ValueError(
                f"factors must be A (out, r) and B (r, in) with (out, in) = {(out_features, in_features)}; "
                f"got A {tuple(a.shape)}, B {tuple(b.shape)}"
            )
        new = cls(
            in_features,
            out_features,
            rank,
            bias=layer.bias is not None,
            device=layer.weight.device,
            dtype=layer.weight.dtype,
        )
        with torch.no_grad():
            new.down.weight.copy_(b)
            new.up.weight.copy_(a)
            if layer.bias is not None:
                new.up.bias.copy_(layer.bias)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))

    @property
    def weight(self) -> torch.Tensor:
        """The dense equivalent ``A B`` (out, in), for measuring errors (not used in the forward pass)."""
        return self.up.weight @ self.down.weight

    @property
    def params(self) -> int:
        """Stored parameters: ``r (out + in)`` plus the bias."""
        return sum(p.numel() for p in self.parameters())

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"


def low_rank_linear(
    layer: nn.Linear,
    stats: LinearStats | None,
    keep_fraction: float,
    method: Method = "whitened",
    *,
    alpha: float = 0.5,
    damp: float = 1e-6,
) -> LowRankLinear:
    """``layer`` factorised at the rank :func:`rank_for_budget` affords, by ``method`` ("svd" ignores ``stats``;
    "whitened" uses ``stats.xtx``, "asvd" ``stats.abs_mean``)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method != "svd" and (stats is None or stats.rows == 0):
        raise ValueError(
            f"method={method!r} needs the layer's calibration LinearStats with rows > 0 (gather them first)"
        )
    rank = rank_for_budget(layer.out_features, layer.in_features, keep_fraction)
    weight = layer.weight.detach()
    if method == "svd":
        a, b = svd_factorize(weight, rank)
    elif method == "whitened":
        a, b = whitened_svd_factorize(weight, stats.xtx, rank, damp=damp)
    else:
        a, b = asvd_factorize(weight, stats.abs_mean, rank, alpha=alpha)
    return LowRankLinear.from_linear(layer, a, b)


def factorize_model(
    model: nn.Module, batches: list[torch.Tensor] | None, config: LowRankConfig, *, progress: bool = False
) -> dict[str, LowRankLinear]:
    """Replace every ``nn.Linear`` inside the decoder blocks by a :class:`LowRankLinear`, in place; returns them by
    qualified name (``"3.self_attn.q_proj"``). Calibrated methods go block by block (:func:`iterate_blocks` on the
    token-id ``batches``), so each block sees the outputs of the factorised blocks before it; "svd" needs no
    ``batches``. Embeddings and the output head stay dense."""
    done: dict[str, LowRankLinear] = {}

    def factorize_block(index: int, block: nn.Module, stats: dict[str, LinearStats] | None) -> None:
        for name, layer in linear_layers(block).items():
            new = low_rank_linear(
                layer,
                None if stats is None else stats[name],
                config.keep_fraction,
                config.method,
                alpha=config.alpha,
                damp=config.damp,
            )
            block.set_submodule(name, new)
            done[f"{index}.{name}"] = new

    if config.method == "svd":
        for index, block in enumerate(decoder_blocks(model)):
            factorize_block(index, block, None)
        return done
    if not batches:
        raise ValueError(f"method={config.method!r} needs calibration batches of token ids (B, T); got none")
    for index, block, stats, _refresh in iterate_blocks(model, batches, progress=progress, desc="low rank"):
        factorize_block(index, block, stats)
    return done
