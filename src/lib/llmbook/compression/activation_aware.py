"""Activation-aware scaling: AWQ and SmoothQuant move per-channel scales between an input's producer and its
consumers.

For a linear layer ``y = x W^T`` and any positive vector ``s`` (one entry per input channel)
``y = (x / s) (W diag(s))^T`` exactly. If ``x`` is produced by an RMSNorm (``x = g * n``) or by another linear
layer, the division by ``s`` folds into the producer's weights for free: the model computes the same function
with different weights, and only quantisation tells the two apart.

- **AWQ** (Lin et al. 2023, arXiv:2306.00978) protects the weight columns that meet large activations: with
  ``s = mean|x|^alpha`` (normalised by ``sqrt(max s * min s)``), quantising ``W diag(s)`` rounds the salient
  columns on a finer relative grid. ``alpha`` is searched on a grid to minimise the output error
  ``|| Q(W diag(s)) (x / s)^T - W x^T ||^2`` on real calibration inputs.
- **SmoothQuant** (Xiao et al. 2022, arXiv:2211.10438) makes the *activations* easy to quantise for W8A8: with
  ``s_j = max|X_j|^alpha / max|W_:,j|^(1 - alpha)``, outlier channels of ``x`` are divided down and the
  difficulty migrates into the weights, which per-channel int8 handles well.

On a LLaMA block the producers are ``input_layernorm`` (-> q, k, v), ``post_attention_layernorm`` (-> gate, up)
and ``up_proj`` (-> down: the input of ``down_proj`` is ``act(gate) * up``, linear in up's output rows).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from llmbook.compression.calibration import LinearStats, decoder_blocks, linear_layers
from llmbook.compression.quantize import QuantSpec, dequantize, fake_quantize, grouped, qparams, quantize

SCALE_FLOOR = 1e-4  # AWQ's clamp on mean|x|^alpha: a dead channel must not get a zero (or infinite) scale
CLIP_TOKENS = 512  # AWQ's clip search looks at this many tokens (the reference's n_sample_token)
SMOOTH_FLOOR = 1e-5  # SmoothQuant's clamp on the weight maxima and on the scales
INT8 = QuantSpec(bits=8, symmetric=True, granularity="channel")  # W8A8: one scale per weight row / token
ATTN_INPUTS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
MLP_INPUTS = ("mlp.gate_proj", "mlp.up_proj")
ATTN_LINEARS = (*ATTN_INPUTS, "self_attn.o_proj")
MLP_LINEARS = (*MLP_INPUTS, "mlp.down_proj")


# --- moving scales between a producer and its consumers ------------------------------------------------------------


def scale_consumers(producer: nn.Module, consumers: Sequence[nn.Linear], s: torch.Tensor, *, rows: bool) -> None:
    """Fold ``1 / s`` into the producer and ``s`` into the consumers' input columns (in place): the composed
    function is unchanged. ``rows=False``: the producer is a norm (``weight /= s``); ``rows=True``: a linear
    layer whose output rows (and bias) are divided."""
    s = s.to(torch.float32)
    with torch.no_grad():
        if rows:
            if not isinstance(producer, nn.Linear) or producer.out_features != s.numel():
                raise ValueError(f"producer: expected an nn.Linear with {s.numel()} outputs, got {producer}")
            producer.weight.div_(s.unsqueeze(1).to(producer.weight.dtype))  # (out, in) / (out, 1)
            if producer.bias is not None:
                producer.bias.div_(s.to(producer.bias.dtype))
        else:
            weight = getattr(producer, "weight", None)
            if weight is None or weight.shape != s.shape:
                raise ValueError(f"producer: expected a norm with a weight of shape {tuple(s.shape)}, got {producer}")
            weight.div_(s.to(weight.dtype))
            if getattr(producer, "bias", None) is not None:  # LayerNorm: x / s needs the bias divided too
                producer.bias.div_(s.to(producer.bias.dtype))
        for layer in consumers:
            if layer.in_features != s.numel():
                raise ValueError(f"consumer {layer}: {layer.in_features} inputs, but {s.numel()} scales")
            layer.weight.mul_(s.unsqueeze(0).to(layer.weight.dtype))  # (out, in) * (1, in)


def _require(stats: dict[str, LinearStats], names: Sequence[str], what: str) -> None:
    missing = [name for name in names if name not in stats]
    if missing:
        raise ValueError(
            f"stats lacks {missing}: pass the dict that calibration.iterate_blocks yields for this block ({what})"
        )


def _sample(stats: dict[str, LinearStats], name: str) -> torch.Tensor:
    sample = stats[name].sample
    if sample.shape[0] == 0:
        raise ValueError(f"stats[{name!r}] holds no input rows: run calibration batches through the block first")
    return sample


# --- AWQ -----------------------------------------------------------------------------------------------------------


def awq_scale(act_abs_mean: torch.Tensor, alpha: float) -> torch.Tensor:
    """AWQ's per-channel scale ``s = clamp(mean|x|^alpha, 1e-4) / sqrt(max s * min s)`` (in,)."""
    s = act_abs_mean.float().pow(alpha).clamp(min=SCALE_FLOOR)
    return s / (s.max() * s.min()).sqrt()


