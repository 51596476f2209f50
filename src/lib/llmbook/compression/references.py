"""Production quantisers as references: each function takes a weight (out, in) and returns the library's
dequantised weight (float32, same shape), importing the library inside (a missing one raises ModuleNotFoundError
saying what to install); :data:`REFERENCES` pairs each with the piece of ours that reproduces it and
:func:`compare_with_references` measures how closely. Conventions (``QuantSpec`` has an option for each):

- bitsandbytes ``int8_vectorwise_quant`` (LLM.int8(), arXiv:2208.07339) and optimum-quanto ``qint8``: absmax / 127
  per row, ``QuantSpec(bits=8, granularity="channel")``;
- torchao divides by ``2^(b-1) - 1/2`` (``max|w| / 127.5`` for int8) so that the code ``-2^(b-1)`` is used too:
  ``full_range=True``; its asymmetric int4 is our integer zero point (its codes and zero points are ours minus 8);
- quanto ``qint4`` and HQQ (Badri & Shaji 2023; ``optimize=False``) use the range ``[min, max]`` with an unrounded
  zero point: ``float_zero=True``. quanto's layers take groups of 128 columns, minus 32 until the group divides
  the width (96 for 576 columns; one per row if the width is at most 128): :func:`quanto_group_size`. HQQ's
  ``axis=1`` groups consecutive columns of a row as we do (its ``axis=0`` groups down a column);
- bitsandbytes NF4 (QLoRA, arXiv:2305.14314) is a 16-level code table, not a grid:
  :func:`~llmbook.compression.quantize.fake_quantize_4bit` reproduces it bit for bit.

Same scheme, not always the same bits: bnb rounds ``w * (127 / absmax)``, torchao ``w * (1 / s)``, quanto
``(w - min) / s``, HQQ ``w * (15 / (max - min)) + z``, ours ``w / s`` (``w * (1 / s)`` with ``full_range``), so a
value within a float32 ulp of a rounding tie can land one code apart (``codes_differ``): none on Gaussian test
matrices, 18 to 59 of the 885k values of SmolLM2's ``down_proj``; the relative errors agree to six digits.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

import torch
from torch import nn

from llmbook.compression.quantize import QuantSpec, fake_quantize_4bit, grouped, quantize_weight

# top-level import name -> (pip package, the llmbook extra that installs it)
_PACKAGES = {"bitsandbytes": ("bitsandbytes", "finetune"), "torchao": ("torchao", "compression"),
             "optimum": ("optimum-quanto", "compression"), "hqq": ("hqq", "compression")}  # fmt: skip


def _require(module: str) -> ModuleType:
    """Import ``module``; if the library itself is missing, one error that says what to install."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        root = module.split(".")[0]
        if err.name is None or err.name.split(".")[0] != root:
            raise  # a dependency of the library is missing: its own error is the useful one
        package, extra = _PACKAGES[root]
        raise ModuleNotFoundError(
            f"this reference needs {package}: pip install '{package}' (or pip install 'llmbook[{extra}]')", name=module
        ) from None


def _installed(module: str) -> bool:  # the parent first: find_spec("optimum.quanto") raises without optimum
    return all(importlib.util.find_spec(m) is not None for m in (module.split(".")[0], module))


def _check(w: torch.Tensor, group_size: int | None = None) -> torch.Tensor:
    if w.dim() != 2 or not w.is_floating_point():
        raise ValueError(f"expected a floating-point weight matrix (out, in), got {w.dtype} {tuple(w.shape)}")
    if group_size is not None and (group_size < 1 or w.shape[1] % group_size):
        raise ValueError(f"group_size={group_size} does not divide the {w.shape[1]} input columns; pick a divisor")
    return w.detach().float().clone()  # the libraries may quantise in place; never touch the caller's tensor


def _linear(w: torch.Tensor) -> nn.Linear:
    """A bias-free ``nn.Linear`` holding ``w``, built without initialising (the global RNG is left alone)."""
    layer = nn.utils.skip_init(nn.Linear, w.shape[1], w.shape[0], bias=False)
    layer.weight = nn.Parameter(w, requires_grad=False)
    return layer


def bitsandbytes_int8(w: torch.Tensor) -> torch.Tensor:
    """bitsandbytes ``int8_vectorwise_quant``: int8 codes with absmax / 127 per row, dequantised by bnb."""
    bnbf = _require("bitsandbytes.functional")
    codes, stats, _ = bnbf.int8_vectorwise_quant(_check(w))
    return bnbf.int8_vectorwise_dequant(codes, stats).float()


def torchao_int8_weight_only(w: torch.Tensor) -> torch.Tensor:
    """torchao ``quantize_(layer, Int8WeightOnlyConfig())``: int8 per row, absmax / 127.5."""
    ao = _require("torchao.quantization")
    layer = _linear(_check(w))
    ao.quantize_(layer, ao.Int8WeightOnlyConfig())
    return layer.weight.dequantize().detach().float()


