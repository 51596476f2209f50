"""Scaled dot-product attention, masks, the KV cache and multi-/grouped-query attention.

Mask convention (used everywhere in ``llmbook``): a **boolean mask is True where a query may
attend to a key** — the same convention as ``torch.nn.functional.scaled_dot_product_attention``.
Shapes broadcast to ``(B, H, Tq, Tk)``. A query row with no allowed key outputs zeros (e.g. a
left-padding position) instead of NaN.

Queries are absolute positions ``offset + i`` with ``offset = Tk - Tq``: during cached decoding the
new queries are the *last* Tq positions of the key sequence (causal mask aligned bottom-right).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from llmbook.attention.heads import check_heads, repeat_kv
from llmbook.attention.tiled import tiled_attention
from llmbook.positional import RopeLayout, apply_rope

AttnImpl = Literal["eager", "tiled", "sdpa"]
ATTN_IMPLS = ("eager", "tiled", "sdpa")

# --------------------------------------------------------------------------- masks


def causal_mask(t_q: int, t_k: int, *, window: int | None = None, device: torch.device | None = None) -> torch.Tensor:
    """``(Tq, Tk)`` bool: query ``i`` (absolute position ``Tk - Tq + i``) may see key ``j <= pos``.

    With ``window`` (sliding-window attention, Mistral / Longformer arXiv:2004.05150) it also needs
    ``pos - j < window``: each query sees itself and the ``window - 1`` keys before it.
    """
    if window is not None and window < 1:
        raise ValueError(f"window must be a positive int or None, got {window}")
    q_pos = torch.arange(t_k - t_q, t_k, device=device)[:, None]  # (Tq, 1)
    k_pos = torch.arange(t_k, device=device)[None, :]  # (1, Tk)
    mask = k_pos <= q_pos
    if window is not None:
        mask = mask & (q_pos - k_pos < window)
    return mask


def padding_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """HF-style ``(B, Tk)`` 1/0 tensor (1 = real token) -> ``(B, 1, 1, Tk)`` bool key mask."""
    if attention_mask.dim() != 2:
        raise ValueError(f"attention_mask must be (B, T), got shape {tuple(attention_mask.shape)}")
    return attention_mask.bool()[:, None, None, :]


def combine_masks(*masks: torch.Tensor | None) -> torch.Tensor | None:
    """Logical AND of the given boolean masks (None entries ignored); None if all are None."""
    out: torch.Tensor | None = None
    for m in masks:
        if m is not None:
            out = m if out is None else out & m
    return out


def mask_to_bias(mask: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Boolean mask -> additive bias: 0 where allowed, ``-inf`` where not."""
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, float("-inf"))


