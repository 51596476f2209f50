"""Query heads and shared key/value heads: the shape check and the sharing every attention path uses.

Grouped-query attention (Ainslie et al. 2023, arXiv:2305.13245) gives ``H`` query heads only
``Hkv`` key/value heads, ``H % Hkv == 0``: query head ``h`` reads key/value head ``h // (H / Hkv)``.
``Hkv = H`` is multi-head attention, ``Hkv = 1`` multi-query attention (Shazeer 2019, arXiv:1911.02150).
"""

from __future__ import annotations

import torch


def check_heads(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> int:
    """Validate q ``(B, H, Tq, D)``, k, v ``(B, Hkv, Tk, D)`` and return ``n_rep = H / Hkv``."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"q, k, v must be (B, H, T, D); got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if k.shape[1] != v.shape[1] or q.shape[1] % k.shape[1] != 0:
        raise ValueError(f"query heads ({q.shape[1]}) must be a multiple of key/value heads ({k.shape[1]})")
    return q.shape[1] // k.shape[1]


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """Share each of the ``Hkv`` key/value heads with ``n_rep`` query heads (GQA, arXiv:2305.13245)."""
    if n_rep == 1:
        return x
    b, h_kv, t, d = x.shape
    x = x[:, :, None].expand(b, h_kv, n_rep, t, d)  # (B, Hkv, n_rep, T, D)
    return x.reshape(b, h_kv * n_rep, t, d)  # (B, H, T, D)
