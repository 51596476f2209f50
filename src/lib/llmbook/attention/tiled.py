"""Tiled attention with an online softmax: the FlashAttention algorithm in plain torch.

FlashAttention (Dao et al. 2022, arXiv:2205.14135; backward as in FlashAttention-2,
arXiv:2307.08691) never forms the ``(Tq, Tk)`` score matrix. Queries are processed in blocks of
``block_q`` rows; for each, key/value blocks of ``block_k`` columns stream past while a running
row maximum ``m``, normaliser ``l`` and un-normalised output ``acc`` are rescaled:

    m' = max(m, rowmax(S_blk)),   P = exp(S_blk - m'),   a = exp(m - m')
    l' = a * l + rowsum(P),       acc' = a * acc + P V_blk,        O = acc / l

Only ``O`` and the log-sum-exp ``L = m + log l`` per row are saved. The backward pass recomputes
each score block from ``Q, K`` and ``L`` (``P = exp(S - L)``) instead of storing ``P``:

    dV += P^T dO,   dP = dO V^T,   dS = P * (dP - rowsum(dO * O)),   dQ += dS K s,   dK += dS^T Q s

so memory is ``O(T * D + block_q * block_k)`` rather than ``O(T^2)``. Here the tiles are torch
tensors and the loops run in Python: the point is the algorithm and its memory, not the kernel
speed (that is what SDPA / flash-attn provide).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from llmbook.attention.heads import check_heads, repeat_kv


def _block_mask(
    q0: int, q1: int, k0: int, k1: int, offset: int, causal: bool, window: int | None,
    key_padding_mask: torch.Tensor | None, device: torch.device,
) -> torch.Tensor | None:
    """Bool mask ``(B|1, 1, bq, bk)`` for one tile (True = may attend), or None if all allowed."""
    mask = None
    if causal:
        q_pos = torch.arange(q0 + offset, q1 + offset, device=device)[:, None]  # (bq, 1)
        k_pos = torch.arange(k0, k1, device=device)[None, :]  # (1, bk)
        mask = k_pos <= q_pos
        if window is not None:
            mask = mask & (q_pos - k_pos < window)
        mask = mask[None, None]  # (1, 1, bq, bk)
    if key_padding_mask is not None:
        pad = key_padding_mask[:, None, None, k0:k1]  # (B, 1, 1, bk)
        mask = pad if mask is None else mask & pad
    return mask


def _tile_skipped(q0: int, q1: int, k0: int, k1: int, offset: int, causal: bool, window: int | None) -> bool:
    """True when a tile is entirely in the future (causal) or entirely outside the window."""
    if not causal:
        return False
    if k0 > q1 - 1 + offset:  # first key after the last query
        return True
    return window is not None and (q0 + offset) - (k1 - 1) >= window  # last key too old for first query


class TiledAttentionFunction(torch.autograd.Function):
    """Forward saves ``(q, k, v, O, L)``; backward recomputes score tiles (no ``T x T`` tensor)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        key_padding_mask: torch.Tensor | None,
        causal: bool,
        window: int | None,
        scale: float,
        block_q: int,
        block_k: int,
    ) -> torch.Tensor:
        b, h, t_q, d = q.shape
        h_kv, t_k = k.shape[1], k.shape[2]
        n_rep, offset = h // h_kv, t_k - t_q
        f = torch.promote_types(q.dtype, torch.float32)  # accumulate in >= fp32
        d_v = v.shape[-1]  # may differ from D (MLA's absorbed form)
        out = q.new_empty(b, h, t_q, d_v)
        lse = torch.empty(b, h, t_q, dtype=f, device=q.device)
        for q0 in range(0, t_q, block_q):
            q1 = min(q0 + block_q, t_q)
            qb = q[:, :, q0:q1].to(f)  # (B, H, bq, D)
            m = torch.full((b, h, q1 - q0), float("-inf"), device=q.device, dtype=f)
            l_sum = torch.zeros(b, h, q1 - q0, device=q.device, dtype=f)  # the normaliser l
            acc = torch.zeros(b, h, q1 - q0, d_v, device=q.device, dtype=f)
            for k0 in range(0, t_k, block_k):
                k1 = min(k0 + block_k, t_k)
                if _tile_skipped(q0, q1, k0, k1, offset, causal, window):
                    continue
                kb = repeat_kv(k[:, :, k0:k1], n_rep).to(f)  # (B, H, bk, D)
                vb = repeat_kv(v[:, :, k0:k1], n_rep).to(f)
                s = (qb @ kb.transpose(-2, -1)) * scale  # (B, H, bq, bk)
                mask = _block_mask(q0, q1, k0, k1, offset, causal, window, key_padding_mask, q.device)
                if mask is not None:
                    s = s.masked_fill(~mask, float("-inf"))
                m_new = torch.maximum(m, s.amax(dim=-1))
                m_safe = torch.where(torch.isinf(m_new), torch.zeros_like(m_new), m_new)  # rows with no key yet
                p = torch.exp(s - m_safe[..., None])  # (B, H, bq, bk)
                alpha = torch.exp(m - m_safe)  # rescales the old statistics; 0 when m was -inf
                l_sum = alpha * l_sum + p.sum(dim=-1)
                acc = alpha[..., None] * acc + p @ vb
                m = m_new
            empty = l_sum == 0  # rows whose every key was masked: output 0, L = +inf so P = 0 in backward
            out[:, :, q0:q1] = (acc / torch.where(empty, 1.0, l_sum)[..., None]).to(q.dtype)
            lse[:, :, q0:q1] = torch.where(empty, float("inf"), m + torch.log(torch.where(empty, 1.0, l_sum)))
        ctx.save_for_backward(q, k, v, out, lse, key_padding_mask)
        ctx.cfg = (causal, window, scale, block_q, block_k)
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        q, k, v, out, lse, key_padding_mask = ctx.saved_tensors
        causal, window, scale, block_q, block_k = ctx.cfg
        b, h, t_q, d = q.shape
        h_kv, t_k = k.shape[1], k.shape[2]
        n_rep, offset = h // h_kv, t_k - t_q
        f = torch.promote_types(q.dtype, torch.float32)
        delta = (grad_out.to(f) * out.to(f)).sum(dim=-1)  # (B, H, Tq): rowsum(dO * O)
        dq = torch.zeros(b, h, t_q, d, device=q.device, dtype=f)
        dk = torch.zeros(b, h_kv, t_k, d, device=q.device, dtype=f)
        dv = torch.zeros(b, h_kv, t_k, v.shape[-1], device=q.device, dtype=f)
        for k0 in range(0, t_k, block_k):
            k1 = min(k0 + block_k, t_k)
            kb = repeat_kv(k[:, :, k0:k1], n_rep).to(f)  # (B, H, bk, D)
            vb = repeat_kv(v[:, :, k0:k1], n_rep).to(f)
            dk_acc = torch.zeros_like(kb)
            dv_acc = torch.zeros_like(vb)
            for q0 in range(0, t_q, block_q):
                q1 = min(q0 + block_q, t_q)
                if _tile_skipped(q0, q1, k0, k1, offset, causal, window):
                    continue
                qb, dob = q[:, :, q0:q1].to(f), grad_out[:, :, q0:q1].to(f)  # (B, H, bq, D)
                s = (qb @ kb.transpose(-2, -1)) * scale  # (B, H, bq, bk)
                mask = _block_mask(q0, q1, k0, k1, offset, causal, window, key_padding_mask, q.device)
                if mask is not None:
                    s = s.masked_fill(~mask, float("-inf"))
                p = torch.exp(s - lse[:, :, q0:q1, None])  # recomputed probabilities
                dv_acc += p.transpose(-2, -1) @ dob
                dp = dob @ vb.transpose(-2, -1)  # (B, H, bq, bk)
                ds = p * (dp - delta[:, :, q0:q1, None])
                dq[:, :, q0:q1] += (ds @ kb) * scale
                dk_acc += (ds.transpose(-2, -1) @ qb) * scale
            # query heads sharing a key/value head add their gradients: (B, H, bk, D) -> (B, Hkv, bk, D)
            dk[:, :, k0:k1] = dk_acc.view(b, h_kv, n_rep, k1 - k0, d).sum(dim=2)
            dv[:, :, k0:k1] = dv_acc.view(b, h_kv, n_rep, k1 - k0, -1).sum(dim=2)
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None, None, None, None, None


def tiled_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    window: int | None = None,
    key_padding_mask: torch.Tensor | None = None,
    scale: float | None = None,
    block_q: int = 128,
    block_k: int = 128,
) -> torch.Tensor:
    """Exact attention ``softmax(q k^T * scale) v`` computed tile by tile (FlashAttention).

    q ``(B, H, Tq, D)``; k, v ``(B, Hkv, Tk, D)``; ``key_padding_mask`` ``(B, Tk)`` bool, True = real
    token; causal alignment bottom-right (query i at position ``Tk - Tq + i``). Differentiable via
    :class:`TiledAttentionFunction`. Accumulates in fp32.
    """
    check_heads(q, k, v)
    if block_q < 1 or block_k < 1:
        raise ValueError(f"block_q and block_k must be >= 1, got {block_q}, {block_k}")
    if window is not None and not causal:
        raise ValueError("window requires causal=True")
    if key_padding_mask is not None:
        key_padding_mask = key_padding_mask.bool()
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    return TiledAttentionFunction.apply(q, k, v, key_padding_mask, causal, window, scale, block_q, block_k)
