"""NF4: the 4-bit NormalFloat data type of QLoRA, with block-wise absmax scaling and double quantisation.

QLoRA (Dettmers et al. 2023, arXiv:2305.14314) stores a weight ``W`` in blocks of ``B = 64`` values. Each
block keeps one scale ``a = max |w|`` and, per value, the 4-bit index of the nearest of 16 levels ``q_j``:

    code(w) = argmin_j | w / a - q_j |,        w_hat = q_code(w) * a.

For NF4 the levels are quantiles of N(0, 1), so each bin holds equal probability mass under a normal law:
8 positive levels ``Phi^-1(p_i)``, ``p_i = linspace(delta, 1/2, 9)[:-1]``, 7 negative ones from
``linspace(delta, 1/2, 8)[:-1]``, and an exact zero, divided by the largest, with ``delta = 0.9677083``
(bitsandbytes' ``create_normal_map``). Double quantisation stores the block scales themselves in 8 bits:
``a - mean(a)`` is quantised in blocks of 256 with the signed dynamic 8-bit tree type (Dettmers 2015,
arXiv:1511.04561), which brings the scale cost from 32/64 = 0.5 to 8/64 + 32/(64 * 256) ~ 0.127 bit per value.

Everything here reproduces bitsandbytes bit for bit (its CPU path): the code tables, the packing (two codes
per byte, the first value in the high nibble), the rounding (the index of the interval between midpoints of
the sorted levels, a value exactly on a midpoint going to the lower level; ``w * (1 / a)`` in float32 for full
blocks, ``w / a`` for a trailing partial block), the 8-bit rounding of the scales (bnb's CPU kernel goes through
a 65536-point lookup table, :func:`lut_8bit`), and dequantisation (``q_j * a`` in float32, then cast).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from scipy.stats import norm
from torch import nn

CODE_NAMES = ("nf4", "fp4", "int4")
NF4_OFFSET = 0.9677083  # outermost quantile of NF4 (bitsandbytes' default; ~1.85 standard deviations)
ABSMAX_BLOCKSIZE = 256  # double quantisation: one float32 scale per 256 8-bit block scales
LUT_SIZE = 65536  # grid points of bnb's CPU 8-bit quantiser
_TINY = 1e-38  # bnb's floor on a block scale before dividing, so an all-zero block scales to zeros


# ---------------------------------------------------------------------------------------------------------------
# Code tables


def nf4_code(offset: float = NF4_OFFSET) -> torch.Tensor:
    """The 16 NF4 levels, ascending in [-1, 1]: normal quantiles, 8 positive, 7 negative and an exact zero."""
    # The quantile grid is float32 as in bnb; a float64 grid moves some levels by one float32 ulp (1.2e-7).
    pos = torch.linspace(offset, 0.5, 9)[:-1].double().numpy()
    neg = torch.linspace(offset, 0.5, 8)[:-1].double().numpy()
    levels = norm.ppf(pos).tolist() + [0.0] + (-norm.ppf(neg)).tolist()
    code = torch.tensor(levels, dtype=torch.float32).sort().values
    return code / code.max()


def fp4_code() -> torch.Tensor:
    """bitsandbytes' FP4 levels indexed by their bit pattern ``s e1 e0 m`` (not sorted), normalised to [-1, 1].

    Exponent field ``e != 0`` gives ``2^(4 - e) * (1 + m / 2)`` (8, 12, 4, 6, 2, 3), ``e = 0`` is subnormal
    ``m / 16`` (0, 0.0625); the sign bit negates; everything is divided by the largest value, 12.
    """
    magnitudes = []
    for e in range(4):
        for m in range(2):
            magnitudes.append(m / 16 if e == 0 else 2.0 ** (4 - e) * (1 + m / 2))
    code = torch.tensor(magnitudes + [-v if v else 0.0 for v in magnitudes], dtype=torch.float32)
    return code / code.abs().max()


def int4_code() -> torch.Tensor:
    """Symmetric absmax int4, ascending: the integers -8..7 over 7, so index ``k + 8`` means ``k * absmax / 7``.

    Absmax scaling keeps ``w / a`` in [-1, 1], so -8/7 is never chosen: 15 levels are used, as in the
    usual symmetric int4 scheme with scale ``absmax / 7`` and round-to-nearest.
    """
    return torch.arange(-8, 8, dtype=torch.float32) / 7


def dynamic_code(signed: bool = True, max_exponent_bits: int = 7, total_bits: int = 8) -> torch.Tensor:
    """bitsandbytes' dynamic 8-bit tree type (arXiv:1511.04561), ascending; the double-quantisation map.

    A value is ``+-10^(-k) * f``: the leading zeros after the sign give the decimal exponent ``k``, and the bits
    after the indicator bit a linear fraction ``f`` (bin centres of ``linspace(0.1, 1, 2^j + 1)``); exponent
    ``10^0`` gets the most fraction bits. Plus 0 and 1.0: 127 negative, 0, 127 positive and 1 for signed.
    """
    non_sign_bits = total_bits - 1
    values: list[float] = []
    for i in range(max_exponent_bits):
        n_fraction = 2 ** (i + non_sign_bits - max_exponent_bits + (0 if signed else 1)) + 1
        edges = torch.linspace(0.1, 1, n_fraction, dtype=torch.float32)
        centres = (edges[:-1] + edges[1:]) / 2.0
        scale = 10 ** (-(max_exponent_bits - 1) + i)
        values += (scale * centres).tolist()
        if signed:
            values += (-scale * centres).tolist()
    extra = 2 ** (non_sign_bits - max_exponent_bits) - 1  # all-zero exponent without indicator bit (0 for 8 bits)
    if extra > 0:
        edges = torch.linspace(0.1, 1, extra + 1, dtype=torch.float32)
        centres = (edges[:-1] + edges[1:]) / 2.0
        values += (scale * centres).tolist()
        if signed:
            values += (-scale * centres).tolist()
    values += [0.0, 1.0]
    values += [0.0] * (256 - len(values))
    return torch.tensor(sorted(values), dtype=torch.float32)


_CODE_FNS = {"nf4": nf4_code, "fp4": fp4_code, "int4": int4_code}
_CODE_CACHE: dict[str, torch.Tensor] = {}


def code_table(name: str) -> torch.Tensor:
    """The 16 levels of ``name`` ("nf4", "fp4" or "int4"), indexed by the 4-bit code (a cached CPU tensor)."""
    if name not in _CODE_FNS:
        raise ValueError(f"unknown 4-bit code {name!r}; expected one of {CODE_NAMES}")
    if name not in _CODE_CACHE:
        _CODE_CACHE[name] = _CODE_FNS[name]()
    return _CODE_CACHE[name]


# ---------------------------------------------------------------------------------------------------------------
# Rounding and packing


def nearest_index(scaled: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """Index into ``code`` of the level nearest each value of ``scaled`` (int64), as bnb's 4-bit quantiser does.

    The boundaries are the float32 midpoints of the sorted levels; a value exactly on one goes to the lower level
    (``bucketize`` with ``right=False``). Unsorted tables (FP4) are searched sorted and mapped back.
    """
    code = code.to(scaled.device)
    order = torch.argsort(code)
    bounds = (code[order[:-1]] + code[order[1:]]) / 2
    return order[torch.bucketize(scaled, bounds)]


def pack_nibbles(idx: torch.Tensor) -> torch.Tensor:
    """Pack 4-bit indices (even length) two per byte: element ``2i`` in the high nibble, ``2i + 1`` in the low."""
    q = idx.to(torch.uint8)
    return (q[0::2] << 4) | q[1::2]


def unpack_nibbles(packed: torch.Tensor, n: int) -> torch.Tensor:
    """The first ``n`` 4-bit indices (int64) of ``packed``, inverse of :func:`pack_nibbles`."""
    idx = torch.stack([packed >> 4, packed & 0xF], dim=-1).reshape(-1)
    return idx[:n].long()


def _blocks(flat: torch.Tensor, blocksize: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``flat`` into full blocks ``(n_full, blocksize)`` and the trailing partial block (maybe empty)."""
    full = flat.numel() - flat.numel() % blocksize
    return flat[:full].reshape(-1, blocksize), flat[full:]


