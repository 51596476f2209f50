"""Attention over a paged KV cache: gather each sequence's blocks by its block table, then attend.

For a batch of sequences that each bring ``L_b`` new query tokens starting at position ``s_b`` and
have ``n_b = s_b + L_b`` tokens in the cache, query ``i`` of sequence ``b`` sees keys ``j`` with

    j <= s_b + i   (causal)   and   j < n_b   (the rest of the gathered blocks is padding)

so one call serves decode steps (``L_b = 1``), whole prompts and prefill chunks in any mix, as
iteration-level batching needs (Orca, Yu et al. 2022; vLLM, arXiv:2309.06180). The gather copies
blocks into a padded ``(B, H_kv, T_k, D)`` tensor and hands it to SDPA: a CPU-friendly stand-in for
vLLM's kernel, which reads the blocks in place.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def gather_kv(pool: torch.Tensor, block_tables: torch.Tensor, block_size: int) -> torch.Tensor:
    """Keys or values of each sequence, in order: ``pool (S, H_kv, D)``, ``block_tables (B, N)`` →
    ``(B, H_kv, N * block_size, D)`` (slots past a sequence's length hold whatever the block holds)."""
    b, n = block_tables.shape
    slots = (block_tables[:, :, None] * block_size + torch.arange(block_size, device=pool.device)).reshape(b, -1)
    return pool[slots].transpose(1, 2)  # (B, T_k, H_kv, D) -> (B, H_kv, T_k, D)


def paged_mask(query_starts: torch.Tensor, query_lens: torch.Tensor, context_lens: torch.Tensor,
               t_q: int, t_k: int) -> torch.Tensor:
    """``(B, 1, T_q, T_k)`` boolean mask (True = attend) for the rule in the module docstring.
    Padding query rows (``i >= L_b``) see key 0 only, so softmax never meets an empty row."""
    i = torch.arange(t_q, device=query_starts.device)[None, :, None]  # (1, T_q, 1)
    j = torch.arange(t_k, device=query_starts.device)[None, None, :]  # (1, 1, T_k)
    visible = (j <= query_starts[:, None, None] + i) & (j < context_lens[:, None, None])
    padding_row = i >= query_lens[:, None, None]
    return (visible | (padding_row & (j == 0)))[:, None]


def paged_attention(q: torch.Tensor, key_pool: torch.Tensor, value_pool: torch.Tensor, block_tables: torch.Tensor,
                    query_starts: torch.Tensor, query_lens: torch.Tensor, context_lens: torch.Tensor, *,
                    block_size: int, scale: float | None = None) -> torch.Tensor:
    """``q (B, H, T_q, D)`` attends to its sequence's cached keys/values → ``(B, H, T_q, D)``.
    ``H`` may be a multiple of ``H_kv`` (grouped-query attention)."""
    k = gather_kv(key_pool, block_tables, block_size)
    v = gather_kv(value_pool, block_tables, block_size)
    b, heads, t_q, d = q.shape
    group = heads // k.shape[1]
    mask = paged_mask(query_starts, query_lens, context_lens, t_q, k.shape[2])
    # Grouped-query attention without copying keys: the G query heads that share a KV head become G * T_q
    # rows of one head (head h reads KV head h // G, as transformers' repeat_kv), each with its row of the mask.
    q = q.reshape(b, heads // group, group * t_q, d)  # (B, H_kv, G * T_q, D)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.repeat(1, 1, group, 1), scale=scale)
    return out.reshape(b, heads, t_q, d)


def contiguous_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start: int, *,
                         scale: float | None = None) -> torch.Tensor:
    """The reference: one sequence, ``q (1, H, L, D)`` at positions ``start..start+L-1`` over a
    contiguous cache ``k, v (1, H_kv, start+L, D)``."""
    length, total = q.shape[2], k.shape[2]
    mask = torch.arange(total)[None, :] <= start + torch.arange(length)[:, None]  # (L, T_k)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=q.shape[1] != k.shape[1])
