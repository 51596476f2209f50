"""LLM.int8(): 8-bit matrix multiplication with a 16-bit path for outlier features (Dettmers et al. 2022,
arXiv:2208.07339).

Both operands are quantised *vector-wise* by absmax: each weight row (output feature) and each input row (token)
gets its own scale, ``q = round(127 x / max|x|)``. The int8 product is accumulated in int32 and rescaled by the
outer product of the two scale vectors. A few input *columns* (hidden features) of large transformers carry
values far larger than the rest; one such value blows up its token's scale and flattens every other feature of
that token to zero. LLM.int8() takes the columns where any ``|x| >= threshold`` (6.0 in the paper) out of the
int8 product and multiplies them in floating point::

    Y = X[:, O] W[:, O]^T  +  (s_X s_W^T / 127^2) * (Q(X[:, ~O]) Q(W[:, ~O])^T)        (O: outlier columns)

Everything here is simulated in float32 around an exact integer product; the production kernels are
bitsandbytes' ``Linear8bitLt`` (the tests compare with its CPU path).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from llmbook.compression.calibration import decoder_blocks, linear_layers

INT8_MAX = 127  # absmax maps to +-127; -128 is never used, so the grid is symmetric
DEFAULT_THRESHOLD = 6.0  # the paper's outlier threshold on |x|
OutlierWeights = Literal["fp", "int8"]


def int8_vectorwise_quant(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-wise absmax int8: ``(codes, absmax)`` with ``codes = round(x * (127 / absmax))`` (int8, shape of x)
    and ``absmax = max_j |x_ij|`` (float32, one per row). The same expression as bitsandbytes'
    ``int8_vectorwise_quant`` (threshold 0), so the codes agree bit for bit; an all-zero row gets codes 0."""
    x = x.float()
    absmax = x.abs().amax(dim=-1)
    ratio = INT8_MAX / absmax.unsqueeze(-1)
    ratio = torch.where(absmax.unsqueeze(-1) > 0, ratio, torch.zeros_like(ratio))  # 0 rows: 127/0 = inf -> 0
    return torch.round(x * ratio).to(torch.int8), absmax


def int8_vectorwise_dequant(codes: torch.Tensor, absmax: torch.Tensor) -> torch.Tensor:
    """``codes * absmax / 127`` (float32): the values the int8 codes stand for."""
    return codes.float() * (absmax.float().unsqueeze(-1) / INT8_MAX)


def int8_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b^T`` for int8 ``a`` (N, in) and ``b`` (out, in), accumulated exactly: int32 (N, out).

    A float64 matmul of the integer values, exact on any device because every partial sum (at most
    ``in * 127^2``) stays far below 2^53; ``torch._int_mm`` (int8 kernels: CUDA, CPU from torch 2.6, slow
    there without AVX-512) gives the same numbers; float32 is only exact while ``in * 127^2 < 2^24`` (in < 1040)."""
    if a.dtype != torch.int8 or b.dtype != torch.int8:
        raise TypeError(f"int8_matmul needs int8 operands, got {a.dtype} and {b.dtype}")
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"expected a (N, in) and b (out, in), got {tuple(a.shape)} and {tuple(b.shape)}")
    return (a.double() @ b.double().t()).to(torch.int32)


def outlier_columns(x: torch.Tensor, threshold: float) -> torch.Tensor:
    """Boolean mask (in,) of the input columns of ``x`` (..., in) holding any ``|x| >= threshold``."""
    return (x.abs() >= threshold).reshape(-1, x.shape[-1]).any(dim=0)


def int8_mixed_matmul(
    x: torch.Tensor,
    weight_codes: torch.Tensor,
    weight_absmax: torch.Tensor,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    outlier_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """LLM.int8()'s ``x W^T`` for ``x`` (N, in) and a vector-wise int8 weight (out, in) -> float32 (N, out).

    Columns with any ``|x| >= threshold`` are multiplied in float with ``outlier_weight`` (the original weight;
    None: the dequantised int8 weight, as bitsandbytes does when it keeps no 16-bit copy); the rest are zeroed,
    quantised per row (token) over the remaining columns, multiplied in int32 and rescaled. ``threshold = inf``
    is plain vector-wise int8."""
    x = x.float()
    mask = outlier_columns(x, threshold)  # (in,)
    inliers = x.masked_fill(mask, 0.0)  # outlier columns leave the int8 product and its row scales
    x_codes, x_absmax = int8_vectorwise_quant(inliers)
    acc = int8_matmul(x_codes, weight_codes)  # (N, out) int32
    out = acc.float() * (x_absmax.unsqueeze(-1) * weight_absmax.float().unsqueeze(0) / INT8_MAX**2)
    if mask.any():
        w_out = outlier_weight if outlier_weight is not None else int8_vectorwise_dequant(weight_codes, weight_absmax)
        out = out + x[:, mask] @ w_out[:, mask].float().t()
    return out


class Int8MixedLinear(nn.Module):
    """A frozen LLM.int8() linear layer: int8 vector-wise weights, outlier columns of the input in float.

    ``outlier_weights="fp"`` multiplies the outlier columns with the original weights (the paper's formula; it keeps
    a float copy of W, so this is a simulation of accuracy, not of memory); ``"int8"`` uses the dequantised int8
    columns like bitsandbytes' ``Linear8bitLt(has_fp16_weights=False)``."""

    def __init__(
        self, linear: nn.Linear, *, threshold: float = DEFAULT_THRESHOLD, outlier_weights: OutlierWeights = "fp"
    ) -> None:
        super().__init__()
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"Int8MixedLinear wraps an nn.Linear, got {type(linear).__name__}")
        if not threshold > 0:
            raise ValueError(f"threshold={threshold}: must be > 0 (math.inf turns the outlier path off)")
        if outlier_weights not in ("fp", "int8"):
            raise ValueError(f"outlier_weights={outlier_weights!r}: choose 'fp' or 'int8'")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.threshold = float(threshold)
        self.outlier_weights = outlier_weights
        weight = linear.weight.detach().float()
        codes, absmax = int8_vectorwise_quant(weight)  # (out, in) int8, (out,) float32
        self.register_buffer("weight_codes", codes)
        self.register_buffer("weight_absmax", absmax)
        self.register_buffer("fp_weight", weight.clone() if outlier_weights == "fp" else None)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)  # (B*T, C)
        out = int8_mixed_matmul(
            flat, self.weight_codes, self.weight_absmax, threshold=self.threshold, outlier_weight=self.fp_weight
        )
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, threshold={self.threshold}, "
            f"outlier_weights={self.outlier_weights!r}"
        )


def to_llm_int8(
    model: nn.Module, *, threshold: float = DEFAULT_THRESHOLD, outlier_weights: OutlierWeights = "fp"
) -> nn.Module:
    """Replace every ``nn.Linear`` inside the decoder blocks of a Hugging Face LLaMA-style model with an
    :class:`Int8MixedLinear` (in place; embeddings and the output head stay in float, as in bitsandbytes'
    ``load_in_8bit``). Returns the model."""
    for block in decoder_blocks(model):
        for name, layer in linear_layers(block).items():
            block.set_submodule(name, Int8MixedLinear(layer, threshold=threshold, outlier_weights=outlier_weights))
    return model


def outlier_fraction(x: torch.Tensor, threshold: float = DEFAULT_THRESHOLD) -> float:
    """Share of the input columns of ``x`` (..., in) that LLM.int8() would send through the float path."""
    if math.isinf(threshold):
        return 0.0
    return float(outlier_columns(x, threshold).float().mean())