def _guard_empty_rows(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Open fully-masked rows (to avoid NaN) and return the per-row 'has a key' flag to zero them."""
    has_key = mask.any(dim=-1, keepdim=True)  # (..., Tq, 1)
    return mask | ~has_key, has_key


# --------------------------------------------------------------------------- attention functions


def eager_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    scale: float | None = None,
    dropout_p: float = 0.0,
    return_weights: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """``softmax(q k^T * scale + bias, masked) v`` (Vaswani et al. 2017, arXiv:1706.03762).

    q ``(B, H, Tq, D)``; k, v ``(B, Hkv, Tk, D)`` with ``H % Hkv == 0`` (MHA, MQA and GQA alike);
    ``scale`` defaults to ``1/sqrt(D)``. Materialises the ``(Tq, Tk)`` score matrix: the readable
    reference the fast paths are tested against.
    """
    n_rep = check_heads(q, k, v)
    k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)  # (B, H, Tk, D)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = (q @ k.transpose(-2, -1)) * scale  # (B, H, Tq, Tk)
    if bias is not None:
        scores = scores + bias
    has_key = None
    if mask is not None:
        mask, has_key = _guard_empty_rows(mask)
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1, dtype=torch.promote_types(q.dtype, torch.float32)).to(q.dtype)
    if has_key is not None:
        weights = weights * has_key
    if dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p)
    out = weights @ v  # (B, H, Tq, D)
    return (out, weights) if return_weights else out


def sdpa_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    scale: float | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
) -> torch.Tensor:
    """The production path: ``torch.nn.functional.scaled_dot_product_attention`` (fused kernels).

    Same arguments and result as :func:`eager_attention`; ``is_causal`` lets SDPA skip building the
    mask (only valid for ``Tq == Tk`` with no other mask).
    """
    n_rep = check_heads(q, k, v)
    has_key = None
    attn_mask: torch.Tensor | None = None
    if mask is not None:
        mask, has_key = _guard_empty_rows(mask)
        attn_mask = mask
    if bias is not None:
        b = bias.to(q.dtype)
        attn_mask = b if attn_mask is None else torch.where(attn_mask, b, float("-inf"))
    out = F.scaled_dot_product_attention(
        q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale, enable_gqa=n_rep > 1
    )
    return out if has_key is None else out * has_key


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    impl: AttnImpl = "sdpa",
    causal: bool = True,
    window: int | None = None,
    key_padding_mask: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    scale: float | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Dispatch one attention call to ``impl`` with structured masks.

    ``key_padding_mask`` is ``(B, Tk)`` bool (True = real token); ``bias`` broadcasts to
    ``(B, H, Tq, Tk)`` (ALiBi, T5). The tiled path builds its masks block by block and never
    materialises ``(Tq, Tk)``; it does not take a dense ``bias``.
    """
    if impl not in ATTN_IMPLS:
        raise ValueError(f"impl must be one of {ATTN_IMPLS}, got {impl!r}")
    t_q, t_k = q.shape[-2], k.shape[-2]
    if impl == "tiled":
        if bias is not None:
            raise ValueError("impl='tiled' does not support a dense bias; use impl='eager' or 'sdpa'")
        if dropout_p > 0.0:
            raise ValueError("impl='tiled' does not support dropout; set dropout to 0")
        return tiled_attention(
            q, k, v, causal=causal, window=window, key_padding_mask=key_padding_mask, scale=scale
        )
    if impl == "sdpa" and causal and window is None and key_padding_mask is None and bias is None and t_q == t_k:
        return sdpa_attention(q, k, v, scale=scale, dropout_p=dropout_p, is_causal=True)
    structural = causal_mask(t_q, t_k, window=window, device=q.device) if causal else None
    if not causal and window is not None:
        raise ValueError("window requires causal=True")
    pad = key_padding_mask[:, None, None, :].bool() if key_padding_mask is not None else None  # (B, 1, 1, Tk)
    mask = combine_masks(structural, pad)
    fn = eager_attention if impl == "eager" else sdpa_attention
    return fn(q, k, v, mask=mask, bias=bias, scale=scale, dropout_p=dropout_p)  # type: ignore[return-value]


# --------------------------------------------------------------------------- KV cache


class KVCache:
    """Per-layer keys and values of the tokens seen so far (append-only, concatenated on T).

    Decoding a token then costs one query against the cached keys instead of recomputing the
    whole prefix: ``prefill(prompt)`` then ``step(token)`` reproduces a full forward's logits.
    Works for any pair of tensors with time on dim -2 (MLA stores ``(c_kv, k_rope)`` here).
    """

    def __init__(self) -> None:
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []

    def update(self, layer_idx: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append this step's ``k, v`` for ``layer_idx`` and return everything cached for it."""
        if layer_idx == len(self.keys):
            self.keys.append(k)
            self.values.append(v)
        elif layer_idx < len(self.keys):
            self.keys[layer_idx] = torch.cat((self.keys[layer_idx], k), dim=-2)
            self.values[layer_idx] = torch.cat((self.values[layer_idx], v), dim=-2)
        else:
            raise ValueError(f"layer_idx {layer_idx} skips layers; cache holds {len(self.keys)}")
        return self.keys[layer_idx], self.values[layer_idx]

    def seq_len(self, layer_idx: int = 0) -> int:
        """Number of cached positions (0 when empty)."""
        return self.keys[layer_idx].shape[-2] if layer_idx < len(self.keys) else 0

    def nbytes(self) -> int:
        """Memory held by the cache, in bytes."""
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))


