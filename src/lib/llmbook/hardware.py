"""Datasheet peak FLOP/s of accelerators: the one table MFU and achieved-TFLOP/s figures divide by.

``utilisation = achieved FLOP/s / peak FLOP/s`` (MFU, Chowdhery et al. 2022, arXiv:2204.02311,
appendix B). Peaks are the vendors' dense tensor-core figures (no 2:4 sparsity) per number format;
a CPU has no trustworthy datasheet peak, so callers measure one instead
(:func:`llmbook.training.throughput.measure_matmul_flops`).
"""

from __future__ import annotations

import re

PRECISIONS = ("bf16", "fp16", "tf32", "fp32")

# dense (no 2:4 sparsity) peak FLOP/s from vendor datasheets; a format the part lacks is absent (V100: no bf16)
PEAK_FLOPS: dict[str, dict[str, float]] = {
    "H100 SXM": {"bf16": 989e12, "fp16": 989e12, "tf32": 495e12, "fp32": 67e12},
    "H100 PCIe": {"bf16": 756e12, "fp16": 756e12, "tf32": 378e12, "fp32": 51e12},  # lower clock, fewer SMs
    "H200": {"bf16": 989e12, "fp16": 989e12, "tf32": 495e12, "fp32": 67e12},
    "A100": {"bf16": 312e12, "fp16": 312e12, "tf32": 156e12, "fp32": 19.5e12},
    "L40S": {"bf16": 362e12},
    "L4": {"bf16": 121e12, "fp16": 121e12, "tf32": 60e12, "fp32": 30e12},
    "A10": {"bf16": 125e12},
    "RTX 4090": {"bf16": 165e12},
    "V100": {"fp16": 125e12, "fp32": 15.7e12},
}

# datasheet memory bandwidth in bytes/s (HBM or GDDR): what bounds decoding, which reads every weight per step
PEAK_BANDWIDTH: dict[str, float] = {
    "H100 SXM": 3.35e12,
    "H100 PCIe": 2.0e12,
    "H200": 4.8e12,
    "A100": 2.039e12,  # 80 GB SXM
    "L40S": 864e9,
    "L4": 300e9,
    "A10": 600e9,
    "RTX 4090": 1008e9,
    "V100": 900e9,
}

# a device name that names the chip but none of its listed variants: e.g. "NVIDIA H100 80GB HBM3" is the SXM part
DEFAULT_VARIANT = {"H100": "H100 SXM"}


def _words(name: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", name.lower()))


def peak_flops(device: str, precision: str = "bf16") -> float | None:
    """Datasheet peak FLOP/s of ``device`` (e.g. ``torch.cuda.get_device_name()``) in ``precision``.

    A table entry matches when all its words are words of the device name ("NVIDIA A100-SXM4-80GB"
    is an "A100"); the entry with the most words wins ("H100 PCIe" over the default "H100").
    Returns None for a device not in :data:`PEAK_FLOPS` or a format the device lacks: callers that
    need a number say so themselves (or measure the device). An unknown ``precision`` is an error.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    entry = _entry(device)
    return None if entry is None else PEAK_FLOPS[entry].get(precision)


def memory_bandwidth(device: str) -> float | None:
    """Datasheet memory bandwidth (bytes/s) of ``device``, matched as in :func:`peak_flops`; None if unknown."""
    entry = _entry(device)
    return None if entry is None else PEAK_BANDWIDTH.get(entry)


def _entry(device: str) -> str | None:
    """The table entry whose words are all words of ``device`` (the most specific one), or None."""
    words = _words(device)
    names = {key: key for key in PEAK_FLOPS} | DEFAULT_VARIANT
    matches = [key for key in names if _words(key) <= words]
    if not matches:
        return None
    return names[max(matches, key=lambda key: len(_words(key)))]
