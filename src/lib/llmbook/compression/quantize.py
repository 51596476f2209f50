"""Integer quantisation by round-to-nearest (RTN): the grid every weight-quantisation method builds on.

A weight ``w`` is stored as a ``b``-bit integer ``q`` with a scale ``s`` (and a zero point ``z``) shared by a
group of values, and read back as ``w_hat = s (q - z)``:

- **symmetric**: ``s = max|w| / (2^(b-1) - 1)``, ``z = 0``, ``q = clamp(round(w / s), -2^(b-1), 2^(b-1) - 1)``;
  with ``full_range`` the divisor is ``2^(b-1) - 1/2`` so that the code ``-2^(b-1)`` is used too (torchao);
- **asymmetric**: the range ``[min(w, 0), max(w, 0)]`` is cut into ``2^b - 1`` steps,
  ``s = (max - min) / (2^b - 1)``, ``z = round(-min / s)``, ``q = clamp(round(w / s) + z, 0, 2^b - 1)``
  (the convention of GPTQ's reference code, arXiv:2210.17323); with ``float_zero`` the range is ``[min(w), max(w)]``
  and ``z = -min / s`` is kept unrounded, ``q = clamp(round(w / s + z), 0, 2^b - 1)`` (quanto, HQQ).

The group is the whole tensor (``granularity="tensor"``), one output row (``"channel"``), or ``group_size``
consecutive input columns of one row (``"group"``, e.g. 128 as in GPTQ/AWQ checkpoints). Smaller groups
follow the weights more closely and cost more scales: ``bits + 16 (or 32) / group_size`` bits per weight.

Production libraries on the same grid (the tests compare their dequantised weights with ours; rounding ``w / s``
and ``w * (1 / s)`` may differ in the last float32 bit, so the codes agree unless a value sits within an ulp of a tie):

- bitsandbytes ``int8_vectorwise_quant`` (LLM.int8(), absmax / 127 per row) and optimum-quanto ``qint8`` weights:
  ``QuantSpec(bits=8, granularity="channel")``;
- torchao ``Int8WeightOnlyConfig()`` (absmax / 127.5, codes -128..127): the same with ``full_range=True``;
  ``IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(32))``:
  ``QuantSpec(bits=4, group_size=32, full_range=True)``; with ``mapping_type=MappingType.ASYMMETRIC`` it is
  ``symmetric=False`` (torchao's codes are ours minus 8, its zero points too);
- optimum-quanto ``qint4`` weights (groups of 128, a float shift ``-min``) and HQQ with ``optimize=False,
  round_zero=False, axis=1``: ``QuantSpec(bits=4, symmetric=False, float_zero=True)``. HQQ's 4-bit default
  ``round_zero=True`` keeps the range ``[min, max]`` but rounds the zero point: our integer zero point whenever the
  group holds both signs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from llmbook.compression.nf4 import dequantize_4bit, quantize_4bit

Granularity = Literal["tensor", "channel", "group"]
SUPPORTED_BITS = (2, 3, 4, 8)
SCALE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@dataclass(frozen=True, kw_only=True)
class QuantSpec:
    """How a weight matrix (out, in) is quantised."""

    bits: int = 4  # 8, 4, 3 or 2 bits per weight
    symmetric: bool = True  # symmetric: zero point 0; asymmetric: a zero point per group follows shifted ranges
    granularity: Granularity = "group"  # which values share one scale
    group_size: int = 128  # columns per group when granularity == "group"
    full_range: bool = False  # symmetric only: s = max|w| / (2^(b-1) - 1/2) uses all 2^b codes (torchao's convention)
    float_zero: bool = False  # asymmetric only: range [min, max] with an unrounded zero point (quanto, HQQ)
    scale_dtype: torch.dtype = torch.float32  # scales (and float zeros) are rounded to this: float16 as in checkpoints

    def __post_init__(self) -> None:
        if self.bits not in SUPPORTED_BITS:
            raise ValueError(f"bits={self.bits}: supported bit widths are {SUPPORTED_BITS}")
        if self.granularity not in ("tensor", "channel", "group"):
            raise ValueError(f"granularity={self.granularity!r}: choose 'tensor', 'channel' or 'group'")
        if self.granularity == "group" and self.group_size < 1:
            raise ValueError(f"group_size={self.group_size}: must be a positive number of columns")
        if self.full_range and not self.symmetric:
            raise ValueError("full_range applies to symmetric quantisation only; drop it or set symmetric=True")
        if self.float_zero and self.symmetric:
            raise ValueError("float_zero applies to asymmetric quantisation only; drop it or set symmetric=False")
        if self.scale_dtype not in SCALE_DTYPES:
            raise ValueError(f"scale_dtype={self.scale_dtype}: choose one of {SCALE_DTYPES}")

    @property
    def qmin(self) -> int:
        return -(2 ** (self.bits - 1)) if self.symmetric else 0

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.symmetric else 2**self.bits - 1

    def group_columns(self, in_features: int) -> int:
        """Columns per group for a matrix with ``in_features`` columns; a clear error if they do not divide."""
        if self.granularity != "group":
            return in_features
        if in_features % self.group_size:
            raise ValueError(
                f"group_size={self.group_size} does not divide the {in_features} input columns; "
                f"pick a divisor of {in_features} (e.g. {_largest_divisor(in_features, self.group_size)})"
            )
        return self.group_size

    def bits_per_weight(self, scale_bits: int = 16) -> float:
        """Storage cost per weight including the scales (and zero points) of its group, for a wide matrix."""
        per_group = scale_bits + (0 if self.symmetric else self.bits)
        if self.granularity == "group":
            return self.bits + per_group / self.group_size
        return float(self.bits)  # one scale per row or tensor: negligible on a wide matrix


def _largest_divisor(n: int, at_most: int) -> int:
    return max(d for d in range(1, min(n, at_most) + 1) if n % d == 0)


def _round_to(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x`` rounded to ``dtype`` and back to float32: the value a checkpoint storing ``dtype`` reads back."""
    return x if dtype == torch.float32 else x.to(dtype).float()