def lut_8bit(code: torch.Tensor) -> torch.Tensor:
    """Nearest level of ``code`` (ascending) for each of 65536 evenly spaced points of [-1, 1] (int64).

    bnb's CPU 8-bit quantiser looks values up in this table instead of searching the code: a point exactly on
    a float32 midpoint takes the lower level.
    """
    midpoints = 0.5 * (code[:-1] + code[1:])
    grid = -1.0 + (2.0 * torch.arange(LUT_SIZE, dtype=torch.float32)) / (LUT_SIZE - 1)
    return torch.searchsorted(midpoints.cpu(), grid)


def quantize_blockwise_8bit(
    x: torch.Tensor, code: torch.Tensor, blocksize: int = ABSMAX_BLOCKSIZE
) -> tuple[torch.Tensor, torch.Tensor]:
    """8-bit block-wise absmax quantisation of a vector against an ascending 256-level ``code``.

    Returns ``(codes uint8, absmax float32 per block)``. As bnb's CPU kernel: ``v = x * (1 / a)`` is rounded to
    the nearest of 65536 grid points, ``trunc((v + 1) / 2 * 65535 + 1/2)``, and :func:`lut_8bit` gives its level
    (so a value within half a grid step, 1.5e-5, of a midpoint may take the farther level: 24 of the 13824 scales
    of a seeded randn(576, 1536) differ from exact nearest rounding). An all-zero block stores scale 0, index 0.
    """
    x = x.reshape(-1).float()
    n = x.numel()
    blocks = F.pad(x, (0, -n % blocksize)).reshape(-1, blocksize)  # zero padding leaves each absmax as is
    absmax = blocks.abs().amax(dim=1)
    v = (blocks * (1.0 / absmax)[:, None]).clamp(-1, 1)
    grid_index = ((v + 1.0) * 0.5 * (LUT_SIZE - 1) + 0.5).nan_to_num(0.0).long()  # float32 steps, as in C
    codes = lut_8bit(code).to(x.device)[grid_index]
    codes[absmax == 0] = 0
    return codes.reshape(-1)[:n].to(torch.uint8), absmax


