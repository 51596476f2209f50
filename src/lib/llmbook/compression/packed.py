"""Packed storage for RTN-quantised weights: the bytes a 4- or 8-bit checkpoint really holds.

:func:`llmbook.compression.quantize.fake_quantize` shows what a quantised layer computes; this module shows what it
stores. A ``b``-bit code needs ``b / 8`` bytes, so a layer (out, in) with groups of ``g`` columns takes

    out * in * b / 8  +  out * (in / g) * (scale bytes [+ zero-point bytes])

bytes instead of ``4 * out * in`` in float32: 4-bit codes with a float16 scale per 128 columns are
``0.5 + 2 / 128 = 0.516`` bytes per weight, 7.8x smaller than float32 (GPTQ, arXiv:2210.17323, and AWQ,
arXiv:2306.00978, checkpoints store this layout, with their own nibble orders).

4-bit codes are offset to be non-negative, ``u = q - qmin`` (a symmetric code -8..7 becomes 0..15), and go two
per byte along each row, **element 2i in the high nibble and 2i + 1 in the low nibble** (bitsandbytes' order, as
:func:`llmbook.compression.nf4.pack_nibbles`): ``byte = (u[2i] << 4) | u[2i + 1]``. 8-bit codes are stored as they
are: int8 when symmetric, uint8 when asymmetric. Integer zero points are stored as uint8; the scales and float
(``float_zero``) zero points in ``spec.scale_dtype`` (float16 as in GPTQ/AWQ checkpoints).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llmbook.compression.quantize import QuantizedTensor, QuantSpec, quantize_weight

PACKED_BITS = (4, 8)


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """Pack 4-bit values 0..15 (..., n), n even, two per uint8 byte (..., n / 2): element 2i in the high nibble."""
    if codes.shape[-1] % 2:
        raise ValueError(f"pack_int4 needs an even number of values in the last dimension; got shape {codes.shape}")
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) > 15):
        raise ValueError("pack_int4 packs values 0..15; offset signed codes first (u = q - qmin)")
    pairs = codes.to(torch.uint8).reshape(*codes.shape[:-1], -1, 2)  # (..., n / 2, 2): the two values of each byte
    return (pairs[..., 0] << 4) | pairs[..., 1]


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """The 4-bit values (..., 2 m) of ``packed`` (..., m) as uint8, inverse of :func:`pack_int4`."""
    pairs = torch.stack([packed >> 4, packed & 0xF], dim=-1)  # (..., m, 2)
    return pairs.reshape(*packed.shape[:-1], -1)  # (..., 2 m)


def _scale_shape(out_features: int, in_features: int, spec: QuantSpec) -> tuple[int, int]:
    if spec.granularity == "tensor":
        return (1, 1)
    return (out_features, in_features // spec.group_columns(in_features))


class PackedLinear(nn.Module):
    """A frozen linear layer holding its weight as packed 4- or 8-bit codes with per-group scales (buffers).

    ``forward`` dequantises the weight and calls ``F.linear``: it computes exactly what the float layer with
    ``fake_quantize(weight, spec)`` computes, from ``nbytes()`` of storage. Build it with :meth:`from_linear`,
    or with the constructor (zero-filled buffers of the right shapes) and ``load_state_dict``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        spec: QuantSpec,
        *,
        bias: bool = True,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        if spec.bits not in PACKED_BITS:
            raise ValueError(f"PackedLinear stores {PACKED_BITS}-bit codes; got bits={spec.bits} (use fake_quantize)")
        if spec.bits == 4 and in_features % 2:
            raise ValueError(f"4-bit packing needs an even in_features; got {in_features}")
        self.in_features, self.out_features, self.spec, self.weight_dtype = in_features, out_features, spec, dtype
        scale_shape = _scale_shape(out_features, in_features, spec)  # also checks that the group size divides
        if spec.bits == 4:
            codes = torch.zeros(out_features, in_features // 2, dtype=torch.uint8)
        else:
            codes = torch.zeros(out_features, in_features, dtype=torch.int8 if spec.symmetric else torch.uint8)
        self.register_buffer("codes", codes)
        self.register_buffer("scale", torch.ones(scale_shape, dtype=spec.scale_dtype))
        zero = None
        if not spec.symmetric:
            zero = torch.zeros(scale_shape, dtype=spec.scale_dtype if spec.float_zero else torch.uint8)
        self.register_buffer("zero", zero)
        self.register_buffer("bias", torch.zeros(out_features, dtype=dtype) if bias else None)

    @classmethod
    def from_linear(cls, linear: nn.Linear, spec: QuantSpec) -> PackedLinear:
        """Quantise ``linear.weight`` by RTN with ``spec`` and pack it; the bias is kept in its dtype."""
        layer = cls(
            linear.in_features, linear.out_features, spec, bias=linear.bias is not None, dtype=linear.weight.dtype
        )
        layer.set_weight(quantize_weight(linear.weight.detach(), spec))
        if linear.bias is not None:
            layer.bias.copy_(linear.bias.detach())
        return layer

    @torch.no_grad()
    def set_weight(self, q: QuantizedTensor) -> None:
        """Store the codes, scales and zero points of ``q`` (shape and spec must match this layer)."""
        if q.shape != (self.out_features, self.in_features) or q.spec != self.spec:
            raise ValueError(
                f"weight of shape {q.shape} with {q.spec} does not fit this layer: "
                f"({self.out_features}, {self.in_features}) with {self.spec}"
            )
        stored = q.codes - self.spec.qmin if self.spec.bits == 4 else q.codes  # offset to 0..15 for the nibbles
        self.codes.copy_(pack_int4(stored) if self.spec.bits == 4 else stored.to(self.codes.dtype))
        self.scale.copy_(q.scale.reshape(self.scale.shape))
        if self.zero is not None:
            self.zero.copy_(q.zero.reshape(self.zero.shape))

    def quantized_tensor(self) -> QuantizedTensor:
        """The stored weight unpacked: int32 codes (out, in), float32 scales and zero points."""
        codes = unpack_int4(self.codes).int() + self.spec.qmin if self.spec.bits == 4 else self.codes.int()
        scale = self.scale.float()
        zero = torch.zeros_like(scale) if self.zero is None else self.zero.float()
        shape = (self.out_features, self.in_features)
        return QuantizedTensor(
            codes=codes, scale=scale, zero=zero, spec=self.spec, shape=shape, dtype=self.weight_dtype
        )

    def weight_dequantized(self) -> torch.Tensor:
        """The weight the layer computes with, (out, in) in the original weight dtype."""
        return self.quantized_tensor().dequantize()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.weight_dequantized().to(x.dtype), bias)

    def nbytes(self, include_bias: bool = True) -> int:
        """Bytes held in the buffers: codes, scales, zero points (and the bias unless ``include_bias=False``)."""
        return sum(b.numel() * b.element_size() for name, b in self.named_buffers() if include_bias or name != "bias")

    def extra_repr(self) -> str:
        s = self.spec
        group = f", group_size={s.group_size}" if s.granularity == "group" else ""
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bits={s.bits}, "
            f"symmetric={s.symmetric}, granularity={s.granularity}{group}, bias={self.bias is not None}"
        )
