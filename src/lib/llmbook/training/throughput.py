"""Training FLOPs, tokens per second and model FLOPs utilisation (MFU).

FLOPs per token (convention stated once; Kaplan et al. 2020, arXiv:2001.08361; PaLM, Chowdhery et
al. 2022, arXiv:2204.02311, appendix B)::

    F_token = 6 N + 12 L T C

- ``6N``: a matmul with N weights costs 2N FLOPs per token forward (multiply + add) and 4N
  backward (gradients w.r.t. inputs and weights). N counts every weight used in a matmul:
  all non-embedding parameters *plus the output head* ``V x C``; the input embedding lookup is a
  gather, not a matmul, so it is excluded (``exclude_embeddings=True``; with tied embeddings the
  shared matrix counts once, as the head).
- ``12 L T C``: attention scores ``QK^T`` and ``softmax(.)V`` are ``2 * 2 T C`` FLOPs per token per
  layer forward (full T x T, PaLM's convention: *no* causal halving), times 3 for forward + backward.
  (Chinchilla, Hoffmann et al. 2022, arXiv:2203.15556, appendix F, counts the same terms in detail.)
- Activation recomputation is *not* counted (that would be hardware FLOPs, HFU, not MFU).

``MFU = tokens_per_s * F_token / peak_flops``: the fraction of the device's peak the model's
arithmetic would need (PaLM's definition). Datasheet peaks: :func:`llmbook.hardware.peak_flops`;
a CPU's peak is measured (:func:`measure_matmul_flops`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch


def measure_matmul_flops(
    n: int = 2048, repeats: int = 5, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> float:
    """Measured "peak": best FLOP/s of an ``n x n @ n x n`` matmul (``2 n^3`` FLOPs) over ``repeats``.

    The reference for MFU where no datasheet figure applies (a CPU, or a GPU missing from
    :data:`llmbook.hardware.PEAK_FLOPS`).
    """
    a, b = (torch.randn(n, n, dtype=dtype, device=device) for _ in range(2))
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    a @ b  # warm-up (threads, caches, kernel selection)
    sync()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def matmul_params(*, vocab_size: int, d_model: int, n_layers: int, n_heads: int, n_kv_heads: int | None = None,
                  head_dim: int | None = None, d_ff: int, gated: bool = True) -> int:
    """N of the 6N term: attention + MLP weights of every layer plus the output head (no embedding, no norms)."""
    d = head_dim or d_model // n_heads
    kv = n_kv_heads or n_heads
    attn = d_model * n_heads * d * 2 + d_model * kv * d * 2  # q, o + k, v
    mlp = (3 if gated else 2) * d_model * d_ff
    return n_layers * (attn + mlp) + vocab_size * d_model


def flops_per_token(n_params: int, *, n_layers: int, seq_len: int, d_model: int) -> float:
    """``6 N + 12 L T C`` training FLOPs per token (forward + backward)."""
    return 6.0 * n_params + 12.0 * n_layers * seq_len * d_model


def model_flops_per_token(model: torch.nn.Module, seq_len: int) -> float:
    """:func:`flops_per_token` for a :class:`llmbook.model.DecoderLM`.

    N = parameters of every matrix minus the input embedding (the output head included).
    """
    cfg = model.cfg  # type: ignore[attr-defined]
    n = sum(p.numel() for name, p in model.named_parameters() if p.ndim >= 2 and name != "embed_tokens.weight")
    if cfg.tie_embeddings:
        n += model.embed_tokens.weight.numel()  # type: ignore[attr-defined]  # the head shares it
    return flops_per_token(n, n_layers=cfg.n_layers, seq_len=seq_len, d_model=cfg.d_model)


def mfu(tokens_per_s: float, flops_per_tok: float, peak: float | None) -> float:
    """Model FLOPs utilisation: achieved model FLOP/s over peak FLOP/s."""
    if peak is None:
        raise ValueError("peak is None: the device is not in llmbook.hardware.PEAK_FLOPS; "
                         "pass a measured peak (measure_matmul_flops()) or a datasheet number")
    if peak <= 0:
        raise ValueError(f"peak must be > 0, got {peak}")
    return tokens_per_s * flops_per_tok / peak


@dataclass
class ThroughputMeter:
    """Running tokens/s; call :meth:`update` after each step with the tokens it processed."""

    tokens: int = 0
    seconds: float = 0.0
    _t0: float | None = None

    def start(self) -> None:
        self._t0 = time.perf_counter()

    def update(self, tokens: int) -> float:
        """Add a step; returns the step's tokens/s (``start`` must have been called)."""
        if self._t0 is None:
            raise ValueError("call start() before update()")
        now = time.perf_counter()
        dt, self._t0 = now - self._t0, now
        self.tokens += tokens
        self.seconds += dt
        return tokens / dt if dt > 0 else float("inf")

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0
