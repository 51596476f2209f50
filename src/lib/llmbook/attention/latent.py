"""Multi-head latent attention (MLA), DeepSeek-V2 (arXiv:2405.04434).

MLA caches one small latent vector per token instead of per-head keys and values:

    c_kv = RMSNorm(W_dkv x)                 (r,)       compressed KV, cached
    k_rope = RoPE(W_kr x)                   (d_r,)     one decoupled RoPE key shared by all heads, cached
    [k_nope_h ; v_h] = W_ukv,h c_kv         (d_n + d_v) per head, re-derived from c_kv
    q_h = [q_nope_h ; RoPE(q_rope_h)]       from x (optionally through a low-rank q_lora_rank bottleneck)
    score_h(i, j) = (q_nope_h . k_nope_h + q_rope_h . k_rope) / sqrt(d_n + d_r)

RoPE cannot live inside ``c_kv`` (it would not commute with ``W_ukv``), hence the separate
``k_rope``. The cache costs ``r + d_r`` numbers per token per layer versus ``2 H D`` for MHA.

``absorb=True`` computes the same result without decompressing keys: ``q_nope_h . (W_uk,h c)``
``= (W_uk,h^T q_nope_h) . c``, so each head's query moves into the latent space and attends over
``[c_kv ; k_rope]`` as a single shared key head (an MQA over the latent), and ``W_uv`` is applied
after the weighted sum. This is how MLA decodes cheaply.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from llmbook.attention.core import ATTN_IMPLS, AttnImpl, KVCache, attend
from llmbook.positional import RopeConfig, RotaryEmbedding, apply_rope


@dataclass(kw_only=True)
class LatentAttentionConfig:
    """Sizes of DeepSeek-V2's MLA (V2 uses C=5120, H=128, r=512, q_lora_rank=1536, d_n=128, d_r=64, d_v=128)."""

    d_model: int  # C
    n_heads: int  # H
    kv_lora_rank: int  # r, width of the cached latent c_kv
    q_lora_rank: int | None = None  # None = full-rank query projection
    qk_nope_head_dim: int  # d_n, per-head query/key dims without position
    qk_rope_head_dim: int  # d_r, per-head dims carrying RoPE (key part shared across heads)
    v_head_dim: int  # d_v
    rope: RopeConfig | None = None  # frequencies for the decoupled RoPE dims
    impl: AttnImpl = "sdpa"  # attention kernel
    norm_eps: float = 1e-6  # RMSNorm epsilon of the latent norms

    def __post_init__(self) -> None:
        if self.impl not in ATTN_IMPLS:
            raise ValueError(f"impl must be one of {ATTN_IMPLS}, got {self.impl!r}")
        if self.qk_rope_head_dim % 2 != 0:
            raise ValueError(f"qk_rope_head_dim must be even, got {self.qk_rope_head_dim}")


