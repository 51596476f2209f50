"""Whole-model recipes: each compression method applied to a copy of a LLaMA-style model, with its storage cost.

Every function takes a Hugging Face causal LM and returns a :class:`Compressed` copy (the original is never
touched), so a chapter can line the methods up on one frontier of quality against bytes. The decoder blocks'
linear layers are compressed; the embedding (tied to the output head in SmolLM2) and the norms are kept, as
GPTQ, AWQ and bitsandbytes checkpoints keep them, and are counted at 16 bits in :func:`model_bytes`.

Quantised weights are simulated ("fake-quantised": rounded to the grid, stored back as float32), which gives
the quality of the real format exactly; the packed layers of :mod:`llmbook.compression.packed` and the GGUF
files of :mod:`llmbook.compression.ggml` show the real storage.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from llmbook.compression import activation_aware, ggml, gptq, llm_int8, low_rank, pruning, quantize
from llmbook.compression.calibration import (
    LinearStats,
    compress_sequentially,
    decoder_blocks,
    decoder_linears,
    iterate_blocks,
)
from llmbook.compression.quantize import QuantSpec


@dataclass(kw_only=True)
class Compressed:
    """A compressed copy of a model and what it costs to store."""

    name: str
    model: nn.Module
    linear_bits: float  # bits per weight of the decoder blocks' linear layers, scales included
    seconds: float = 0.0  # wall time of the compression itself
    layer_errors: dict[str, float] = field(default_factory=dict)  # per-linear output error, where measured
    baseline_errors: dict[str, float] = field(default_factory=dict)  # a simpler method's, on the same inputs


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """``(decoder linear weights, all other parameters)``; a tied embedding counts once."""
    linear = sum(m.weight.numel() for m in decoder_linears(model).values())
    total = sum(p.numel() for p in model.parameters())  # parameters() yields a tied tensor once
    return linear, total - linear


def model_bytes(model: nn.Module, linear_bits: float, other_bits: float = 16) -> int:
    """Storage of ``model`` with its decoder linears at ``linear_bits`` per weight and the rest at ``other_bits``.

    Pass the uncompressed model: methods that swap ``nn.Linear`` for their own modules (LLM.int8, W8A8, low
    rank) change what this counts; their ``linear_bits`` are per weight of the original layers."""
    linear, other = parameter_counts(model)
    return round((linear * linear_bits + other * other_bits) / 8)


def _timed(name: str, linear_bits: float, build: Callable[[nn.Module], object], model: nn.Module) -> Compressed:
    """``build`` applied, in place, to a deep copy of ``model``, timed."""
    copied = copy.deepcopy(model)
    start = time.perf_counter()
    with torch.no_grad():
        build(copied)
    return Compressed(name=name, model=copied, linear_bits=linear_bits, seconds=time.perf_counter() - start)


def full_precision(model: nn.Module) -> Compressed:
    """The model as loaded (float32): the reference row."""
    return _timed("fp32", 32, lambda m: None, model)


def half_precision(model: nn.Module, dtype: torch.dtype = torch.bfloat16) -> Compressed:
    """Every weight rounded to ``dtype`` (bf16 or fp16) and computed in float32 (CPUs lack fast bf16 matmuls)."""

    def build(m: nn.Module) -> None:
        for p in m.parameters():
            p.copy_(p.to(dtype).float())

    return _timed(str(dtype).removeprefix("torch."), 16, build, model)


def rtn(model: nn.Module, spec: QuantSpec) -> Compressed:
    """Round-to-nearest of every decoder linear with ``spec``: no calibration data."""

    def build(m: nn.Module) -> None:
        for layer in decoder_linears(m).values():
            layer.weight.copy_(quantize.fake_quantize(layer.weight, spec))

    return _timed(f"RTN int{spec.bits} {_grouping(spec)}", spec.bits_per_weight(), build, model)


def _grouping(spec: QuantSpec) -> str:
    return f"g{spec.group_size}" if spec.granularity == "group" else f"per-{spec.granularity}"


def normal_float(model: nn.Module, code: str = "nf4", blocksize: int = 64) -> Compressed:
    """QLoRA's NF4 (or FP4) with an absmax per block of ``blocksize`` values (double-quantised: ~4.13 bits)."""

    def build(m: nn.Module) -> None:
        for layer in decoder_linears(m).values():
            layer.weight.copy_(quantize.fake_quantize_4bit(layer.weight, code=code, blocksize=blocksize))

    return _timed(code.upper(), 4 + 8 / blocksize + 32 / (blocksize * 256), build, model)


def llama_cpp(model: nn.Module, qtype: str) -> Compressed:
    """llama.cpp's block formats (Q8_0, Q4_0, Q4_1) applied to every decoder linear, rows in blocks of 32."""

    def build(m: nn.Module) -> None:
        for layer in decoder_linears(m).values():
            rounded = ggml.dequantize_ggml(ggml.quantize_ggml(layer.weight, qtype), qtype)
            layer.weight.copy_(torch.from_numpy(rounded))

    return _timed(qtype, ggml.ggml_type(qtype).bits_per_weight, build, model)


