"""Roofline arithmetic of a decode step, and the datasheet bandwidths it divides by."""

from __future__ import annotations

import pytest

from llmbook.hardware import PEAK_BANDWIDTH, PEAK_FLOPS, memory_bandwidth
from llmbook.serving.roofline import decode_intensity, decode_step_floor, measure_bandwidth


def test_decode_intensity_is_two_flops_per_weight_per_sequence():
    assert decode_intensity(1e9, 1, 2) == pytest.approx(1.0)  # bf16: B FLOP/byte
    assert decode_intensity(1e9, 8, 4) == pytest.approx(4.0)  # fp32: B / 2
    assert decode_intensity(1e9, 8, 2, kv_bytes=2e9) == pytest.approx(4.0)  # KV reads halve it here


def test_decode_floor_switches_from_memory_to_compute_at_the_ridge():
    peak, bandwidth = PEAK_FLOPS["H100 SXM"]["bf16"], PEAK_BANDWIDTH["H100 SXM"]
    ridge_batch = peak / bandwidth  # bf16: intensity B reaches the ridge at B = F / W
    memory = decode_step_floor(7e9, 1, 2, peak_flops=peak, bandwidth=bandwidth)
    assert memory == pytest.approx(7e9 * 2 / bandwidth)
    assert decode_step_floor(7e9, int(ridge_batch / 2), 2, peak_flops=peak, bandwidth=bandwidth) == memory
    compute = decode_step_floor(7e9, int(4 * ridge_batch), 2, peak_flops=peak, bandwidth=bandwidth)
    assert compute == pytest.approx(2 * 7e9 * int(4 * ridge_batch) / peak)


def test_bandwidth_table_and_measurement():
    assert memory_bandwidth("NVIDIA H100 80GB HBM3") == PEAK_BANDWIDTH["H100 SXM"]  # the default H100 variant
    assert memory_bandwidth("NVIDIA H100 PCIe") == PEAK_BANDWIDTH["H100 PCIe"]
    assert memory_bandwidth("NVIDIA H200") == 4.8e12
    assert memory_bandwidth("Some Unknown GPU") is None
    assert set(PEAK_BANDWIDTH) == set(PEAK_FLOPS)  # every part with a FLOP figure has a bandwidth
    measured = measure_bandwidth(megabytes=64, repeats=2)
    assert 1e8 < measured < 1e13  # bytes/s: a real memory system, not a cache artefact or a zero division