def dequantize_blockwise_8bit(
    codes: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, blocksize: int = ABSMAX_BLOCKSIZE
) -> torch.Tensor:
    """``code[codes] * absmax[block]`` in float32, inverse of :func:`quantize_blockwise_8bit`."""
    values = code.to(codes.device)[codes.long()]
    return values * absmax.repeat_interleave(blocksize)[: values.numel()]


# ---------------------------------------------------------------------------------------------------------------
# The quantised weight


@dataclass(kw_only=True)
class QuantizedWeight:
    """A 4-bit block-quantised tensor, laid out as bitsandbytes' packed data plus ``QuantState``.

    Either ``absmax`` (float32, one per block) or, double-quantised, ``absmax_codes`` (uint8, one per block),
    ``absmax_scale`` (float32, one per 256 blocks) and ``absmax_offset`` (float32 scalar): the block scale is
    ``dynamic_code()[absmax_codes] * absmax_scale + absmax_offset``.
    """

    packed: torch.Tensor  # uint8 (ceil(numel / 2),): two codes per byte, first in the high nibble
    shape: tuple[int, ...]
    dtype: torch.dtype
    blocksize: int = 64
    code: str = "nf4"
    absmax: torch.Tensor | None = None
    absmax_codes: torch.Tensor | None = None
    absmax_scale: torch.Tensor | None = None
    absmax_offset: torch.Tensor | None = None

    @property
    def double_quant(self) -> bool:
        return self.absmax_codes is not None

    @property
    def numel(self) -> int:
        return int(torch.Size(self.shape).numel())

    def tensors(self) -> dict[str, torch.Tensor]:
        """The stored tensors by field name (``absmax`` or the three double-quantisation ones)."""
        names = ("packed", "absmax_codes", "absmax_scale", "absmax_offset", "absmax")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}

    @property
    def nbytes(self) -> int:
        """Storage bytes of all stored tensors."""
        return sum(t.numel() * t.element_size() for t in self.tensors().values())

    @property
    def bits_per_parameter(self) -> float:
        """``8 * nbytes / numel``: 4.5 for blocksize 64, ~4.127 with double quantisation."""
        return 8 * self.nbytes / self.numel

    def block_scales(self) -> torch.Tensor:
        """The float32 scale of every block, undoing double quantisation if used."""
        if self.absmax is not None:
            return self.absmax.float()
        assert self.absmax_codes is not None and self.absmax_scale is not None and self.absmax_offset is not None
        scales = dequantize_blockwise_8bit(self.absmax_codes, self.absmax_scale.float(), _dynamic_code())
        return scales + self.absmax_offset.float()