def _check_weights(weights: Sequence[torch.Tensor], in_features: int) -> None:
    if not weights:
        raise ValueError("weights is empty: pass the weight matrices (out_i, in) that read the same input")
    for w in weights:
        if w.dim() != 2 or w.shape[1] != in_features:
            raise ValueError(f"weight of shape {tuple(w.shape)}: every weight must be (out_i, {in_features})")


def awq_search_scale(
    weights: Sequence[torch.Tensor], x: torch.Tensor, spec: QuantSpec, *, grid: int = 20
) -> tuple[torch.Tensor, float, list[float]]:
    """AWQ's grid search for the layers that read the same input ``x`` (N, in).

    For ``alpha`` in ``0, 1/grid, ..., (grid-1)/grid`` try ``s = awq_scale(mean|x|, alpha)`` and measure the mean
    squared error of the stacked outputs ``sum_i ||(x / s) Q(W_i diag(s))^T - x W_i^T||^2 / (N sum_i out_i)``.
    ``alpha = 0`` is plain RTN (``s = 1``), so the best loss never exceeds RTN's. Returns ``(scale (in,),
    best_loss, losses per alpha)``."""
    if x.dim() != 2 or x.shape[0] == 0:
        raise ValueError(f"x: expected calibration inputs (N >= 1, in), got shape {tuple(x.shape)}")
    _check_weights(weights, x.shape[1])
    if grid < 1:
        raise ValueError(f"grid={grid}: need at least one alpha to try")
    x = x.float()
    ws = [w.detach().float() for w in weights]
    rows, in_features = x.shape
    gram = x.t() @ x if rows > in_features else None  # (in, in): cheaper than N rows once N > in
    x_mean = x.abs().mean(dim=0)  # (in,)
    count = rows * sum(w.shape[0] for w in ws)
    losses: list[float] = []
    best_loss, best_scale = float("inf"), torch.ones_like(x_mean)
    for step in range(grid):
        s = awq_scale(x_mean, step / grid)
        err = 0.0
        for w in ws:
            delta = (fake_quantize(w * s, spec) - w * s) / s  # (out, in): the output error is x delta^T
            err += float((delta @ gram * delta).sum() if gram is not None else (x @ delta.t()).pow(2).sum())
        losses.append(err / count)
        if losses[-1] < best_loss:
            best_loss, best_scale = losses[-1], s
    return best_scale, best_loss, losses