class MultiHeadLatentAttention(nn.Module):
    """MLA with a cache of ``(c_kv (B, T, r), k_rope (B, 1, T, d_r))`` stored in a :class:`KVCache`."""

    def __init__(self, cfg: LatentAttentionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        h, c = cfg.n_heads, cfg.d_model
        d_qk = cfg.qk_nope_head_dim + cfg.qk_rope_head_dim
        if cfg.q_lora_rank is None:
            self.q_proj = nn.Linear(c, h * d_qk, bias=False)
        else:
            self.q_a_proj = nn.Linear(c, cfg.q_lora_rank, bias=False)
            self.q_a_norm = nn.RMSNorm(cfg.q_lora_rank, eps=cfg.norm_eps)
            self.q_b_proj = nn.Linear(cfg.q_lora_rank, h * d_qk, bias=False)
        self.kv_a_proj = nn.Linear(c, cfg.kv_lora_rank + cfg.qk_rope_head_dim, bias=False)  # [W_dkv; W_kr]
        self.kv_a_norm = nn.RMSNorm(cfg.kv_lora_rank, eps=cfg.norm_eps)
        self.kv_b_proj = nn.Linear(cfg.kv_lora_rank, h * (cfg.qk_nope_head_dim + cfg.v_head_dim), bias=False)
        self.o_proj = nn.Linear(h * cfg.v_head_dim, c, bias=False)
        self.rotary = RotaryEmbedding(cfg.qk_rope_head_dim, cfg.rope)
        self.scale = 1.0 / math.sqrt(d_qk)

    def forward(
        self, x: torch.Tensor, *, cache: KVCache | None = None, layer_idx: int = 0, absorb: bool = False
    ) -> torch.Tensor:
        """x ``(B, T, C)`` -> ``(B, T, C)``; causal; positions continue from the cache length."""
        cfg = self.cfg
        b, t, _ = x.shape
        h, d_n, d_r, d_v, r = cfg.n_heads, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim, cfg.kv_lora_rank
        past = cache.seq_len(layer_idx) if cache is not None else 0
        cos, sin = self.rotary(torch.arange(past, past + t, device=x.device))  # (T, d_r)

        q = self.q_proj(x) if cfg.q_lora_rank is None else self.q_b_proj(self.q_a_norm(self.q_a_proj(x)))
        q = q.view(b, t, h, d_n + d_r).transpose(1, 2)  # (B, T, H*(d_n+d_r)) -> (B, H, T, d_n+d_r)
        q_nope, q_rope = q.split((d_n, d_r), dim=-1)
        q_rope = apply_rope(q_rope, cos, sin)

        c_kv, k_rope = self.kv_a_proj(x).split((r, d_r), dim=-1)  # (B, T, r), (B, T, d_r)
        c_kv = self.kv_a_norm(c_kv)
        k_rope = apply_rope(k_rope[:, None], cos, sin)  # (B, 1, T, d_r): one head shared by all
        if cache is not None:
            c_kv, k_rope = cache.update(layer_idx, c_kv, k_rope)  # (B, Tk, r), (B, 1, Tk, d_r)
        t_k = c_kv.shape[1]

        w_ukv = self.kv_b_proj.weight.view(h, d_n + d_v, r)  # (H*(d_n+d_v), r) -> (H, d_n+d_v, r)
        if absorb:
            w_uk, w_uv = w_ukv.split((d_n, d_v), dim=1)  # (H, d_n, r), (H, d_v, r)
            q_lat = torch.einsum("bhtn,hnr->bhtr", q_nope, w_uk)  # query moved into latent space
            query = torch.cat((q_lat, q_rope), dim=-1)  # (B, H, T, r + d_r)
            key = torch.cat((c_kv[:, None], k_rope), dim=-1)  # (B, 1, Tk, r + d_r)
            o_lat = attend(query, key, c_kv[:, None], impl=cfg.impl, scale=self.scale)  # (B, H, T, r)
            o = torch.einsum("bhtr,hvr->bhtv", o_lat, w_uv)  # (B, H, T, d_v)
        else:
            kv = self.kv_b_proj(c_kv).view(b, t_k, h, d_n + d_v).transpose(1, 2)  # (B, H, Tk, d_n+d_v)
            k_nope, v = kv.split((d_n, d_v), dim=-1)
            key = torch.cat((k_nope, k_rope.expand(b, h, t_k, d_r)), dim=-1)  # (B, H, Tk, d_n+d_r)
            query = torch.cat((q_nope, q_rope), dim=-1)  # (B, H, T, d_n+d_r)
            o = attend(query, key, v, impl=cfg.impl, scale=self.scale)  # (B, H, T, d_v)
        o = o.transpose(1, 2).reshape(b, t, h * d_v)  # (B, H, T, d_v) -> (B, T, H*d_v)
        return self.o_proj(o)

    def cache_floats_per_token(self) -> int:
        """Numbers cached per token per layer: ``r + d_r`` (vs ``2 * H * D`` for MHA)."""
        return self.cfg.kv_lora_rank + self.cfg.qk_rope_head_dim
