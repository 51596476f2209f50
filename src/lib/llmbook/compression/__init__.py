"""Compression: quantisation, pruning, low-rank factorisation and distillation of causal language models.

One module per method, each a set of pure functions on weight tensors plus thin module wrappers:

- :mod:`~llmbook.compression.quantize` round-to-nearest grids (bits, symmetric or not, per tensor / channel /
  group), :mod:`~llmbook.compression.nf4` NF4 / FP4 (QLoRA, bit-exact with bitsandbytes),
  :mod:`~llmbook.compression.packed` real packed int4/int8 storage, :mod:`~llmbook.compression.int8_cpu`
  PyTorch's int8 CPU kernels, :mod:`~llmbook.compression.ggml` llama.cpp's Q8_0 / Q4_0 / Q4_1 and GGUF files;
- :mod:`~llmbook.compression.calibration` the statistics of each linear layer's inputs, gathered block by block;
  :mod:`~llmbook.compression.gptq` GPTQ, :mod:`~llmbook.compression.activation_aware` AWQ and SmoothQuant,
  :mod:`~llmbook.compression.llm_int8` LLM.int8();
- :mod:`~llmbook.compression.pruning` magnitude, Wanda, SparseGPT, n:m sparsity;
  :mod:`~llmbook.compression.low_rank` SVD, activation-aware and whitened SVD;
  :mod:`~llmbook.compression.distill` distillation losses and a student trainer;
- :mod:`~llmbook.compression.references` the production libraries' versions of the same grids, and
  :mod:`~llmbook.compression.recipes` every method applied to a whole model, with its storage cost.
"""

from llmbook.compression.calibration import LinearStats, compress_sequentially, iterate_blocks, sample_windows
from llmbook.compression.ggml import GGML_TYPES, dequantize_ggml, quantize_ggml, write_gguf
from llmbook.compression.gptq import GPTQResult, gptq_linear, gptq_quantize, layer_output_error
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
from llmbook.compression.packed import PackedLinear, pack_int4, unpack_int4
from llmbook.compression.pruning import check_n_m, magnitude_mask, prune_linear, sparsegpt_prune, wanda_mask
from llmbook.compression.quantize import QuantizedTensor, QuantSpec, fake_quantize, fake_quantize_4bit, quantize_weight

__all__ = [
    "ABSMAX_BLOCKSIZE",
    "CODE_NAMES",
    "GGML_TYPES",
    "GPTQResult",
    "LUT_SIZE",
    "LinearStats",
    "NF4_OFFSET",
    "Nf4Linear",
    "PackedLinear",
    "QuantSpec",
    "QuantizedTensor",
    "QuantizedWeight",
    "check_n_m",
    "code_table",
    "compress_sequentially",
    "dequantize_4bit",
    "dequantize_blockwise_8bit",
    "dequantize_ggml",
    "dynamic_code",
    "fake_quantize",
    "fake_quantize_4bit",
    "fp4_code",
    "gptq_linear",
    "gptq_quantize",
    "int4_code",
    "iterate_blocks",
    "layer_output_error",
    "lut_8bit",
    "magnitude_mask",
    "nearest_index",
    "nf4_code",
    "pack_int4",
    "pack_nibbles",
    "prune_linear",
    "quantize_4bit",
    "quantize_blockwise_8bit",
    "quantize_ggml",
    "quantize_weight",
    "reconstruction_error",
    "sample_windows",
    "sparsegpt_prune",
    "unpack_int4",
    "unpack_nibbles",
    "wanda_mask",
    "write_gguf",
]
