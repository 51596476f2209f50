"""Positional information for attention: absolute, relative-bias and rotary schemes.

Every scheme here answers one question differently: how does token ``i`` know where token ``j``
is? Absolute schemes add a vector to the input embedding (sinusoidal, learned); relative-bias
schemes add a scalar to the attention logit ``q_i . k_j`` (T5 buckets, ALiBi); rotary schemes
rotate ``q`` and ``k`` so that their dot product depends only on ``i - j`` (RoPE). The last
section extends RoPE past its training length by rescaling its frequencies (position
interpolation, NTK-aware, dynamic NTK, YaRN, Llama-3); those inverse frequencies equal the ones
``transformers.modeling_rope_utils.ROPE_INIT_FUNCTIONS`` computes (tested).

Layouts follow Hugging Face: positions ``(T,)`` int, embeddings ``(T, C)``, biases ``(H, Tq, Tk)``,
queries/keys ``(B, H, T, D)`` with the cos/sin tables ``(T, D)`` broadcast over B and H.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

RopeLayout = Literal["half", "interleaved"]
RopeScaling = Literal["default", "linear", "ntk", "dynamic", "yarn", "llama3"]

# --------------------------------------------------------------------------- absolute


def sinusoidal_embedding(positions: torch.Tensor, dim: int, base: float = 10000.0) -> torch.Tensor:
    """Fixed sinusoidal position vectors (Vaswani et al. 2017, arXiv:1706.03762).

    ``PE[p, 2i] = sin(p / base^(2i/C))``, ``PE[p, 2i+1] = cos(p / base^(2i/C))``. Returns ``(T, C)``.
    """
    if dim % 2 != 0:
        raise ValueError(f"dim must be even for sinusoidal embeddings, got {dim}")
    inv_freq = 1.0 / base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)  # (C/2,)
    angles = positions.float()[..., None] * inv_freq.to(positions.device)  # (T, C/2)
    pe = torch.stack((angles.sin(), angles.cos()), dim=-1)  # (T, C/2, 2)
    return pe.flatten(-2)  # (T, C/2, 2) -> (T, C): sin, cos interleaved


class LearnedPositionalEmbedding(nn.Module):
    """A trainable table of ``max_positions`` vectors (GPT-2 style); cannot extrapolate past it."""

    def __init__(self, max_positions: int, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(max_positions, dim))

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        if int(positions.max()) >= self.weight.shape[0]:
            raise ValueError(
                f"positions must be < max_positions={self.weight.shape[0]}, got max {int(positions.max())}"
            )
        return self.weight[positions]  # (T, C)


# --------------------------------------------------------------------------- relative biases


def t5_relative_bucket(
    relative_position: torch.Tensor, *, bidirectional: bool = True, num_buckets: int = 32, max_distance: int = 128
) -> torch.Tensor:
    """Map ``j - i`` to a bucket id (Raffel et al. 2019, arXiv:1910.10683, T5).

    Half the buckets hold exact small distances, the other half log-spaced distances up to
    ``max_distance``; bidirectional models spend half the buckets on each sign.
    """
    buckets = torch.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets += (relative_position > 0).long() * num_buckets
        n = relative_position.abs()
    else:
        n = -torch.clamp(relative_position, max=0)  # only the past is visible
    max_exact = num_buckets // 2
    is_small = n < max_exact
    log_part = max_exact + (
        torch.log(n.float().clamp(min=1) / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact)
    ).long()
    log_part = torch.clamp(log_part, max=num_buckets - 1)
    return buckets + torch.where(is_small, n, log_part)


class T5RelativeBias(nn.Module):
    """Learned scalar per (bucket, head) added to the logits: ``s_ij = q_i.k_j/sqrt(D) + b_h[bucket(j-i)]``."""

    def __init__(
        self, n_heads: int, *, bidirectional: bool = False, num_buckets: int = 32, max_distance: int = 128
    ) -> None:
        super().__init__()
        self.bidirectional, self.num_buckets, self.max_distance = bidirectional, num_buckets, max_distance
        self.embedding = nn.Embedding(num_buckets, n_heads)

    def forward(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        rel = k_pos[None, :] - q_pos[:, None]  # (Tq, Tk)
        buckets = t5_relative_bucket(
            rel, bidirectional=self.bidirectional, num_buckets=self.num_buckets, max_distance=self.max_distance
        )
        return self.embedding(buckets).permute(2, 0, 1)  # (Tq, Tk, H) -> (H, Tq, Tk)


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """Head slopes of ALiBi (Press et al. 2021, arXiv:2108.12409).

    For ``n`` a power of two the slopes are the geometric sequence ``2^(-8/n * h)``, h = 1..n. Otherwise
    take the ``m`` = largest power of two below ``n`` sequence, then every other slope of the
    ``2m`` sequence for the remaining ``n - m`` heads (the paper's reference code).
    """
    if n_heads < 1:
        raise ValueError(f"n_heads must be >= 1, got {n_heads}")

    def power_of_two(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (h + 1) for h in range(n)]

    m = 2 ** math.floor(math.log2(n_heads))
    slopes = power_of_two(m)
    if m < n_heads:
        slopes += power_of_two(2 * m)[0::2][: n_heads - m]
    return torch.tensor(slopes, dtype=torch.float32)


def alibi_bias(n_heads: int, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
    """ALiBi logit bias ``-m_h * (i - j)`` for keys in the past; ``(H, Tq, Tk)``.

    Future keys get ``-m_h * (i - j)`` > 0 too but are removed by the causal mask; the bias is
    linear so it extrapolates to any length without parameters.
    """
    dist = (q_pos[:, None] - k_pos[None, :]).float()  # (Tq, Tk)
    return -alibi_slopes(n_heads).to(dist.device)[:, None, None] * dist[None]  # (H, Tq, Tk)


# --------------------------------------------------------------------------- RoPE


@dataclass(kw_only=True)
class RopeConfig:
    """Rotary embedding frequencies and context-extension scaling (names follow HF ``rope_parameters``)."""

    theta: float = 10000.0  # base of the geometric frequency ladder (Llama-3 uses 500000)
    scaling: RopeScaling = "default"  # "linear" = position interpolation; "ntk", "dynamic", "yarn", "llama3"
    factor: float = 1.0  # context-extension factor s: new length = s * original length
    original_max_position_embeddings: int | None = None  # training length L (yarn, llama3, dynamic)
    low_freq_factor: float = 1.0  # llama3: wavelengths above L/low_freq_factor are divided by s
    high_freq_factor: float = 4.0  # llama3: wavelengths below L/high_freq_factor are kept
    beta_fast: float = 32.0  # yarn: dims rotating more than beta_fast times in L keep their frequency
    beta_slow: float = 1.0  # yarn: dims rotating fewer than beta_slow times in L are interpolated
    attention_factor: float | None = None  # yarn: cos/sin multiplier; None = 0.1 ln(s) + 1
    layout: RopeLayout = "half"  # "half" pairs (i, i+D/2) like HF; "interleaved" pairs (2i, 2i+1)

    def __post_init__(self) -> None:
        allowed = ("default", "linear", "ntk", "dynamic", "yarn", "llama3")
        if self.scaling not in allowed:
            raise ValueError(f"scaling must be one of {allowed}, got {self.scaling!r}")
        if self.layout not in ("half", "interleaved"):
            raise ValueError(f"layout must be 'half' or 'interleaved', got {self.layout!r}")
        if self.scaling in ("yarn", "llama3", "dynamic") and self.original_max_position_embeddings is None:
            raise ValueError(f"original_max_position_embeddings is required for scaling={self.scaling!r}")


def rope_inv_freq(head_dim: int, theta: float = 10000.0) -> torch.Tensor:
    """``inv_freq_i = theta^(-2i/D)`` for i = 0..D/2-1 (Su et al. 2021, arXiv:2104.09864)."""
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))


def rope_parameters(head_dim: int, cfg: RopeConfig, seq_len: int | None = None) -> tuple[torch.Tensor, float]:
    """Inverse frequencies ``(D/2,)`` and the cos/sin multiplier for a RoPE scaling method.

    - linear (position interpolation, Chen et al. 2023, arXiv:2306.15595): ``inv_freq / s``.
    - ntk (NTK-aware, bloc97 2023): ``theta' = theta * s^(D/(D-2))`` — high frequencies barely move.
    - dynamic (dynamic NTK): ntk with ``s' = s*T/L - (s-1)`` recomputed for the current length T > L.
    - yarn (NTK-by-parts + temperature, Peng et al. 2023, arXiv:2309.00071): per-dim blend of
      interpolation and extrapolation on a linear ramp between the dims that rotate ``beta_slow``
      and ``beta_fast`` times within L; logits are scaled by ``(0.1 ln s + 1)^2`` via cos/sin.
    - llama3 (Meta 2024): wavelengths > L/low_freq_factor are divided by s, < L/high_freq_factor kept,
      smooth interpolation in between.
    """
    d = head_dim
    inv_freq = rope_inv_freq(d, cfg.theta)
    s, kind = cfg.factor, cfg.scaling
    if kind == "default":
        return inv_freq, 1.0
    if kind == "linear":
        return inv_freq / s, 1.0
    if kind == "ntk":
        return rope_inv_freq(d, cfg.theta * s ** (d / (d - 2))), 1.0
    L = int(cfg.original_max_position_embeddings)  # type: ignore[arg-type]
    if kind == "dynamic":
        t = max(seq_len or L, L)
        return rope_inv_freq(d, cfg.theta * (s * t / L - (s - 1)) ** (d / (d - 2))), 1.0
    if kind == "yarn":

        def dim_for_rotations(n_rot: float) -> float:  # dim index whose wavelength fits n_rot times in L
            return d * math.log(L / (n_rot * 2 * math.pi)) / (2 * math.log(cfg.theta))

        low = max(math.floor(dim_for_rotations(cfg.beta_fast)), 0)
        high = min(math.ceil(dim_for_rotations(cfg.beta_slow)), d - 1)
        if low == high:
            high += 0.001
        ramp = ((torch.arange(d // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)  # 0 = extrapolate
        yarn = inv_freq / s * ramp + inv_freq * (1 - ramp)
        mscale = cfg.attention_factor if cfg.attention_factor is not None else (0.1 * math.log(s) + 1 if s > 1 else 1.0)
        return yarn, float(mscale)
    # llama3
    low_wavelen, high_wavelen = L / cfg.low_freq_factor, L / cfg.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / s, inv_freq)
    smooth = (L / wavelen - cfg.low_freq_factor) / (cfg.high_freq_factor - cfg.low_freq_factor)
    mid = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(mid, (1 - smooth) * scaled / s + smooth * scaled, scaled), 1.0


def rope_cos_sin(
    positions: torch.Tensor, inv_freq: torch.Tensor, *, scale: float = 1.0, layout: RopeLayout = "half"
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables ``(T, D)`` (or ``(B, T, D)`` for per-row positions) for angles ``p * inv_freq_i``."""
    angles = positions.float()[..., None] * inv_freq.to(positions.device)  # (T, D/2) or (B, T, D/2)
    if layout == "half":
        emb = torch.cat((angles, angles), dim=-1)  # (T, D): [a0..a_{D/2-1}, a0..a_{D/2-1}]
    else:
        emb = angles.repeat_interleave(2, dim=-1)  # (T, D): [a0, a0, a1, a1, ...]
    return emb.cos() * scale, emb.sin() * scale


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``[x1, x2] -> [-x2, x1]`` with x1, x2 the two halves of the last dim (HF layout)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rotate_interleaved(x: torch.Tensor) -> torch.Tensor:
    """``(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...)`` (the paper's / Meta's original layout)."""
    pairs = x.unflatten(-1, (-1, 2))  # (..., D/2, 2)
    return torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)  # (..., D)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, layout: RopeLayout = "half") -> torch.Tensor:
    """Rotate each pair of dims by its angle: ``x' = x * cos + rotate(x) * sin``.

    With ``R_p`` the rotation by ``p * inv_freq``, ``(R_i q) . (R_j k) = q . R_{j-i} k``: the logit
    depends on positions only through ``i - j``. ``x`` is ``(B, H, T, D)``; ``cos``/``sin`` ``(T, D)``.
    """
    rot = rotate_half(x) if layout == "half" else rotate_interleaved(x)
    return x * cos + rot * sin


