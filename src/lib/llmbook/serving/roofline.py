"""Why decoding is memory-bound: arithmetic intensity of a decode step against a machine's ridge point.

One decode step of a dense model with ``P`` parameters stored in ``b`` bytes each, for a batch of
``B`` sequences, does about ``2 P B`` FLOPs (a multiply and an add per weight per sequence) and reads
every weight once, ``P b`` bytes (plus each sequence's KV cache). Its arithmetic intensity is

    I(B) = 2 P B / (P b + KV bytes)  ≈  2 B / b   FLOP per byte,

while a machine with peak ``F`` FLOP/s and memory bandwidth ``W`` bytes/s is compute-bound only above
its ridge point ``F / W`` (Williams et al. 2009, the roofline model). An H100 SXM's ridge in bf16 is
989e12 / 3.35e12 ≈ 295 FLOP/byte, so a bf16 decode (I ≈ B) stays memory-bound up to a batch of
hundreds: batching more sequences into each step is nearly free, which is what continuous batching
exploits. A step can take no less than ``max(2 P B / F, (P b + KV) / W)`` seconds.
"""

from __future__ import annotations

import time

import torch


def decode_intensity(params: float, batch: int, bytes_per_param: float, kv_bytes: float = 0.0) -> float:
    """FLOPs per byte moved by one decode step of ``batch`` sequences."""
    return 2 * params * batch / (params * bytes_per_param + kv_bytes)


def decode_step_floor(params: float, batch: int, bytes_per_param: float, *, peak_flops: float, bandwidth: float,
                      kv_bytes: float = 0.0) -> float:
    """Roofline lower bound (seconds) of one decode step: the slower of compute and memory traffic."""
    return max(2 * params * batch / peak_flops, (params * bytes_per_param + kv_bytes) / bandwidth)


def measure_bandwidth(megabytes: int = 256, repeats: int = 5, device: str | torch.device = "cpu") -> float:
    """Measured memory bandwidth (bytes/s): best of ``repeats`` copies of a ``megabytes`` buffer, counting
    the read and the write. A buffer far larger than the caches measures DRAM, not cache."""
    src = torch.ones(megabytes * 2**20 // 4, device=device)
    dst = torch.empty_like(src)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    dst.copy_(src)  # warm-up: pages touched, threads started
    sync()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        dst.copy_(src)
        sync()
        best = min(best, time.perf_counter() - start)
    return 2 * src.numel() * 4 / best
