"""Pruning: set weights of a linear layer to zero, chosen by size, by size times input, or by second-order error.

A mask says which weights stay (``True``) and which are pruned (``False``); its *sparsity* is the fraction pruned.
Three ways to pick it, from cheapest to most accurate on the layer's output ``W X``:

- **magnitude** (Han et al., arXiv:1506.02626): prune the smallest ``|W_ij|``, across the whole layer or per row;
- **Wanda** (Sun et al., arXiv:2306.11695): prune the smallest ``|W_ij| * ||X_j||_2`` in each output row, so a small
  weight on a loud input channel survives; no weight update;
- **SparseGPT** (Frantar & Alistarh, arXiv:2301.00774): Optimal Brain Surgeon (Hassibi & Stork 1993) one column at
  a time. With ``H = 2 X^T X / N`` and the upper Cholesky factor ``U`` of ``H^{-1}`` (``H^{-1} = U^T U``), pruning
  weight ``w_p`` of a row moves the weights to its right by ``-(w_p / U_pp) U_{p,:}``, which removes the output
  error ``w_p X_p`` as far as those weights can; the mask is chosen as it goes, per block of columns, by the OBS
  saliency ``w_p^2 / U_pp^2`` of the *updated* weights.

**n:m semi-structured** sparsity keeps ``n`` weights in every group of ``m`` consecutive inputs of a row; 2:4
(half the weights) runs about twice as fast on NVIDIA Ampere and later sparse tensor cores (arXiv:2104.08378).
Note the convention: ``n`` is the number *kept* (NVIDIA's), while the SparseGPT and Wanda scripts take the
number *pruned*; for 2:4 both read the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from llmbook.compression.calibration import LinearStats
from llmbook.compression.gptq import inverse_hessian_factor

Method = Literal["magnitude", "wanda", "sparsegpt"]
METHODS = ("magnitude", "wanda", "sparsegpt")


@dataclass(kw_only=True)
class PruneResult:
    """What :func:`sparsegpt_prune` returns."""

    weight: torch.Tensor  # (out, in) pruned and reconstructed weights, in the input's dtype
    mask: torch.Tensor  # (out, in) bool, True where a weight is kept
    loss: float  # sum (w - q)^2 / (2 U_ii^2) over the sweep = 1/2 sum_rows dW H dW^T exactly (H damped)


# --- checks -------------------------------------------------------------------------------------------------------


def _check_weight(weight: torch.Tensor) -> None:
    if not isinstance(weight, torch.Tensor) or not weight.is_floating_point():
        raise TypeError(f"weight must be a floating-point torch.Tensor, got {type(weight).__name__}")
    if weight.ndim != 2:
        raise ValueError(f"weight must be 2-D (out, in), got shape {tuple(weight.shape)}")


def _check_n_m(n: int, m: int, in_features: int) -> None:
    if not (isinstance(n, int) and isinstance(m, int) and 1 <= n < m):
        raise ValueError(f"n:m = {n}:{m}: need integers 1 <= n < m (n weights kept in every m consecutive inputs)")
    if in_features % m:
        raise ValueError(f"in_features={in_features} is not divisible by m={m}: choose m dividing the layer width")


def _resolve(sparsity: float | None, n: int | None, m: int | None, in_features: int) -> float:
    """The fraction to prune, from either ``sparsity`` or an ``n:m`` pattern (which fixes it at ``1 - n/m``)."""
    if (n is None) != (m is None):
        raise ValueError(f"n={n}, m={m}: give both n and m (e.g. n=2, m=4 for 2:4) or neither")
    if n is not None and m is not None:
        _check_n_m(n, m, in_features)
        implied = 1 - n / m
        if sparsity is not None and abs(sparsity - implied) > 1e-12:
            raise ValueError(f"sparsity={sparsity} contradicts {n}:{m}, which prunes {implied:g}: pass sparsity=None")
        return implied
    if sparsity is None:
        raise ValueError("give a sparsity (fraction pruned, in [0, 1)) or an n:m pattern (n=2, m=4)")
    if not (isinstance(sparsity, (int, float)) and 0 <= sparsity < 1):
        raise ValueError(f"sparsity={sparsity!r}: must be a fraction in [0, 1)")
    return float(sparsity)


def _check_mask(mask: torch.Tensor, shape: torch.Size) -> None:
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool torch.Tensor (True = kept), got {getattr(mask, 'dtype', type(mask))}")
    if mask.shape != shape:
        raise ValueError(f"mask has shape {tuple(mask.shape)}, the weight {tuple(shape)}: they must match")


# --- masks from scores --------------------------------------------------------------------------------------------


def _prune_smallest(score: torch.Tensor, k: int) -> torch.Tensor:
    """Bool keep-mask of ``score``'s shape with the ``k`` smallest entries of each row False (ties: lower index)."""
    if k == 0:
        return torch.ones_like(score, dtype=torch.bool)
    kth = score.kthvalue(k, dim=1, keepdim=True).values  # (rows, 1): cheaper than a sort or a top-k
    below = score < kth
    ties = score == kth  # enough of them, leftmost first, to prune exactly k
    room = k - below.sum(dim=1, keepdim=True)
    return ~(below | (ties & (ties.cumsum(dim=1) <= room)))