def calibrated(
    name: str,
    linear_bits: float,
    model: nn.Module,
    batches: list[torch.Tensor],
    compress_linear: Callable[[str, nn.Linear, LinearStats], object],
    *,
    baseline: Callable[[torch.Tensor], torch.Tensor] | None = None,
    progress: bool = False,
) -> Compressed:
    """Block-by-block calibration (:func:`compress_sequentially`) with ``compress_linear(name, layer, stats)``.

    Each layer's output error on its calibration inputs goes to ``layer_errors``; with ``baseline`` (a weight
    -> weight function, e.g. round-to-nearest), the baseline's error on the same inputs to ``baseline_errors``.
    """
    errors: dict[str, float] = {}
    baseline_errors: dict[str, float] = {}

    def each(layer_name: str, layer: nn.Linear, stats: LinearStats) -> None:
        before = layer.weight.detach().clone()
        if baseline is not None:
            baseline_errors[layer_name] = gptq.layer_output_error(before, baseline(before), stats)
        compress_linear(layer_name, layer, stats)
        errors[layer_name] = gptq.layer_output_error(before, layer.weight.detach(), stats)

    result = _timed(
        name, linear_bits, lambda m: compress_sequentially(m, batches, each, progress=progress, desc=name), model
    )
    result.layer_errors, result.baseline_errors = errors, baseline_errors
    return result


def gptq_model(
    model: nn.Module, batches: list[torch.Tensor], spec: QuantSpec, *, progress: bool = False, **options: object
) -> Compressed:
    """GPTQ (arXiv:2210.17323) with ``spec`` on every decoder linear, calibrated on ``batches``; round-to-nearest
    with the same spec is measured on the same inputs (``baseline_errors``)."""
    return calibrated(
        f"GPTQ int{spec.bits} {_grouping(spec)}",
        spec.bits_per_weight(),
        model,
        batches,
        lambda _n, layer, stats: gptq.gptq_linear(layer, stats, spec, **options),
        baseline=lambda w: quantize.fake_quantize(w, spec),
        progress=progress,
    )


def awq_model(
    model: nn.Module, batches: list[torch.Tensor], spec: QuantSpec, *, grid: int = 20, progress: bool = False
) -> Compressed:
    """AWQ (arXiv:2306.00978): per-channel scales searched on real activations, folded into the norms, then RTN."""

    def build(m: nn.Module) -> None:
        for _index, block, stats, refresh in iterate_blocks(m, batches, progress=progress, desc="AWQ"):
            activation_aware.apply_awq_to_llama_block(block, stats, spec, grid=grid, refresh=refresh)

    return _timed(f"AWQ int{spec.bits} {_grouping(spec)}", spec.bits_per_weight(), build, model)


def smoothquant_w8a8(
    model: nn.Module, batches: list[torch.Tensor], alpha: float, *, progress: bool = False
) -> Compressed:
    """SmoothQuant (arXiv:2211.10438): activation outliers migrated into the weights, then int8 weights and
    int8 per-token activations (simulated)."""

    def build(m: nn.Module) -> None:
        for _index, block, stats, _refresh in iterate_blocks(m, batches, progress=progress, desc="SmoothQuant"):
            activation_aware.apply_smoothquant_to_llama_block(block, stats, alpha)
            activation_aware.to_w8a8(block)

    return _timed(f"SmoothQuant W8A8 (alpha {alpha:g})", 8, build, model)


def w8a8(model: nn.Module) -> Compressed:
    """int8 weights and int8 per-token activations without smoothing: what SmoothQuant improves on."""

    def build(m: nn.Module) -> None:
        for block in decoder_blocks(m):
            activation_aware.to_w8a8(block)

    return _timed("W8A8", 8, build, model)


def int8_outliers(model: nn.Module, threshold: float = 6.0) -> Compressed:
    """LLM.int8() (arXiv:2208.07339): int8 vector-wise, with outlier input columns kept in floating point."""
    return _timed(
        f"LLM.int8 (threshold {threshold:g})", 8, lambda m: llm_int8.to_llm_int8(m, threshold=threshold), model
    )


def pruned(
    model: nn.Module,
    batches: list[torch.Tensor],
    method: str,
    *,
    sparsity: float = 0.5,
    n: int | None = None,
    m: int | None = None,
    progress: bool = False,
) -> Compressed:
    """Magnitude, Wanda (arXiv:2306.11695) or SparseGPT (arXiv:2301.00774) pruning, unstructured or n:m.

    Storage is counted as 16-bit values plus the mask an n:m kernel reads (2 bits per kept value of 2:4);
    unstructured sparsity is counted dense (no speed or size gain without a sparse format)."""
    pattern = f"{n}:{m}" if n else f"{sparsity:.0%}"
    bits = 16 * n / m + 2 * n / m if n else 16
    sparsity = None if n else sparsity  # an n:m pattern sets the sparsity itself
    if method == "magnitude":  # needs no activations: no calibration pass

        def build(m_: nn.Module) -> None:
            for layer in decoder_linears(m_).values():
                layer.weight.mul_(pruning.magnitude_mask(layer.weight, sparsity, n=n, m=m))

        return _timed(f"{method} {pattern}", bits, build, model)
    return calibrated(
        f"{method} {pattern}",
        bits,
        model,
        batches,
        lambda _n, layer, stats: pruning.prune_linear(layer, stats, method=method, sparsity=sparsity, n=n, m=m),
        progress=progress,
    )


def factorized(
    model: nn.Module,
    batches: list[torch.Tensor] | None,
    keep_fraction: float,
    method: str = "whitened",
    *,
    progress: bool = False,
) -> Compressed:
    """Every decoder linear replaced by a rank-r product keeping ``keep_fraction`` of its parameters."""
    config = low_rank.LowRankConfig(keep_fraction=keep_fraction, method=method)

    def build(m: nn.Module) -> None:
        low_rank.factorize_model(m, batches, config, progress=progress)

    result = _timed(f"SVD ({method}) {keep_fraction:.0%} params", 16, build, model)
    # 16-bit factors, counted per weight of the original layers they replace
    result.linear_bits = 16 * parameter_counts(result.model)[0] / parameter_counts(model)[0]
    return result
