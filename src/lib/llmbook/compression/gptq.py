"""GPTQ: quantise a weight matrix one column at a time, letting the columns not yet quantised absorb the error.

Frantar et al. 2022, "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained Transformers"
(arXiv:2210.17323), a fast form of the Optimal Brain Quantiser (OBQ, arXiv:2208.11580). For one linear layer with
calibration inputs ``X`` (N, in) the loss is the squared output error ``||W X^T - W_hat X^T||_F^2``, whose Hessian in
the weights of any row is ``H = 2 X^T X / N`` (:attr:`~llmbook.compression.calibration.LinearStats.hessian`). After
quantising column ``q`` to ``w_hat_q``, the optimal update of the remaining columns ``F`` is the OBS step

    ``err = (w_q - w_hat_q) / [H_F^{-1}]_qq``,  ``w_F -= err [H_F^{-1}]_{q,F}``,

and the loss grows by ``(w_q - w_hat_q)^2 / (2 [H_F^{-1}]_qq)``. GPTQ makes this fast with three ideas:

1. every row uses the same column order, so ``H_F^{-1}`` is shared by all rows;
2. the rows of ``H_F^{-1}`` needed in turn (with ``F`` shrinking left to right) are, divided by the square root of
   their diagonal, the rows of the upper Cholesky factor ``U`` of ``H^{-1}`` (``H^{-1} = U^T U``,
   ``U_qq^2 = [H_F^{-1}]_qq``), so one factorisation replaces ``in`` Schur-complement updates:
   ``err = (w_q - w_hat_q) / U_qq``, ``w_F -= err U_{q,F}``;
3. lazy batches: within a block of ``block_size`` columns the updates touch only the block; the rest of the matrix
   gets them in one matrix product when the block is done (``W[:, after] -= Err @ U[block, after]``).

Two heuristics from the reference code (IST-DASLab/gptq, AutoGPTQ): dampening ``H + lambda I`` with
``lambda = damp * mean(diag H)`` keeps the factorisation stable; act-order quantises columns by decreasing
``H_ii`` (the inputs with the most energy first, while many columns are left to absorb their error).

**Groups and act-order.** Here a group is always ``group_size`` consecutive columns of the ORIGINAL matrix, so
column ``j`` uses ``scale[:, j // group_size]`` (a monotone ``g_idx``, as the fast inference kernels want). A group's
scale and zero point are computed when its first column is quantised, from the group's *current* (error-updated)
weights. Without act-order this is the reference's rule whenever each group starts a lazy batch (``group_size`` a
multiple of ``block_size``, e.g. both 128); otherwise the reference reads weights that still miss the pending
updates of the current batch, so its result depends on ``block_size`` and ours does not. With
``static_groups=True`` they are computed up front from the original weights (AutoGPTQ's ``static_groups``).
AutoGPTQ's other act-order mode (groups of consecutive *permuted* columns, with a scrambled ``g_idx``) is not
offered.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from llmbook.compression.calibration import LinearStats
from llmbook.compression.quantize import QuantSpec, dequantize, qparams, quantize


@dataclass(kw_only=True)
class GPTQResult:
    """A weight matrix (out, in) quantised by GPTQ, everything in the original column order."""

    weight: torch.Tensor  # (out, in) float32: dequantize(codes, scale, zero) per column's group, the weight to use
    codes: torch.Tensor  # (out, in) int32 integer codes on the QuantSpec grid
    scale: torch.Tensor  # (out, G) float32, G groups of original columns ((1, 1) for one scale per tensor)
    zero: torch.Tensor  # (out, G) float32 zero points (0 for symmetric grids), same layout as scale
    perm: torch.Tensor | None  # (in,) int64 act-order: perm[k] is the k-th column quantised; None: left to right
    loss: float  # sum of (w - w_hat)^2 / (2 [H_F^-1]_qq) over all weights: the algorithm's own estimate

    def dequantized(self) -> torch.Tensor:
        """``s (q - z)`` rebuilt from codes, scales and zero points (equals :attr:`weight` exactly)."""
        return dequantize_groups(self.codes, self.scale, self.zero)


def expand_groups(t: torch.Tensor, in_features: int) -> torch.Tensor:
    """Per-group values (rows, G) repeated to per-column values (rows, in): column j takes group j // (in / G)."""
    return t.repeat_interleave(in_features // t.shape[1], dim=1)


def dequantize_groups(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """``w_hat = s (q - z)`` for codes (out, in) with per-group scale and zero (out or 1, G)."""
    in_features = codes.shape[1]
    return dequantize(codes, expand_groups(scale, in_features), expand_groups(zero, in_features))


def _check_inputs(weight: torch.Tensor, hessian: torch.Tensor, spec: QuantSpec, block_size: int, damp: float) -> int:
    if weight.dim() != 2:
        raise ValueError(f"weight must be a matrix (out, in), got shape {tuple(weight.shape)}")
    in_features = weight.shape[1]
    if tuple(hessian.shape) != (in_features, in_features):
        raise ValueError(
            f"hessian has shape {tuple(hessian.shape)} but the weight has {in_features} input columns: "
            f"pass the ({in_features}, {in_features}) Hessian of this layer's inputs (LinearStats.hessian)"
        )
    if not torch.isfinite(hessian).all():
        raise ValueError("hessian has NaN or inf entries: check the calibration activations (overflow in fp16?)")
    if block_size < 1:
        raise ValueError(f"block_size={block_size}: must be a positive number of columns (128 is the usual)")
    if damp < 0:
        raise ValueError(f"damp={damp}: the dampening fraction of mean(diag H) must be >= 0 (0.01 is the usual)")
    return spec.group_columns(in_features)  # the QuantSpec's own error when group_size does not divide `in`


def inverse_hessian_factor(hessian: torch.Tensor, damp: float) -> torch.Tensor:
    """The upper Cholesky factor ``U`` of ``(H + lambda I)^{-1}``, ``lambda = damp * mean(diag H)`` (float64).

    Row ``q`` of ``U`` times ``U_qq`` is row ``q`` of the inverse Hessian of the columns ``q, q+1, ...``
    once the columns before ``q`` are fixed (arXiv:2210.17323, step 3)."""
    h = hessian.double().clone()
    h.diagonal().add_(damp * h.diagonal().mean())
    lower, info = torch.linalg.cholesky_ex(h)
    if info.item() != 0:
        raise ValueError(
            f"the dampened Hessian is not positive definite (damp={damp}): raise damp (e.g. 0.1) "
            "or calibrate on more tokens"
        )
    return torch.linalg.cholesky(torch.cholesky_inverse(lower), upper=True)


def gptq_quantize(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    spec: QuantSpec,
    *,
    block_size: int = 128,
    act_order: bool = True,
    damp: float = 0.01,
    static_groups: bool = False,
) -> GPTQResult:
    """Quantise ``weight`` (out, in) onto the grid of ``spec`` by GPTQ (arXiv:2210.17323), minimising
    ``||(W - W_hat) X^T||^2`` for inputs whose Hessian is ``hessian`` (in, in) = ``2 X^T X / N``.

    Inputs that never fire (``H_ii = 0``) get ``H_ii = 1`` and weight 0. ``block_size`` only changes speed (lazy
    batches), not the result; ``act_order`` quantises columns by decreasing ``H_ii``; ``damp`` is the fraction of
    ``mean(diag H)`` added to the diagonal; ``static_groups`` fixes group scales from the original weights up front.
    """
    g = _check_inputs(weight, hessian, spec, block_size, damp)
    out_features, in_features = weight.shape
    device = weight.device
    w = weight.detach().float().clone()  # (out, in), later in processing order
    h = hessian.detach().to(device=device, dtype=torch.float64).clone()

    dead = h.diagonal() == 0
    h.diagonal()[dead] = 1.0
    w[:, dead] = 0.0

    # Scales fixed before the loop: one per tensor or per row, or every group's from the original weights.
    n_groups = in_features // g
    rows = 1 if spec.granularity == "tensor" else out_features
    scale = torch.ones(rows, n_groups, device=device)  # (rows, G)
    zero = torch.zeros(rows, n_groups, device=device)  # (rows, G)
    started = [False] * n_groups
    if spec.granularity == "tensor":
        s, z = qparams(w.reshape(1, -1), spec)  # (1, out * in) -> (1, 1)
        scale[:], zero[:], started = s, z, [True]
    elif spec.granularity == "channel" or static_groups:
        s, z = qparams(w.reshape(out_features, n_groups, g), spec)  # (out, G, g) -> (out, G, 1)
        scale[:], zero[:], started = s.squeeze(-1), z.squeeze(-1), [True] * n_groups

    perm = None
    if act_order:
        perm = torch.argsort(h.diagonal(), descending=True, stable=True)
        w, h = w[:, perm], h[perm][:, perm]
    order = perm if perm is not None else torch.arange(in_features, device=device)  # order[k]: k-th column quantised
    position = torch.argsort(order)  # position[j]: when original column j is quantised
    group_of = (order // g).tolist()  # group of the k-th quantised column

    u = inverse_hessian_factor(h, damp).float()  # (in, in) upper, in processing order
    codes = torch.zeros(out_features, in_features, dtype=torch.int32, device=device)
    w_hat = torch.zeros_like(w)
    loss = 0.0

    for i1 in range(0, in_features, block_size):
        i2 = min(i1 + block_size, in_features)
        w1 = w[:, i1:i2].clone()  # (out, b) the block, kept up to date column by column
        err1 = torch.zeros_like(w1)  # (out, b) scaled errors, applied to the columns after the block at its end
        u1 = u[i1:i2, i1:i2]
        d1 = u1.diagonal().tolist()  # U_qq: sqrt([H_F^-1]_qq) of each column when its turn comes
        for i in range(i2 - i1):
            k = i1 + i
            group = group_of[k]
            if not started[group]:  # first column of this group: its scale from the group's current weights
                cols = position[group * g : (group + 1) * g]  # (g,) processing positions, all >= k
                current = w[:, cols] - err1[:, :i] @ u[i1:k][:, cols]  # (out, g) pending lazy updates applied
                s, z = qparams(current, spec)
                scale[:, group], zero[:, group] = s.squeeze(1), z.squeeze(1)
                started[group] = True
            s, z = scale[:, group : group + 1], zero[:, group : group + 1]  # (rows, 1)
            col = w1[:, i : i + 1]  # (out, 1)
            q = quantize(col, s, z, spec)
            q_hat = dequantize(q, s, z)
            codes[:, k : k + 1] = q
            w_hat[:, k : k + 1] = q_hat
            err = (col - q_hat) / d1[i]  # (out, 1)
            err1[:, i : i + 1] = err
            w1[:, i:].addmm_(err, u1[i : i + 1, i:], alpha=-1)  # OBS update of the rest of the block
        loss += float(err1.double().square().sum()) / 2
        w[:, i2:].addmm_(err1, u[i1:i2, i2:], alpha=-1)  # the block's updates, once, on all later columns

    if perm is not None:
        inverse = torch.argsort(perm)
        codes, w_hat = codes[:, inverse], w_hat[:, inverse]
    return GPTQResult(weight=w_hat, codes=codes, scale=scale, zero=zero, perm=perm, loss=loss)


def gptq_linear(layer: nn.Linear, stats: LinearStats, spec: QuantSpec, **kwargs: object) -> GPTQResult:
    """GPTQ on ``layer`` with the Hessian of ``stats``; the dequantised weight replaces ``layer.weight`` in place.

    Usable as ``compress_linear`` in :func:`~llmbook.compression.calibration.compress_sequentially`:
    ``compress_sequentially(model, batches, lambda name, layer, stats: gptq_linear(layer, stats, spec))``.
    ``kwargs`` go to :func:`gptq_quantize` (``block_size``, ``act_order``, ``damp``, ``static_groups``).
    """
    if not isinstance(layer, nn.Linear):
        raise TypeError(f"gptq_linear quantises nn.Linear layers, got {type(layer).__name__}")
    if stats.in_features != layer.in_features:
        raise ValueError(
            f"stats gathered on {stats.in_features} input features, the layer has {layer.in_features}: "
            "pass the LinearStats of this layer's own inputs"
        )
    if stats.rows == 0:
        raise ValueError("stats saw no calibration tokens: run calibration batches through the model first")
    result = gptq_quantize(layer.weight, stats.hessian, spec, **kwargs)  # type: ignore[arg-type]
    with torch.no_grad():
        layer.weight.copy_(result.weight.to(layer.weight.dtype))
    return result


def layer_output_error(weight: torch.Tensor, weight_hat: torch.Tensor, stats: LinearStats) -> float:
    """Mean squared output error per calibration token, ``||(W - W_hat) X^T||_F^2 / N``, computed from
    ``X^T X`` as ``trace((W - W_hat) X^T X (W - W_hat)^T) / N`` (float64): compares methods layer by layer."""
    if weight.shape != weight_hat.shape:
        raise ValueError(f"weight {tuple(weight.shape)} and weight_hat {tuple(weight_hat.shape)} differ in shape")
    if weight.shape[-1] != stats.in_features:
        raise ValueError(f"weight has {weight.shape[-1]} input columns, stats {stats.in_features}")
    if stats.rows == 0:
        raise ValueError("stats saw no calibration tokens: run calibration batches through the model first")
    delta = (weight.detach().double() - weight_hat.detach().double()).cpu()  # (out, in)
    return float(((delta @ stats.xtx) * delta).sum() / stats.rows)