def qparams(w: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, zero)`` for values grouped along the last dimension of ``w`` (..., g) -> (..., 1) each."""
    w = w.float()
    if spec.symmetric:
        scale = w.abs().amax(dim=-1, keepdim=True) / (spec.qmax + 0.5 if spec.full_range else spec.qmax)
        scale = _round_to(torch.where(scale > 0, scale, torch.ones_like(scale)), spec.scale_dtype)
        return scale, torch.zeros_like(scale)  # an all-zero group quantises to zeros
    low, high = w.amin(dim=-1, keepdim=True), w.amax(dim=-1, keepdim=True)
    if not spec.float_zero:
        low, high = low.clamp(max=0), high.clamp(min=0)
    scale = (high - low) / spec.qmax
    scale = _round_to(torch.where(scale > 0, scale, torch.ones_like(scale)), spec.scale_dtype)
    if spec.float_zero:
        return scale, _round_to(-low / scale, spec.scale_dtype)  # a constant group c: scale 1, zero -c, exact
    return scale, torch.round(-low / scale)


def quantize(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """The integer codes ``clamp(round(w / s) + z, qmin, qmax)`` (int32; broadcasting scale and zero);
    ``round(w / s + z)`` for an unrounded (``float_zero``) zero point.

    With ``full_range`` the group's extremes sit exactly on a tie, ``+-(2^(b-1) - 1/2)`` steps, so float32 rounding
    decides their codes: there ``w * (1 / s)`` is computed as torchao does, which keeps the codes identical to it.
    """
    scaled = w.float() * (1.0 / scale) if spec.full_range else w.float() / scale
    q = torch.round(scaled + zero) if spec.float_zero else torch.round(scaled) + zero
    return torch.clamp(q, spec.qmin, spec.qmax).to(torch.int32)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """``w_hat = s (q - z)`` in float32."""
    return scale * (q.float() - zero)


def grouped(w: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """A weight (out, in) viewed as (groups_per_tensor_row, ..., g): the values that share one scale in the last dim."""
    if w.dim() != 2:
        raise ValueError(f"expected a weight matrix (out, in), got shape {tuple(w.shape)}")
    out_features, in_features = w.shape
    if spec.granularity == "tensor":
        return w.reshape(1, 1, -1)  # (1, 1, out * in)
    g = spec.group_columns(in_features)
    return w.reshape(out_features, in_features // g, g)  # (out, in / g, g)


@dataclass(kw_only=True)
class QuantizedTensor:
    """A weight (out, in) as RTN codes plus one scale (and zero point) per group: what a checkpoint stores.

    ``scale`` and ``zero`` are (1, 1) for a whole tensor, (out, 1) per channel, (out, in / g) per group.
    """

    codes: torch.Tensor  # int32 (out, in), each in [spec.qmin, spec.qmax]
    scale: torch.Tensor  # float32 (values representable in spec.scale_dtype), one per group
    zero: torch.Tensor  # float32 zero points (integers unless spec.float_zero), one per group
    spec: QuantSpec
    shape: tuple[int, int]  # (out, in)
    dtype: torch.dtype = torch.float32  # dtype of the original weight, restored by dequantize()

    def dequantize(self) -> torch.Tensor:
        """``s (q - z)`` per group, (out, in) in the original dtype; equals :func:`fake_quantize`."""
        groups = grouped(self.codes, self.spec)  # (G0, G1, g): the codes that share each scale
        w_hat = dequantize(groups, self.scale.unsqueeze(-1), self.zero.unsqueeze(-1))
        return w_hat.reshape(self.shape).to(self.dtype)

    @property
    def n_groups(self) -> int:
        return self.scale.numel()


def quantize_weight(w: torch.Tensor, spec: QuantSpec) -> QuantizedTensor:
    """Quantise a weight (out, in) by RTN: codes, scales and zero points of every group."""
    groups = grouped(w.detach(), spec)  # (G0, G1, g)
    scale, zero = qparams(groups, spec)  # (G0, G1, 1) each
    codes = quantize(groups, scale, zero, spec).reshape(w.shape)
    return QuantizedTensor(
        codes=codes, scale=scale.squeeze(-1), zero=zero.squeeze(-1), spec=spec, shape=tuple(w.shape), dtype=w.dtype
    )


def fake_quantize(w: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """Quantise and dequantise ``w`` (out, in) by RTN: the float weights a quantised model computes with."""
    return quantize_weight(w, spec).dequantize()


def fake_quantize_4bit(
    w: torch.Tensor, code: str = "nf4", blocksize: int = 64, double_quant: bool = False
) -> torch.Tensor:
    """Quantise and dequantise ``w`` with a 16-level code table (``"nf4"``, ``"fp4"`` or ``"int4"``), block-wise
    absmax over ``blocksize`` consecutive values (QLoRA, arXiv:2305.14314): the 4-bit data types of
    :mod:`llmbook.compression.nf4` behind the same fake-quantisation entry point as the integer grid.

    ``code="int4"`` is the symmetric 4-bit grid with ``group_size=blocksize`` (levels ``k * max|w| / 7``).
    """
    return dequantize_4bit(quantize_4bit(w, code=code, blocksize=blocksize, double_quant=double_quant))
