"""Compression: quantisation data types and quantised layers;
the LoRA chapter's QLoRA and the compression chapter share this code.

:mod:`llmbook.compression.nf4` builds NF4 (QLoRA, arXiv:2305.14314), bitsandbytes' FP4 and a symmetric int4 grid
from their definitions, block-wise 4-bit quantisation with double-quantised scales, and a frozen 4-bit linear layer.
"""

from llmbook.compression.nf4 import (
    ABSMAX_BLOCKSIZE,
    CODE_NAMES,
    LUT_SIZE,
    NF4_OFFSET,
    Nf4Linear,
    QuantizedWeight,
    code_table,
    dequantize_4bit,
    dequantize_blockwise_8bit,
    dynamic_code,
    fp4_code,
    int4_code,
    lut_8bit,
    nearest_index,
    nf4_code,
    pack_nibbles,
    quantize_4bit,
    quantize_blockwise_8bit,
    reconstruction_error,
    unpack_nibbles,
)

__all__ = [
    "ABSMAX_BLOCKSIZE",
    "CODE_NAMES",
    "LUT_SIZE",
    "NF4_OFFSET",
    "Nf4Linear",
    "QuantizedWeight",
    "code_table",
    "dequantize_4bit",
    "dequantize_blockwise_8bit",
    "dynamic_code",
    "fp4_code",
    "int4_code",
    "lut_8bit",
    "nearest_index",
    "nf4_code",
    "pack_nibbles",
    "quantize_4bit",
    "quantize_blockwise_8bit",
    "reconstruction_error",
    "unpack_nibbles",
]