def _dynamic_code() -> torch.Tensor:
    if "dynamic" not in _CODE_CACHE:
        _CODE_CACHE["dynamic"] = dynamic_code(signed=True)
    return _CODE_CACHE["dynamic"]


def _check_args(weight: torch.Tensor, code: str, blocksize: int) -> None:
    if code not in CODE_NAMES:
        raise ValueError(f"unknown 4-bit code {code!r}; expected one of {CODE_NAMES}")
    if isinstance(blocksize, bool) or not isinstance(blocksize, int) or blocksize < 2 or blocksize & (blocksize - 1):
        raise ValueError(f"blocksize must be a power of two >= 2 (bitsandbytes: 32 ... 4096); got {blocksize!r}")
    if not isinstance(weight, torch.Tensor) or not weight.is_floating_point():
        dtype = weight.dtype if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise ValueError(f"weight must be a floating-point tensor; got {dtype}")
    if weight.numel() == 0:
        raise ValueError("weight must have at least one element")


def quantize_4bit(
    weight: torch.Tensor, *, code: str = "nf4", blocksize: int = 64, double_quant: bool = True
) -> QuantizedWeight:
    """Block-wise 4-bit quantisation of ``weight`` (flattened row-major, blocks of ``blocksize``), as bnb's
    ``quantize_4bit(..., compress_statistics=double_quant)``; a trailing partial block gets its own scale."""
    _check_args(weight, code, blocksize)
    flat = weight.detach().reshape(-1).float()
    full, rest = _blocks(flat, blocksize)
    absmax = full.abs().amax(dim=1)
    # bnb multiplies full blocks by the float32 reciprocal but divides the partial block: both kept for equal bits.
    scaled = (full * (1.0 / absmax.clamp(min=_TINY)[:, None])).clamp(-1, 1).reshape(-1)
    if rest.numel():
        am = rest.abs().amax().clamp(min=_TINY)  # bnb stores this clamped value for a partial block
        absmax = torch.cat([absmax, am[None]])
        scaled = torch.cat([scaled, (rest / am).clamp(-1, 1)])
    if scaled.numel() % 2:
        scaled = F.pad(scaled, (0, 1))  # the spare nibble encodes 0.0
    packed = pack_nibbles(nearest_index(scaled, code_table(code)))
    common: dict[str, Any] = dict(
        packed=packed, shape=tuple(weight.shape), dtype=weight.dtype, blocksize=blocksize, code=code
    )
    if not double_quant:
        return QuantizedWeight(absmax=absmax, **common)
    offset = absmax.mean()
    codes, scale = quantize_blockwise_8bit(absmax - offset, _dynamic_code(), ABSMAX_BLOCKSIZE)
    return QuantizedWeight(absmax_codes=codes, absmax_scale=scale, absmax_offset=offset, **common)


def dequantize_4bit(q: QuantizedWeight) -> torch.Tensor:
    """``level[code] * block scale`` in float32, cast to ``q.dtype`` and reshaped to ``q.shape``.

    Each packed byte is looked up whole in a 256 x 2 table of level pairs (high nibble first): one
    gather instead of shifting, masking and interleaving the nibbles, which QLoRA pays in every forward.
    """
    table = code_table(q.code).to(q.packed.device)
    byte = torch.arange(256, device=q.packed.device)
    pairs = torch.stack([table[byte >> 4], table[byte & 0xF]], dim=1)  # (256, 2)
    values = pairs.index_select(0, q.packed.int()).reshape(-1)[: q.numel]  # faster than pairs[idx]
    scales = q.block_scales().to(q.packed.device)
    full, tail = _blocks(values, q.blocksize)
    out = (full * scales[: full.shape[0], None]).reshape(-1)
    if tail.numel():  # the trailing partial block has its own scale
        out = torch.cat([out, tail * scales[-1]])
    return out.to(q.dtype).reshape(q.shape)