def torchao_int4(w: torch.Tensor, group_size: int = 32, symmetric: bool = True) -> torch.Tensor:
    """torchao ``IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(group_size))``, symmetric
    (absmax / 7.5) or asymmetric (``MappingType.ASYMMETRIC``, integer zero points)."""
    ao = _require("torchao.quantization")
    layer = _linear(_check(w, group_size))
    mapping = ao.MappingType.SYMMETRIC if symmetric else ao.MappingType.ASYMMETRIC
    config = ao.IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=ao.PerGroup(group_size), mapping_type=mapping)
    ao.quantize_(layer, config)
    return layer.weight.dequantize().detach().float()


def quanto_int8(w: torch.Tensor) -> torch.Tensor:
    """optimum-quanto ``quantize(model, weights=qint8)`` then ``freeze``: int8 per row, absmax / 127."""
    quanto = _require("optimum.quanto")
    model = nn.Sequential(_linear(_check(w)))
    quanto.quantize(model, weights=quanto.qint8)
    quanto.freeze(model)
    return model[0].weight.dequantize().detach().float()


def quanto_group_size(in_features: int) -> int | None:
    """The group quanto's ``qint4`` layers pick: 128, minus 32 until it divides the width; None (per row) if none
    does or the width is at most 128."""
    group_size = 128
    if in_features <= group_size:
        return None
    while in_features % group_size and group_size > 32:
        group_size -= 32
    return None if in_features % group_size else group_size


def quanto_int4(w: torch.Tensor, group_size: int | None = 128) -> torch.Tensor:
    """optimum-quanto ``qint4`` weights as ``quantize(model, weights=qint4)`` computes them: the MaxOptimizer's
    ``(scale, shift = -min)`` per group and the ``quanto::quantize_affine`` op, dequantised ``scale * q - shift``
    here (quanto's CPU unpacking compiles a C++ extension on first use: minutes). ``None``: one group per row."""
    quanto = _require("optimum.quanto")
    w = _check(w, group_size)
    scale, shift = quanto.MaxOptimizer()(w, qtype=quanto.qint4, axis=0, group_size=group_size)
    q = torch.ops.quanto.quantize_affine(w, bits=4, axis=0, group_size=group_size, scale=scale, shift=shift)
    return (scale * q - shift).reshape(w.shape).float()  # (out * in / g, g) -> (out, in)


def hqq_4bit(w: torch.Tensor, group_size: int = 64, optimize: bool = False, round_zero: bool = False) -> torch.Tensor:
    """HQQ ``HQQLinear`` with ``BaseQuantizeConfig(nbits=4, group_size, axis=1)``; ``optimize=False`` is plain
    min-max RTN, ``optimize=True`` HQQ's half-quadratic refinement of the zero points (no QuantSpec matches it)."""
    hqq = _require("hqq.core.quantize")
    layer = _linear(_check(w, group_size))
    config = hqq.BaseQuantizeConfig(nbits=4, group_size=group_size, axis=1)  # axis=1: consecutive columns of a row
    config["weight_quant_params"].update(round_zero=round_zero, optimize=optimize)
    return hqq.HQQLinear(layer, config, compute_dtype=torch.float32, device="cpu").dequantize().detach().float()


def bitsandbytes_nf4(w: torch.Tensor, blocksize: int = 64) -> torch.Tensor:
    """bitsandbytes ``quantize_4bit(quant_type="nf4")`` then ``dequantize_4bit``: block-wise absmax over
    ``blocksize`` consecutive values, one float32 scale per block (no double quantisation)."""
    bnbf = _require("bitsandbytes.functional")
    packed, state = bnbf.quantize_4bit(_check(w), blocksize=blocksize, quant_type="nf4", compress_statistics=False)
    return bnbf.dequantize_4bit(packed, state).float().reshape(w.shape)


@dataclass(frozen=True, kw_only=True)
class Reference:
    """A production scheme and the piece of ours that reproduces it."""

    library: str  # the pip package
    module: str  # its import name, to tell whether it is installed
    scheme: str  # the library call, in words
    function: Callable[..., torch.Tensor]  # w (out, in) -> the library's dequantised w
    ours: QuantSpec | Callable[[torch.Tensor], torch.Tensor]  # our grid (or, for a code table, our function)
    group_rule: Callable[[int], int | None] | None = None  # the library picks the group from the width (quanto)

    def resolve(self, in_features: int) -> tuple[Callable[..., torch.Tensor], QuantSpec | Callable]:
        # (function, ours) for a matrix with in_features columns
        if self.group_rule is None or not isinstance(self.ours, QuantSpec):
            return self.function, self.ours
        g = self.group_rule(in_features)
        ours = dataclasses.replace(self.ours, granularity="channel") if g is None else self.ours
        return functools.partial(self.function, group_size=g), dataclasses.replace(ours, group_size=g or 128)


