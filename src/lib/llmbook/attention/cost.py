"""What attention costs: KV-cache bytes of published models, and measured time, memory and FLOP/s.

KV cache per token (all layers), with ``b`` bytes per number (2 for bf16):

    MHA / GQA / MQA:  2 * L * Hkv * D * b          (keys and values of every KV head)
    MLA (DeepSeek-V2): L * (r + d_r) * b            (one latent c_kv plus one shared RoPE key)

Attention FLOPs of one causal forward (two matmuls, ``Q K^T`` and ``P V``, half the tiles):
``2 * 2 * B * H * T^2 * D / 2``. Peak memory is measured as the high-water mark of tensor storage
allocated during a call (CPU: every storage created through the dispatcher is tracked until freed;
CUDA: ``torch.cuda.max_memory_allocated``). Memory hidden inside one fused kernel's scratch is not a
tensor and is not counted on CPU; on CUDA the caching allocator sees it. The datasheet peak to set
achieved TFLOP/s against is :func:`llmbook.hardware.peak_flops`.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils._python_dispatch import TorchDispatchMode

from llmbook.attention.core import attend

BYTES_PER_DTYPE = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1}


@dataclass(frozen=True, kw_only=True)
class PublishedAttention:
    """Attention sizes of a released model, copied from its published ``config.json``."""

    name: str  # model name
    source: str  # where the numbers come from
    n_layers: int  # L (num_hidden_layers)
    d_model: int  # C (hidden_size)
    n_heads: int  # H query heads (num_attention_heads)
    n_kv_heads: int  # Hkv (num_key_value_heads); for MLA the latent acts as one shared head
    head_dim: int  # D of a query/key head (for MLA: qk_nope_head_dim + qk_rope_head_dim)
    v_head_dim: int | None = None  # MLA: value head width (None = head_dim)
    kv_lora_rank: int | None = None  # MLA: r, width of the cached latent c_kv (None = not MLA)
    q_lora_rank: int | None = None  # MLA: low-rank query bottleneck (None = full-rank W_q)
    qk_rope_head_dim: int | None = None  # MLA: d_r, decoupled RoPE key width (cached, shared by heads)

    @property
    def kind(self) -> str:
        if self.kv_lora_rank is not None:
            return "MLA"
        if self.n_kv_heads == self.n_heads:
            return "MHA"
        return "MQA" if self.n_kv_heads == 1 else "GQA"


PUBLISHED = {
    "Llama-3-8B": PublishedAttention(
        name="Llama-3-8B", source="meta-llama/Meta-Llama-3-8B config.json (hidden_size 4096, 32 layers)",
        n_layers=32, d_model=4096, n_heads=32, n_kv_heads=8, head_dim=128,
    ),
    "Qwen2.5-7B": PublishedAttention(
        name="Qwen2.5-7B", source="Qwen/Qwen2.5-7B config.json (hidden_size 3584, 28 layers)",
        n_layers=28, d_model=3584, n_heads=28, n_kv_heads=4, head_dim=128,
    ),
    "DeepSeek-V2": PublishedAttention(
        name="DeepSeek-V2", source="deepseek-ai/DeepSeek-V2 config.json; arXiv:2405.04434 Table/Sec. 2.1",
        n_layers=60, d_model=5120, n_heads=128, n_kv_heads=1, head_dim=128 + 64, v_head_dim=128,
        kv_lora_rank=512, q_lora_rank=1536, qk_rope_head_dim=64,
    ),
}


def attention_shape(cfg: Any, *, n_layers: int | None = None, name: str = "this model") -> PublishedAttention:
    """The attention sizes of a model config, for the same formulas as the published models.

    ``cfg`` is the book's ``ModelConfig`` (or any config with ``n_layers``, ``d_model``, ``n_heads``,
    ``n_kv_heads`` and ``head_dim``, None meaning H and C / H), or a ``LatentAttentionConfig`` (MLA),
    which has no layer count of its own: pass ``n_layers``.
    """
    if hasattr(cfg, "kv_lora_rank"):  # MLA: the latent acts as one shared KV head
        if n_layers is None:
            raise ValueError("n_layers is required for a LatentAttentionConfig (it describes one layer)")
        return PublishedAttention(
            name=name, source="config", n_layers=n_layers, d_model=cfg.d_model, n_heads=cfg.n_heads, n_kv_heads=1,
            head_dim=cfg.qk_nope_head_dim + cfg.qk_rope_head_dim, v_head_dim=cfg.v_head_dim,
            kv_lora_rank=cfg.kv_lora_rank, q_lora_rank=cfg.q_lora_rank, qk_rope_head_dim=cfg.qk_rope_head_dim,
        )
    return PublishedAttention(
        name=name, source="config", n_layers=cfg.n_layers if n_layers is None else n_layers, d_model=cfg.d_model,
        n_heads=cfg.n_heads, n_kv_heads=cfg.n_kv_heads or cfg.n_heads,
        head_dim=cfg.head_dim or cfg.d_model // cfg.n_heads,
    )


def as_variant(cfg: PublishedAttention, kind: str) -> PublishedAttention:
    """The same model sizes with another attention: "MHA" (Hkv = H), "MQA" (Hkv = 1) or "GQA" (as published).

    For an MLA model the MHA/MQA variants use ``head_dim = v_head_dim`` (DeepSeek-V2's own MHA baseline).
    """
    allowed = ("MHA", "MQA", "GQA", "MLA")
    if kind not in allowed:
        raise ValueError(f"kind must be one of {allowed}, got {kind!r}")
    if kind == cfg.kind or (kind == "GQA" and cfg.kind in ("GQA", "MQA", "MHA")):
        return cfg
    if kind == "MLA":
        raise ValueError(f"{cfg.name} is not an MLA model; its latent sizes are not published")
    d = cfg.v_head_dim or cfg.head_dim
    kv = cfg.n_heads if kind == "MHA" else 1
    return PublishedAttention(name=f"{cfg.name} as {kind}", source=cfg.source, n_layers=cfg.n_layers,
                              d_model=cfg.d_model, n_heads=cfg.n_heads, n_kv_heads=kv, head_dim=d)


def kv_cache_bytes_per_token(cfg: PublishedAttention, dtype: str = "bf16") -> int:
    """Bytes of KV cache one token costs across all layers (formula in the module docstring)."""
    if dtype not in BYTES_PER_DTYPE:
        raise ValueError(f"dtype must be one of {sorted(BYTES_PER_DTYPE)}, got {dtype!r}")
    b = BYTES_PER_DTYPE[dtype]
    if cfg.kv_lora_rank is not None:
        return cfg.n_layers * (cfg.kv_lora_rank + (cfg.qk_rope_head_dim or 0)) * b
    return 2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * b


def attention_params_per_layer(cfg: PublishedAttention) -> int:
    """Weights of one attention layer (no biases). MLA: W_dq, W_uq, W_dkv+W_kr, W_ukv, W_o (+ 2 norms)."""
    c, h = cfg.d_model, cfg.n_heads
    if cfg.kv_lora_rank is None:
        d = cfg.head_dim
        return c * h * d + 2 * c * cfg.n_kv_heads * d + h * d * c  # q, k, v, o
    r, d_r, d_v = cfg.kv_lora_rank, cfg.qk_rope_head_dim or 0, cfg.v_head_dim or cfg.head_dim
    d_n = cfg.head_dim - d_r
    q = c * h * cfg.head_dim if cfg.q_lora_rank is None else c * cfg.q_lora_rank + cfg.q_lora_rank * h * cfg.head_dim
    norms = r + (cfg.q_lora_rank or 0)
    return q + c * (r + d_r) + r * h * (d_n + d_v) + h * d_v * c + norms


def dense_scores_bytes(batch: int, heads: int, t: int, dtype: torch.dtype = torch.float32) -> int:
    """Bytes of the B x H x T x T score matrix that eager attention materialises (and tiled never does)."""
    return batch * heads * t * t * torch.finfo(dtype).bits // 8


def causal_attention_flops(batch: int, heads: int, t: int, head_dim: int, *, causal: bool = True) -> float:
    """Multiply-adds x 2 of ``Q K^T`` and ``P V`` for one forward (half of them when causal)."""
    flops = 4.0 * batch * heads * t * t * head_dim
    return flops / 2 if causal else flops


class _StorageTracker(TorchDispatchMode):
    """Counts bytes of every storage created by an op until Python frees it; keeps the maximum."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._seen: set[int] = set()

    def _free(self, key: int, nbytes: int) -> None:
        self.live -= nbytes
        self._seen.discard(key)

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = {t.untyped_storage().data_ptr() for t in _tensors((*args, *kwargs.values()))}
        for t in _tensors(out if isinstance(out, (tuple, list)) else (out,)):
            if t.device.type != "cpu":
                continue
            storage = t.untyped_storage()
            key = storage.data_ptr()
            if key in self._seen or key in inputs or storage.nbytes() == 0:
                continue  # a view, an in-place op, or an op that returned an existing tensor
            self._seen.add(key)
            self.live += storage.nbytes()
            self.peak = max(self.peak, self.live)
            weakref.finalize(storage, self._free, key, storage.nbytes())
        return out


def _tensors(items: Any) -> list[torch.Tensor]:
    """The tensors among ``items``, looking one level into lists and tuples (aten op arguments)."""
    found: list[torch.Tensor] = []
    for item in items:
        if isinstance(item, torch.Tensor):
            found.append(item)
        elif isinstance(item, (list, tuple)):
            found.extend(x for x in item if isinstance(x, torch.Tensor))
    return found


def peak_memory(fn: Callable[[], Any], device: str | torch.device = "cpu") -> tuple[Any, int]:
    """Run ``fn()`` and return (its result, peak bytes of tensor memory it allocated beyond its inputs)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        result = fn()
        torch.cuda.synchronize(device)
        return result, torch.cuda.max_memory_allocated(device) - base
    tracker = _StorageTracker()
    with tracker:
        result = fn()
    return result, tracker.peak


def time_call(fn: Callable[[], Any], *, repeats: int = 3, warmup: int = 1, device: str | torch.device = "cpu") -> float:
    """Fastest of ``repeats`` calls, in seconds (after ``warmup`` calls; CUDA synchronised)."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best


def attention_cost(
    impl: str,
    t: int,
    *,
    batch: int = 1,
    heads: int = 4,
    head_dim: int = 64,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    backward: bool = False,
    repeats: int = 3,
    sdpa_backend: str | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Time, peak memory and achieved TFLOP/s of one causal attention call at length ``t``.

    ``impl`` is ``"eager"``, ``"tiled"`` or ``"sdpa"``; ``sdpa_backend`` ("flash", "efficient", "math",
    "cudnn") pins SDPA's kernel with ``torch.nn.attention.sdpa_kernel``. With ``backward`` the call is
    forward + backward (FLOPs x 3.5: the backward recomputes ``P`` and does four matmuls).
    """
    if sdpa_backend is not None and impl != "sdpa":
        raise ValueError(f"sdpa_backend is only valid with impl='sdpa', got impl={impl!r}")
    make_ctx: Callable[[], Any] = nullcontext
    if sdpa_backend is not None:
        backends = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                    "math": SDPBackend.MATH, "cudnn": SDPBackend.CUDNN_ATTENTION}
        if sdpa_backend not in backends:
            raise ValueError(f"sdpa_backend must be one of {sorted(backends)}, got {sdpa_backend!r}")
        make_ctx = lambda: sdpa_kernel([backends[sdpa_backend]])  # noqa: E731 (single-use context)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    q, k, v = (torch.randn(batch, heads, t, head_dim, generator=gen).to(device=device, dtype=dtype) for _ in range(3))
    if backward:
        q, k, v = (x.requires_grad_() for x in (q, k, v))

    def call() -> None:
        with make_ctx():
            if backward:
                attend(q, k, v, impl=impl, causal=True).sum().backward()
                q.grad = k.grad = v.grad = None
            else:
                with torch.no_grad():
                    attend(q, k, v, impl=impl, causal=True)

    seconds = time_call(call, repeats=repeats, device=device)
    _, peak = peak_memory(call, device)
    flops = causal_attention_flops(batch, heads, t, head_dim) * (3.5 if backward else 1.0)
    return {"T": t, "ms": 1000 * seconds, "peak_mib": peak / 2**20, "tflops": flops / seconds / 1e12,
            "dense_scores_mib": dense_scores_bytes(batch, heads, t, dtype) / 2**20}