def interleaved_to_half_permutation(head_dim: int) -> torch.Tensor:
    """Index ``perm`` with ``x_half = x_interleaved[..., perm]``: evens first, then odds.

    Dim pair ``(2i, 2i+1)`` of the interleaved layout becomes pair ``(i, i + D/2)`` of the half layout.
    """
    return torch.cat((torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)))


def permute_qk_weight(weight: torch.Tensor, n_heads: int, *, to: RopeLayout = "half") -> torch.Tensor:
    """Reorder the output rows of a q or k projection ``(H*D, C)`` between RoPE layouts.

    A model trained with interleaved RoPE equals one with half RoPE whose q/k weight rows are
    permuted per head (this is what HF's Llama conversion script does to Meta checkpoints):
    attention logits are invariant because q and k get the same permutation.
    """
    if to not in ("half", "interleaved"):
        raise ValueError(f"to must be 'half' or 'interleaved', got {to!r}")
    rows = weight.shape[0]
    if rows % n_heads != 0:
        raise ValueError(f"weight rows ({rows}) must be divisible by n_heads ({n_heads})")
    d = rows // n_heads
    perm = interleaved_to_half_permutation(d)
    if to == "interleaved":
        perm = torch.argsort(perm)
    w = weight.reshape(n_heads, d, *weight.shape[1:])  # (H*D, C) -> (H, D, C)
    return w[:, perm].reshape(weight.shape)  # (H, D, C) -> (H*D, C)


class RotaryEmbedding(nn.Module):
    """Caches ``inv_freq`` and returns ``(cos, sin)`` ``(T, D)`` for given positions.

    ``scaling="dynamic"`` recomputes the frequencies when positions exceed the training length.
    """

    def __init__(self, head_dim: int, cfg: RopeConfig | None = None) -> None:
        super().__init__()
        self.head_dim, self.cfg = head_dim, cfg or RopeConfig()
        inv_freq, self.attention_scaling = rope_parameters(head_dim, self.cfg)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        inv_freq = self.inv_freq
        if self.cfg.scaling == "dynamic":
            seq_len = int(positions.max()) + 1
            inv_freq = rope_parameters(self.head_dim, self.cfg, seq_len=seq_len)[0].to(positions.device)
        return rope_cos_sin(positions, inv_freq, scale=self.attention_scaling, layout=self.cfg.layout)