_ASYM_FLOAT = QuantSpec(bits=4, symmetric=False, float_zero=True)
REFERENCES: dict[str, Reference] = {
    "bnb_int8": Reference(library="bitsandbytes", module="bitsandbytes", scheme="int8_vectorwise_quant",
                          function=bitsandbytes_int8, ours=QuantSpec(bits=8, granularity="channel")),
    "torchao_int8": Reference(library="torchao", module="torchao", scheme="Int8WeightOnlyConfig()",
                              function=torchao_int8_weight_only,
                              ours=QuantSpec(bits=8, granularity="channel", full_range=True)),
    "torchao_int4": Reference(library="torchao", module="torchao", scheme="IntxWeightOnlyConfig(int4, PerGroup(32))",
                              function=torchao_int4, ours=QuantSpec(bits=4, group_size=32, full_range=True)),
    "torchao_int4_asym": Reference(library="torchao", module="torchao",
                                   scheme="IntxWeightOnlyConfig(int4, PerGroup(32), ASYMMETRIC)",
                                   function=functools.partial(torchao_int4, symmetric=False),
                                   ours=QuantSpec(bits=4, group_size=32, symmetric=False)),
    "quanto_int8": Reference(library="optimum-quanto", module="optimum.quanto", scheme="quantize(weights=qint8)",
                             function=quanto_int8, ours=QuantSpec(bits=8, granularity="channel")),
    "quanto_int4": Reference(library="optimum-quanto", module="optimum.quanto", scheme="quantize(weights=qint4)",
                             function=quanto_int4, ours=_ASYM_FLOAT, group_rule=quanto_group_size),
    "hqq_4bit": Reference(library="hqq", module="hqq", scheme="HQQLinear(nbits=4, group_size=64, optimize=False)",
                          function=hqq_4bit, ours=dataclasses.replace(_ASYM_FLOAT, group_size=64)),
    "bnb_nf4": Reference(library="bitsandbytes", module="bitsandbytes", scheme="quantize_4bit(nf4, blocksize=64)",
                         function=bitsandbytes_nf4,
                         ours=functools.partial(fake_quantize_4bit, code="nf4", blocksize=64)),
}  # fmt: skip


def describe(ours: QuantSpec | Callable) -> str:
    """A short string for ``ours``: the QuantSpec fields that differ from the defaults, or the function call."""
    if isinstance(ours, QuantSpec):
        args = [f"{f.name}={getattr(ours, f.name)!r}" for f in dataclasses.fields(ours)
                if getattr(ours, f.name) != f.default]  # fmt: skip
        return f"QuantSpec({', '.join(args)})"
    if isinstance(ours, functools.partial):
        args = [f"{k}={v!r}" for k, v in ours.keywords.items()]
        return f"{ours.func.__name__}({', '.join(args)})"
    return getattr(ours, "__name__", repr(ours))


_NUMBERS = ("max_abs_diff", "codes_equal", "codes_differ", "rel_error_ours", "rel_error_library")


def _agreement(w: torch.Tensor, ours: QuantSpec | Callable, theirs: torch.Tensor) -> dict:
    if isinstance(ours, QuantSpec):
        q = quantize_weight(w, ours)
        w_ours = q.dequantize()
        step = (grouped(torch.ones_like(w), ours) * q.scale.unsqueeze(-1)).reshape(w.shape)  # (out, in): s per value
        n_differ = int(((w_ours - theirs).abs() >= 0.5 * step).sum())  # half a step away or more: another code
    else:
        w_ours = ours(w)
        n_differ = int((w_ours != theirs).sum())  # a code table: distinct codes give distinct values
    norm = w.norm()
    return dict(
        max_abs_diff=float((w_ours - theirs).abs().max()),
        codes_equal=n_differ == 0,
        codes_differ=n_differ,
        rel_error_ours=float((w_ours - w).norm() / norm),
        rel_error_library=float((theirs - w).norm() / norm),
    )


def compare_with_references(w: torch.Tensor, names: list[str] | None = None) -> list[dict]:
    """Each reference's dequantised ``w`` (out, in) against ours, one row per scheme (``name``, ``library``, ``scheme``,
    ``ours_spec``, ``status``): ``max_abs_diff``; ``codes_differ``, the values half a step or more from ours (another
    code; for a code table, values not identical) and ``codes_equal``; the relative errors ``||w_hat - w|| / ||w||``
    of ours and of the library. A library that is not installed gets ``status="not installed"`` and None numbers."""
    w = _check(w)
    unknown = sorted(set(names or ()) - set(REFERENCES))
    if unknown:
        raise ValueError(f"unknown references {unknown}; choose from {sorted(REFERENCES)}")
    rows = []
    for name in names or list(REFERENCES):
        ref = REFERENCES[name]
        function, ours = ref.resolve(w.shape[1])
        row = dict(name=name, library=ref.library, scheme=ref.scheme, ours_spec=describe(ours))
        if _installed(ref.module):
            rows.append(row | dict(status="ok") | _agreement(w, ours, function(w)))
        else:
            rows.append(row | dict(status="not installed") | dict.fromkeys(_NUMBERS))
    return rows