# --------------------------------------------------------------------------- module


@dataclass(kw_only=True)
class AttentionConfig:
    """Multi-head attention with shared key/value heads: one class for MHA, MQA and GQA."""

    d_model: int  # C, residual stream width
    n_heads: int  # H query heads
    n_kv_heads: int | None = None  # Hkv: None = H (MHA), 1 = MQA (arXiv:1911.02150), else GQA
    head_dim: int | None = None  # D; None = C / H
    bias: bool = False  # bias in q/k/v/o projections (LLaMA: none)
    impl: AttnImpl = "sdpa"  # "eager" reference, "tiled" FlashAttention in torch, "sdpa" fused kernel
    window: int | None = None  # sliding-window size; None = full causal attention
    causal: bool = True  # decoder self-attention
    dropout: float = 0.0  # attention-probability dropout (training only)
    rope_layout: RopeLayout = "half"  # pairing of dims rotated by RoPE (when cos/sin are passed)

    def __post_init__(self) -> None:
        kv = self.n_kv_heads if self.n_kv_heads is not None else self.n_heads
        if self.n_heads < 1 or kv < 1 or self.n_heads % kv != 0:
            raise ValueError(f"n_heads ({self.n_heads}) must be a positive multiple of n_kv_heads ({kv})")
        if self.head_dim is None and self.d_model % self.n_heads != 0:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if self.impl not in ATTN_IMPLS:
            raise ValueError(f"impl must be one of {ATTN_IMPLS}, got {self.impl!r}")


class GroupedQueryAttention(nn.Module):
    """Project, (rotate), cache, attend, project back. ``n_kv_heads`` picks MHA / MQA / GQA."""

    def __init__(self, cfg: AttentionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.n_heads = cfg.n_heads
        self.n_kv_heads = cfg.n_kv_heads or cfg.n_heads
        self.head_dim = cfg.head_dim or cfg.d_model // cfg.n_heads
        c, d = cfg.d_model, self.head_dim
        self.q_proj = nn.Linear(c, self.n_heads * d, bias=cfg.bias)
        self.k_proj = nn.Linear(c, self.n_kv_heads * d, bias=cfg.bias)
        self.v_proj = nn.Linear(c, self.n_kv_heads * d, bias=cfg.bias)
        self.o_proj = nn.Linear(self.n_heads * d, c, bias=cfg.bias)

    def forward(
        self,
        x: torch.Tensor,
        *,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        key_padding_mask: torch.Tensor | None = None,
        bias: torch.Tensor | None = None,
        cache: KVCache | None = None,
        layer_idx: int = 0,
    ) -> torch.Tensor:
        """x ``(B, T, C)``; cos/sin ``(T, D)`` for the new positions; padding mask ``(B, T_past + T)``."""
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)  # (B, T, C) -> (B, H, T, D)
        k = self.k_proj(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, T, D)
        v = self.v_proj(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, T, D)
        if position_embeddings is not None:
            cos, sin = position_embeddings
            q, k = apply_rope(q, cos, sin, self.cfg.rope_layout), apply_rope(k, cos, sin, self.cfg.rope_layout)
        if cache is not None:
            k, v = cache.update(layer_idx, k, v)  # (B, Hkv, T_past + T, D)
        y = attend(
            q,
            k,
            v,
            impl=self.cfg.impl,
            causal=self.cfg.causal,
            window=self.cfg.window,
            key_padding_mask=key_padding_mask,
            bias=bias,
            dropout_p=self.cfg.dropout if self.training else 0.0,
        )  # (B, H, T, D)
        y = y.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim)  # (B, H, T, D) -> (B, T, H*D)
        return self.o_proj(y)