def awq_clip(
    weight: torch.Tensor,
    x: torch.Tensor,
    spec: QuantSpec,
    *,
    grid: int = 20,
    max_shrink: float = 0.5,
    max_tokens: int = CLIP_TOKENS,
) -> torch.Tensor:
    """AWQ's weight clipping search: per output row and group, the clamp ``max|w| * (1 - i / grid)``
    (``i < max_shrink * grid``) that minimises the group's squared output error on ``x`` (N, in), subsampled
    evenly to at most ``max_tokens`` rows as in the reference. Returns the clamp values (out, groups, 1); apply
    them with :func:`clip_weight`."""
    if spec.granularity == "tensor":
        raise ValueError("clip search needs per-row scales: use granularity 'channel' or 'group'")
    if x.dim() != 2 or x.shape[1] != weight.shape[1] or x.shape[0] == 0:
        raise ValueError(f"x of shape {tuple(x.shape)} does not feed a weight of shape {tuple(weight.shape)}")
    w = grouped(weight.detach().float(), spec)  # (out, G, g)
    x = x[:: max(1, x.shape[0] // max_tokens)][:max_tokens]  # the (N, out, G) partial outputs below must fit
    xg = x.float().reshape(x.shape[0], w.shape[1], w.shape[2])  # (N, G, g)
    ref = torch.einsum("ngk,ogk->nog", xg, w)  # per-group partial outputs (N, out, G)
    org_max = w.abs().amax(dim=-1, keepdim=True)  # (out, G, 1)
    best_max, best_err = org_max.clone(), torch.full_like(org_max, float("inf"))
    for step in range(int(max_shrink * grid)):
        max_val = org_max * (1 - step / grid)
        clipped = torch.clamp(w, -max_val, max_val)
        q = fake_quantize(clipped.reshape(weight.shape), spec).reshape(w.shape)
        err = (torch.einsum("ngk,ogk->nog", xg, q) - ref).pow(2).mean(dim=0).unsqueeze(-1)  # (out, G, 1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_max = torch.where(better, max_val, best_max)
    return best_max


def clip_weight(layer: nn.Linear, max_val: torch.Tensor, spec: QuantSpec) -> None:
    """Clamp ``layer.weight`` group-wise to ``[-max_val, max_val]`` (in place; shape from :func:`awq_clip`)."""
    with torch.no_grad():
        w = grouped(layer.weight.detach().float(), spec)  # (out, G, g)
        clipped = torch.clamp(w, -max_val, max_val).reshape(layer.weight.shape)
        layer.weight.copy_(clipped.to(layer.weight.dtype))


@dataclass(kw_only=True)
class AwqBlockResult:
    """What :func:`apply_awq_to_llama_block` chose for one block."""

    scales: dict[str, torch.Tensor] = field(default_factory=dict)  # "attn", "mlp", "down": the searched s
    losses: dict[str, list[float]] = field(default_factory=dict)  # the output MSE per alpha of each search
    best_alpha: dict[str, float] = field(default_factory=dict)  # the alpha each search picked


def _search(
    result: AwqBlockResult, key: str, block: nn.Module, names: Sequence[str], x: torch.Tensor, spec, grid: int
) -> torch.Tensor:
    layers = [block.get_submodule(name) for name in names]
    s, _, losses = awq_search_scale([layer.weight for layer in layers], x, spec, grid=grid)
    result.scales[key], result.losses[key] = s, losses
    result.best_alpha[key] = min(range(grid), key=lambda i: losses[i]) / grid
    return s


def _round_layers(
    block: nn.Module, names: Sequence[str], spec: QuantSpec, clip_inputs: dict[str, torch.Tensor] | None
) -> None:
    """RTN-quantise ``names`` in place, after AWQ's clipping search for those with an entry in ``clip_inputs``."""
    for name in names:
        layer = block.get_submodule(name)
        if clip_inputs is not None and name in clip_inputs:
            clip_weight(layer, awq_clip(layer.weight, clip_inputs[name], spec), spec)
        with torch.no_grad():
            layer.weight.copy_(fake_quantize(layer.weight.detach(), spec))


def apply_awq_to_llama_block(
    block: nn.Module,
    stats: dict[str, LinearStats],
    spec: QuantSpec,
    *,
    grid: int = 20,
    clip: bool = False,
    refresh: Callable[[], None] | None = None,
) -> AwqBlockResult:
    """AWQ on one LLaMA decoder block, in place: search and fold three scales, then RTN-quantise its 7 linears.

    (a) ``input_layernorm`` -> q, k, v; (b) ``post_attention_layernorm`` -> gate, up; (c) ``up_proj`` rows ->
    ``down_proj`` columns. Each search runs on the block's recorded inputs (``stats[...].sample``, the first
    rows seen by q_proj, gate_proj and down_proj). The v -> o pair that the reference also scales is skipped:
    with grouped-query attention ``v_proj`` has ``kv_heads * head_dim`` (192) outputs but ``o_proj`` reads
    ``heads * head_dim`` (576) inputs, so one free scale per o_proj input cannot be folded into v_proj's rows
    (llm-awq skips the pair the same way when the shapes differ).

    Without ``refresh`` all three searches use the float block's inputs, as the reference does: scaling is
    exact, so they are the inputs the scaled block sees (divided by ``s``). With ``refresh`` (the callback
    ``iterate_blocks`` yields), attention is quantised first and the statistics gathered again, so (b) and (c)
    are searched on inputs that carry the attention's quantisation noise. ``clip=True`` adds AWQ's weight
    clipping search before rounding (skipped for q and k, whose error shows in ``q k^T``, as in the reference)."""
    _require(stats, (*ATTN_LINEARS, *MLP_LINEARS), "AWQ")
    result = AwqBlockResult()
    x_attn = _sample(stats, "self_attn.q_proj")
    s_attn = _search(result, "attn", block, ATTN_INPUTS, x_attn, spec, grid)
    scale_consumers(block.input_layernorm, [block.get_submodule(n) for n in ATTN_INPUTS], s_attn, rows=False)
    clip_attn = {"self_attn.v_proj": x_attn / s_attn, "self_attn.o_proj": _sample(stats, "self_attn.o_proj")}
    _round_layers(block, ATTN_LINEARS, spec, clip_attn if clip else None)
    if refresh is not None:
        refresh()  # stats now describe the block with quantised attention
    x_mlp, x_down = _sample(stats, "mlp.gate_proj"), _sample(stats, "mlp.down_proj")
    s_mlp = _search(result, "mlp", block, MLP_INPUTS, x_mlp, spec, grid)
    s_down = _search(result, "down", block, ("mlp.down_proj",), x_down, spec, grid)
    scale_consumers(block.post_attention_layernorm, [block.mlp.gate_proj, block.mlp.up_proj], s_mlp, rows=False)
    scale_consumers(block.mlp.up_proj, [block.mlp.down_proj], s_down, rows=True)
    clip_mlp = {"mlp.gate_proj": x_mlp / s_mlp, "mlp.up_proj": x_mlp / s_mlp, "mlp.down_proj": x_down / s_down}
    _round_layers(block, MLP_LINEARS, spec, clip_mlp if clip else None)
    return result


# --- SmoothQuant ---------------------------------------------------------------------------------------------------


def smoothing_scale(act_abs_max: torch.Tensor, weights: Sequence[torch.Tensor], alpha: float = 0.5) -> torch.Tensor:
    """SmoothQuant's ``s_j = max|X_j|^alpha / max_i max_o |W_i[o, j]|^(1 - alpha)`` (in,), with the weight
    maxima and the result clamped to >= 1e-5 as in the reference code."""
    if act_abs_max.dim() != 1:
        raise ValueError(f"act_abs_max: expected one value per input channel (in,), got {tuple(act_abs_max.shape)}")
    _check_weights(weights, act_abs_max.numel())
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha}: the migration strength lies in [0, 1]")
    w_max = torch.stack([w.detach().float().abs().amax(dim=0) for w in weights]).amax(dim=0).clamp(min=SMOOTH_FLOOR)
    return (act_abs_max.float().pow(alpha) / w_max.pow(1 - alpha)).clamp(min=SMOOTH_FLOOR)


def apply_smoothquant_to_llama_block(
    block: nn.Module, stats: dict[str, LinearStats], alpha: float = 0.5
) -> dict[str, torch.Tensor]:
    """Smooth one LLaMA block in place (no quantisation): fold ``s`` into ``input_layernorm`` / q, k, v and
    ``post_attention_layernorm`` / gate, up, using ``stats[...].abs_max`` of q_proj's and gate_proj's inputs.
    The block computes the same outputs (up to float rounding). Returns ``{"attn": s, "mlp": s}``."""
    _require(stats, ("self_attn.q_proj", "mlp.gate_proj"), "SmoothQuant")
    scales = {}
    for key, norm, names in (
        ("attn", block.input_layernorm, ATTN_INPUTS),
        ("mlp", block.post_attention_layernorm, MLP_INPUTS),
    ):
        if stats[names[0]].rows == 0:
            raise ValueError(f"stats[{names[0]!r}] saw no inputs: run calibration batches through the block first")
        layers = [block.get_submodule(name) for name in names]
        s = smoothing_scale(stats[names[0]].abs_max, [layer.weight for layer in layers], alpha)
        scale_consumers(norm, layers, s, rows=False)
        scales[key] = s
    return scales


def fake_quantize_per_token(x: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """Dynamic symmetric per-token quantisation of activations ``x`` (..., in): one absmax scale per row."""
    spec = QuantSpec(bits=bits, symmetric=True, granularity="channel")
    scale, zero = qparams(x, spec)  # (..., 1) each
    return dequantize(quantize(x, scale, zero, spec), scale, zero).to(x.dtype)


class W8A8Linear(nn.Module):
    """SmoothQuant's W8A8 linear, simulated in float: int8 per-channel symmetric weights (quantised once) and
    int8 per-token symmetric activations (quantised at every forward from the token's absmax)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"W8A8Linear wraps an nn.Linear, got {type(linear).__name__}")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight", fake_quantize(linear.weight.detach(), INT8))
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(fake_quantize_per_token(x), self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, w8a8"


def to_w8a8(module: nn.Module, names: Sequence[str] | None = None) -> nn.Module:
    """Replace linears with :class:`W8A8Linear` in place: inside every decoder block for a Hugging Face model,
    or inside ``module`` itself for a single block (``names`` restricts to those qualified names, e.g.
    ``ATTN_INPUTS``). Returns ``module``."""
    inner = getattr(module, "model", None)
    blocks = decoder_blocks(module) if isinstance(getattr(inner, "layers", None), nn.ModuleList) else [module]
    for block in blocks:
        for name, layer in linear_layers(block).items():
            if names is not None and name not in names:
                continue
            block.set_submodule(name, W8A8Linear(layer))
    return module


def outlier_channels(stats: LinearStats, k: int) -> torch.Tensor:
    """The ``k`` input channels with the largest ``max|x_j|``, largest first (int64 indices)."""
    if not 1 <= k <= stats.in_features:
        raise ValueError(f"k={k}: choose 1 <= k <= {stats.in_features} (the layer's input channels)")
    if stats.rows == 0:
        raise ValueError("stats saw no inputs: run calibration batches through the layer first")
    return torch.topk(stats.abs_max, k).indices
