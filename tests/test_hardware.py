"""The one datasheet peak-FLOP/s table and its lookup by device name."""

import pytest

from llmbook.hardware import PEAK_FLOPS, PRECISIONS, peak_flops


@pytest.mark.parametrize(
    ("device", "precision", "expected"),
    [
        ("NVIDIA H100 80GB HBM3", "bf16", 989e12),  # the SXM part reports no "SXM": the default H100 variant
        ("NVIDIA H100 PCIe", "bf16", 756e12),
        ("NVIDIA H100 PCIe", "fp32", 51e12),
        ("NVIDIA H200", "bf16", 989e12),
        ("NVIDIA A100-SXM4-80GB", "bf16", 312e12),
        ("NVIDIA A100 80GB PCIe", "tf32", 156e12),
        ("NVIDIA L40S", "bf16", 362e12),  # not the L4: words match whole, not as substrings
        ("NVIDIA L4", "bf16", 121e12),
        ("NVIDIA A10", "bf16", 125e12),
        ("NVIDIA GeForce RTX 4090", "bf16", 165e12),
        ("Tesla V100-SXM2-16GB", "fp16", 125e12),
    ],
)
def test_peak_flops_by_device_name(device: str, precision: str, expected: float) -> None:
    assert peak_flops(device, precision) == expected


def test_unknown_device_or_missing_format_is_none_and_bad_precision_raises() -> None:
    assert peak_flops("TPU v4") is None
    assert peak_flops("Some Unknown GPU") is None
    assert peak_flops("NVIDIA A10G") is None  # a different part from the A10, not in the table
    assert peak_flops("Tesla V100-SXM2-16GB", "bf16") is None  # Volta has no bf16 tensor cores
    with pytest.raises(ValueError, match="precision must be one of"):
        peak_flops("NVIDIA H100 PCIe", "int8")


def test_table_formats_and_ordering() -> None:
    for name, table in PEAK_FLOPS.items():
        assert set(table) <= set(PRECISIONS), name
        assert all(v > 1e12 for v in table.values()), name
        if "bf16" in table and "fp32" in table:
            assert table["bf16"] > table["fp32"], name  # tensor cores beat plain fp32 everywhere