def reconstruction_error(
    weight: torch.Tensor, code: str, blocksize: int = 64, double_quant: bool = False
) -> dict[str, Any]:
    """Quantise and dequantise ``weight``: ``relative_error`` = ||W - W_hat||_F / ||W||_F, ``max_abs_error``
    = max |W - W_hat| (float32), and the storage ``bits_per_parameter``."""
    q = quantize_4bit(weight, code=code, blocksize=blocksize, double_quant=double_quant)
    w = weight.detach().float()
    err = dequantize_4bit(q).float() - w
    return {
        "code": code,
        "blocksize": blocksize,
        "double_quant": double_quant,
        "relative_error": float(err.norm() / w.norm()) if w.norm() > 0 else float(err.norm()),
        "max_abs_error": float(err.abs().max()),
        "bits_per_parameter": q.bits_per_parameter,
    }


# ---------------------------------------------------------------------------------------------------------------
# The frozen 4-bit linear layer

_SCALE_BUFFERS = ("absmax", "absmax_scale", "absmax_offset")


class _Matmul4bit(torch.autograd.Function):
    """y = x Wᵀ + b with W dequantised in forward and again in backward, never saved for backward:
    a saved dense copy of every layer's weight would undo the 4-bit storage (bitsandbytes' MatMul4Bit
    does the same). The codes are frozen, so only x (and b) get gradients."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, layer: Nf4Linear, bias: torch.Tensor | None) -> torch.Tensor:  # type: ignore[override]
        ctx.layer = layer
        return F.linear(x, layer.weight_dequantized().to(x.dtype), bias)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor, None, None]:  # type: ignore[override]
        weight = ctx.layer.weight_dequantized().to(grad_out.dtype)  # (out, in)
        return grad_out @ weight, None, None


class Nf4Linear(nn.Module):
    """A frozen linear layer whose weight is stored 4-bit (QLoRA's base layer); no trainable parameters.

    The quantised tensors and the bias are buffers, so ``.to(device)`` and ``state_dict`` carry them. The float32
    block scales keep their dtype under ``.to(dtype)``/``.half()``: only the bias and the output follow.
    """

    def __init__(self, q: QuantizedWeight, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        if len(q.shape) != 2:
            raise ValueError(f"Nf4Linear needs a 2-D (out_features, in_features) weight; got shape {q.shape}")
        self.out_features, self.in_features = q.shape
        self.weight_shape = tuple(q.shape)
        self.weight_dtype = q.dtype
        self.blocksize = q.blocksize
        self.code = q.code
        for name in ("packed", "absmax", "absmax_codes", "absmax_scale", "absmax_offset"):
            self.register_buffer(name, getattr(q, name))
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    @classmethod
    def from_linear(
        cls, linear: nn.Linear, *, code: str = "nf4", blocksize: int = 64, double_quant: bool = True
    ) -> Nf4Linear:
        """Quantise ``linear.weight``; the bias is kept as is."""
        q = quantize_4bit(linear.weight, code=code, blocksize=blocksize, double_quant=double_quant)
        return cls(q, linear.bias)

    def quantized_weight(self) -> QuantizedWeight:
        """The stored weight as a :class:`QuantizedWeight` (sharing the buffers)."""
        return QuantizedWeight(
            packed=self.packed,
            shape=self.weight_shape,
            dtype=self.weight_dtype,
            blocksize=self.blocksize,
            code=self.code,
            absmax=self.absmax,
            absmax_codes=self.absmax_codes,
            absmax_scale=self.absmax_scale,
            absmax_offset=self.absmax_offset,
        )

    def weight_dequantized(self) -> torch.Tensor:
        """The dequantised weight, ``(out_features, in_features)`` in the original weight dtype."""
        return dequantize_4bit(self.quantized_weight())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return _Matmul4bit.apply(x, self, bias)

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        # Module.to(dtype) casts every floating buffer; the scales travel as their int32 bits (device moves only).
        held = [n for n in _SCALE_BUFFERS if self._buffers.get(n) is not None]
        for n in held:
            self._buffers[n] = self._buffers[n].view(torch.int32)
        try:
            return super()._apply(fn, recurse)
        finally:
            for n in held:
                self._buffers[n] = self._buffers[n].view(torch.float32)

    def extra_repr(self) -> str:
        dq = self.absmax_codes is not None
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, code={self.code}, "
            f"blocksize={self.blocksize}, double_quant={dq}, bias={self.bias is not None}"
        )