def _keep_n_of_m(score: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Bool keep-mask keeping the ``n`` largest scores in each group of ``m`` consecutive columns."""
    out, width = score.shape
    groups = score.reshape(out, width // m, m)  # (out, in/m, m): one group of m consecutive inputs per slot
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, groups.topk(n, dim=-1).indices, True)
    return keep.reshape(out, width)  # (out, in)


def mask_from_scores(
    score: torch.Tensor,
    sparsity: float | None = None,
    *,
    n: int | None = None,
    m: int | None = None,
    per_row: bool = True,
) -> torch.Tensor:
    """Keep-mask (bool, True = kept) pruning the lowest ``score`` (out, in): ``round(sparsity * count)`` entries per
    row (``per_row``) or over the whole matrix, or all but the ``n`` highest in every ``m`` consecutive inputs."""
    _check_weight(score)
    sparsity = _resolve(sparsity, n, m, score.shape[1])
    if n is not None and m is not None:
        return _keep_n_of_m(score, n, m)
    if per_row:
        return _prune_smallest(score, round(sparsity * score.shape[1]))
    flat = score.reshape(1, -1)  # (1, out*in): the whole layer competes
    return _prune_smallest(flat, round(sparsity * flat.shape[1])).reshape(score.shape)


def magnitude_mask(
    weight: torch.Tensor,
    sparsity: float | None = None,
    *,
    n: int | None = None,
    m: int | None = None,
    per_row: bool = False,
) -> torch.Tensor:
    """Magnitude pruning (arXiv:1506.02626): keep-mask dropping the smallest ``|W_ij|``.

    Default ``per_row=False``: the ``round(sparsity * out * in)`` smallest of the whole layer, as
    ``torch.nn.utils.prune.l1_unstructured`` and SparseGPT's magnitude baseline do; ``per_row=True`` prunes
    the same fraction of every output row, as Wanda's comparison does. ``n:m`` keeps the n largest of every m.
    """
    _check_weight(weight)
    return mask_from_scores(weight.detach().abs(), sparsity, n=n, m=m, per_row=per_row)


def wanda_mask(
    weight: torch.Tensor,
    act_l2_norm: torch.Tensor,
    sparsity: float | None = None,
    *,
    n: int | None = None,
    m: int | None = None,
) -> torch.Tensor:
    """Wanda (arXiv:2306.11695): keep-mask dropping, in each output row, the smallest ``S_ij = |W_ij| ||X_j||_2``.

    ``act_l2_norm`` (in,) is the input channel norm over the calibration tokens (``LinearStats.l2_norm``).
    """
    _check_weight(weight)
    if not isinstance(act_l2_norm, torch.Tensor) or act_l2_norm.shape != (weight.shape[1],):
        shape = tuple(act_l2_norm.shape) if isinstance(act_l2_norm, torch.Tensor) else type(act_l2_norm).__name__
        raise ValueError(f"act_l2_norm must have shape ({weight.shape[1]},) (one norm per input), got {shape}")
    score = weight.detach().abs() * act_l2_norm.to(weight.device, weight.dtype)[None, :]  # (out, in)
    return mask_from_scores(score, sparsity, n=n, m=m, per_row=True)


def check_n_m(mask: torch.Tensor, n: int = 2, m: int = 4) -> bool:
    """True when every group of ``m`` consecutive inputs of every row keeps at most ``n`` entries (a bool mask's
    True entries, or a weight's non-zeros)."""
    if not isinstance(mask, torch.Tensor) or mask.ndim != 2:
        raise ValueError(f"check_n_m needs a 2-D (out, in) mask or weight, got {getattr(mask, 'shape', type(mask))}")
    _check_n_m(n, m, mask.shape[1])
    kept = (mask != 0).reshape(mask.shape[0], -1, m)  # (out, in/m, m)
    return bool((kept.sum(dim=-1) <= n).all())


def sparsity(tensor_or_mask: torch.Tensor) -> float:
    """Fraction pruned: of a bool keep-mask, the False entries; of a weight, the exact zeros."""
    if not isinstance(tensor_or_mask, torch.Tensor) or tensor_or_mask.numel() == 0:
        raise ValueError("sparsity needs a non-empty torch.Tensor")
    return float((tensor_or_mask == 0).sum()) / tensor_or_mask.numel()


# --- SparseGPT ----------------------------------------------------------------------------------------------------


def sparsegpt_prune(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    sparsity: float | None = None,
    *,
    n: int | None = None,
    m: int | None = None,
    mask: torch.Tensor | None = None,
    block_size: int = 128,
    damp: float = 0.01,
) -> PruneResult:
    """SparseGPT (arXiv:2301.00774), following IST-DASLab/sparsegpt ``fasterprune`` without quantisation.

    Columns are visited left to right. Column ``i`` of every row is pruned (``q = 0``) or kept (``q = w``), and
    the weights right of it absorb the error: ``W[:, i:] -= ((w - q) / U_ii) U[i, i:]`` (within a block of
    ``block_size`` columns; the rest of the matrix gets the block's errors in one matmul). The mask is chosen
    lazily from the current weights with the saliency ``w^2 / U_ii^2``: at each block start, the
    ``round(sparsity * out * block)`` lowest of the block (the reference prunes one more, by taking ``<=`` the
    k-th); with ``n:m``, every ``m`` columns, the ``m - n`` lowest of each row's group. ``mask`` (bool, True =
    kept) forces the mask instead and only reconstructs. ``H`` gets ``damp * mean(diag H)`` on its diagonal;
    inputs never seen (``H_jj = 0``) have their weights set to zero, as in GPTQ. ``U`` comes from
    :func:`llmbook.compression.gptq.inverse_hessian_factor` (float64); the sweep runs in ``hessian``'s dtype (at
    least float32; ``LinearStats.hessian`` is float64).
    """
    _check_weight(weight)
    out, width = weight.shape
    if not isinstance(hessian, torch.Tensor) or hessian.shape != (width, width):
        raise ValueError(f"hessian must be ({width}, {width}) for a weight of shape {(out, width)}")
    if mask is not None:
        _check_mask(mask, weight.shape)
        if sparsity is not None or n is not None or m is not None:
            raise ValueError("give either mask= or sparsity / n:m, not both")
    else:
        sparsity = _resolve(sparsity, n, m, width)
    if not (isinstance(block_size, int) and block_size >= 1):
        raise ValueError(f"block_size={block_size!r}: must be a positive int (128 in the paper)")
    if m is not None and block_size % m:
        raise ValueError(f"block_size={block_size} must be a multiple of m={m} so n:m groups stay inside a block")
    if not damp >= 0:
        raise ValueError(f"damp={damp}: must be >= 0 (a fraction of the mean Hessian diagonal, 0.01 in the paper)")

    dtype = torch.promote_types(hessian.dtype, torch.float32)
    W = weight.detach().to(hessian.device, dtype).clone()  # (out, in)
    H = hessian.detach().clone()  # (in, in)
    dead = H.diagonal() == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    U = inverse_hessian_factor(H, damp).to(W.device, dtype)  # (in, in) upper, H^{-1} = U^T U (damped H)

    Wt = W.T.contiguous()  # (in, out): column i of W is the contiguous row i here, updated in place
    keep_t = torch.ones(width, out, dtype=torch.bool, device=W.device)  # (in, out)
    loss = torch.zeros((), dtype=dtype, device=W.device)
    for i1 in range(0, width, block_size):
        i2 = min(i1 + block_size, width)
        W1 = Wt[i1:i2]  # (b, out) view of the block's columns
        U1 = U[i1:i2, i1:i2]  # (b, b)
        d1 = U1.diagonal()
        errors = torch.zeros_like(W1)  # (b, out): (w - q) / U_ii per column
        if mask is not None:
            prune1 = ~mask[:, i1:i2].T.to(W.device)  # (b, out), True where pruned
        elif n is None:
            score = (W1**2 / d1[:, None] ** 2).reshape(1, -1)  # (1, b*out): the whole block competes
            prune1 = ~_prune_smallest(score, round(sparsity * score.shape[1])).reshape(W1.shape)
        else:
            prune1 = torch.zeros_like(W1, dtype=torch.bool)
        scale1 = prune1 / d1[:, None]  # (b, out): 1 / U_ii where pruned, 0 where kept
        for i in range(i2 - i1):
            if n is not None and m is not None and i % m == 0:
                score = W1[i : i + m] ** 2 / d1[i : i + m, None] ** 2  # (m, out)
                prune1[i : i + m] = ~_keep_n_of_m(score.T, n, m).T
                scale1[i : i + m] = prune1[i : i + m] / d1[i : i + m, None]
            err = torch.mul(W1[i], scale1[i], out=errors[i])  # (w - q) / U_ii: q = 0 where pruned, w where kept
            W1[i:].addr_(U1[i, i:], err, alpha=-1)  # rank-1 OBS update of the block's remaining columns
            W1[i].masked_fill_(prune1[i], 0.0)  # the update left w - (w - q) = q: make the zeros exact
        loss += (errors**2).sum() / 2
        Wt[i2:].addmm_(U[i1:i2, i2:].T, errors, alpha=-1)  # the block's errors reach the later columns at once
        keep_t[i1:i2] = ~prune1
    return PruneResult(weight=Wt.T.to(weight.device, weight.dtype), mask=keep_t.T.to(weight.device), loss=float(loss))


# --- layers -------------------------------------------------------------------------------------------------------


def prune_linear(
    layer: nn.Linear,
    stats: LinearStats,
    method: Method = "magnitude",
    sparsity: float | None = None,
    n: int | None = None,
    m: int | None = None,
    *,
    block_size: int = 128,
    damp: float = 0.01,
) -> torch.Tensor:
    """Prune ``layer.weight`` in place with ``method`` and return the keep-mask (out, in).

    ``sparsity=None`` means 0.5 unless an ``n:m`` pattern is given (which fixes it). Magnitude prunes over the
    whole layer; Wanda uses ``stats.l2_norm``; SparseGPT uses ``stats.hessian`` and also updates the kept weights.
    As a step of ``calibration.compress_sequentially``:
    ``compress_sequentially(model, batches, lambda name, layer, stats: prune_linear(layer, stats, "sparsegpt"))``.
    """
    if not isinstance(layer, nn.Linear):
        raise TypeError(f"prune_linear needs an nn.Linear, got {type(layer).__name__}")
    if method not in METHODS:
        raise ValueError(f"method={method!r}: choose one of {METHODS}")
    if stats.in_features != layer.in_features:
        raise ValueError(f"stats are for {stats.in_features} inputs, the layer has {layer.in_features}")
    if method != "magnitude" and stats.rows == 0:
        raise ValueError(f"{method} needs calibration inputs: stats has seen no rows")
    if sparsity is None and n is None and m is None:
        sparsity = 0.5
    weight = layer.weight.detach()
    if method == "magnitude":
        mask = magnitude_mask(weight, sparsity, n=n, m=m)
        new = weight * mask
    elif method == "wanda":
        mask = wanda_mask(weight, stats.l2_norm, sparsity, n=n, m=m)
        new = weight * mask
    else:
        result = sparsegpt_prune(weight, stats.hessian, sparsity, n=n, m=m, block_size=block_size, damp=damp)
        mask, new = result.mask, result.weight
    with torch.no_grad():
        layer.weight.copy_(new)
    return mask
