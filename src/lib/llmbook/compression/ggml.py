"""llama.cpp's block quantisation formats (Q8_0, Q4_0, Q4_1, Q6_K) and a GGUF writer for LLaMA models.

ggml (the tensor library under llama.cpp) stores a weight row in blocks of ``B`` consecutive values; each
block keeps its own float16 scale, so one outlier only coarsens its 32 neighbours. For a block ``x``:

    Q8_0:  d = max|x| / 127,        q = round(x / d)        in [-127, 127],  x_hat = d q
    Q4_0:  d = x_m / -8,            q = trunc(x / d + 8.5)  in [0, 15],      x_hat = d (q - 8)
    Q4_1:  d = (max x - min x)/15,  q = trunc((x - min x) / d + 0.5),        x_hat = d q + min x

where ``x_m`` is the value of largest magnitude *with its sign* (so it maps exactly to code 0, and the grid
-8..7 spends its extra level on the side of the outlier), ``round`` rounds half away from zero (C ``roundf``)
and ``1/d`` is taken on the float32 ``d`` before it is stored as float16. A block is ``d`` (2 bytes), for Q4_1
also ``m = min x`` (2 bytes), then the codes: 32 int8, or 16 bytes of nibbles with value ``j`` in the low
nibble of byte ``j`` and value ``j + 16`` in its high nibble. That is 34, 18 and 20 bytes per 32 weights:
8.5, 4.5 and 5.0 bits per weight. Q6_K (k-quants, llama.cpp PR #1684) is a super-block of 256 weights:
16 int8 sub-block scales times one float16 ``d``, and 6-bit codes ``q - 32`` split into low nibbles (128
bytes) and high 2-bit pairs (64 bytes), 210 bytes, 6.5625 bits per weight; it is only dequantised here, since
the ``gguf`` package has no reference quantiser to check one against.

The quantisers reproduce ``quantize_row_q{8_0,4_0,4_1}_ref`` of ggml's ``ggml-quants.c`` as ported to numpy in
the ``gguf`` package (``gguf.quants``), byte for byte; dequantisation matches ``gguf.quants.dequantize``.
GGUF (the file format, https://github.com/ggml-org/ggml/blob/master/docs/gguf.md) is a header of typed
key-value metadata, a table of tensor names, shapes and types, then the tensor data, each aligned to 32 bytes.
:func:`write_gguf` writes a Hugging Face ``LlamaForCausalLM`` with llama.cpp's tensor names and metadata, so
that llama.cpp and ``transformers`` (``from_pretrained(..., gguf_file=...)``) both load it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from os import PathLike
from typing import Any

import gguf
import numpy as np
import torch

QK = 32  # block size of Q8_0, Q4_0 and Q4_1 (QK8_0 = QK4_0 = QK4_1 in ggml)
QK_K = 256  # super-block size of the k-quants
_CHUNK_BLOCKS = 1 << 14  # blocks processed per numpy pass: keeps the temporaries in cache, not one per block

Array = np.ndarray | torch.Tensor


# ---------------------------------------------------------------------------------------------------------------
# Shared plumbing


def _as_float32(w: Array) -> np.ndarray:
    if isinstance(w, torch.Tensor):
        w = w.detach().to("cpu", torch.float32).numpy()
    if not isinstance(w, np.ndarray):
        raise TypeError(f"expected a numpy array or a torch tensor, got {type(w).__name__}")
    return np.ascontiguousarray(w, dtype=np.float32)


def _to_blocks(w: Array, block_size: int, name: str) -> tuple[np.ndarray, tuple[int, ...]]:
    """``w`` (..., width) as float32 blocks (N, block_size); raise on a width that does not split or non-finite."""
    x = _as_float32(w)
    if x.ndim == 0 or x.shape[-1] % block_size:
        raise ValueError(
            f"{name} quantises rows in blocks of {block_size}: shape {tuple(x.shape)} has a last dimension that is "
            f"not a multiple of {block_size}; keep such a tensor in F16/F32"
        )
    if not np.isfinite(x).all():
        raise ValueError(f"{name}: the tensor holds NaN or inf values; ggml's quantisers are undefined there")
    return x.reshape(-1, block_size), tuple(x.shape)  # (N, B)


def _as_bytes(data: Array, type_size: int, name: str) -> np.ndarray:
    """Stored ``data`` (..., n_bytes) as a contiguous uint8 array, rows a whole number of blocks."""
    if isinstance(data, torch.Tensor):
        data = data.detach().cpu().numpy()
    raw = np.ascontiguousarray(data).view(np.uint8)
    if raw.ndim == 0 or raw.shape[-1] % type_size:
        raise ValueError(f"{name} blocks are {type_size} bytes: got rows of {raw.shape[-1:]} bytes")
    return raw


def _chunked(fn: Callable[[np.ndarray], np.ndarray], blocks: np.ndarray) -> np.ndarray:
    """``fn`` on runs of blocks (each call vectorised over thousands of blocks), results concatenated."""
    return np.concatenate([fn(blocks[i : i + _CHUNK_BLOCKS]) for i in range(0, max(len(blocks), 1), _CHUNK_BLOCKS)])


def _reciprocal(d: np.ndarray) -> np.ndarray:
    """``1/d`` in float32, 0 where ``d == 0`` (ggml: ``id = d ? 1.0f/d : 0.0f``): an all-zero block codes to 0."""
    with np.errstate(divide="ignore"):
        return np.where(d == 0, np.float32(0), np.float32(1) / d)


def _fp16_bytes(v: np.ndarray, what: str) -> np.ndarray:
    """float32 (N, 1) -> its float16 bytes (N, 2), round to nearest even as ``GGML_FP32_TO_FP16``."""
    with np.errstate(over="ignore"):
        half = v.astype(np.float16)
    if np.isinf(half).any():
        raise ValueError(f"a block {what} of {float(np.abs(v).max()):.3g} overflows float16: scale the tensor down")
    return half.view(np.uint8)


def round_half_away(v: np.ndarray) -> np.ndarray:
    """C ``roundf``: to the nearest integer, halves away from zero (numpy's ``rint`` rounds halves to even)."""
    t = np.trunc(v)
    return t + np.trunc(2 * (v - t))  # v - t and 2 (v - t) are exact: the fraction, +-1 iff it is at least 1/2


def _pack_nibbles(q: np.ndarray) -> np.ndarray:
    """Codes (N, 32) in [0, 15] -> bytes (N, 16): value j in the low nibble of byte j, value j + 16 in the high."""
    return q[:, : QK // 2] | (q[:, QK // 2 :] << np.uint8(4))


def _unpack_nibbles(qs: np.ndarray) -> np.ndarray:
    """Bytes (N, 16) -> codes (N, 32), inverse of :func:`_pack_nibbles`."""
    return np.concatenate([qs & np.uint8(0x0F), qs >> np.uint8(4)], axis=1)


def _f16(raw: np.ndarray) -> np.ndarray:
    """Two bytes per row (N, 2) -> float32 (N, 1)."""
    return np.ascontiguousarray(raw).view(np.float16).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------------
# Q8_0, Q4_0, Q4_1: blocks of 32 with a float16 scale


def _q8_0_blocks(x: np.ndarray) -> np.ndarray:
    d = np.abs(x).max(axis=1, keepdims=True) / np.float32(127)  # (N, 1)
    q = round_half_away(x * _reciprocal(d)).astype(np.int8)  # (N, 32)
    return np.concatenate([_fp16_bytes(d, "scale"), q.view(np.uint8)], axis=1)  # (N, 34)


def _q4_0_blocks(x: np.ndarray) -> np.ndarray:
    # The signed value of largest magnitude; argmax takes the first of ties, like the C loop's strict `<`.
    signed_max = np.take_along_axis(x, np.abs(x).argmax(axis=1, keepdims=True), axis=1)  # (N, 1)
    d = signed_max / np.float32(-8)
    q = np.clip(np.trunc(x * _reciprocal(d) + np.float32(8.5)), 0, 15).astype(np.uint8)  # (N, 32)
    return np.concatenate([_fp16_bytes(d, "scale"), _pack_nibbles(q)], axis=1)  # (N, 18)


def _q4_1_blocks(x: np.ndarray) -> np.ndarray:
    lo, hi = x.min(axis=1, keepdims=True), x.max(axis=1, keepdims=True)  # (N, 1) each
    d = (hi - lo) / np.float32(15)
    q = np.clip(np.trunc((x - lo) * _reciprocal(d) + np.float32(0.5)), 0, 15).astype(np.uint8)  # (N, 32)
    return np.concatenate([_fp16_bytes(d, "scale"), _fp16_bytes(lo, "minimum"), _pack_nibbles(q)], axis=1)  # (N, 20)


def _quantize(w: Array, fn: Callable[[np.ndarray], np.ndarray], name: str) -> np.ndarray:
    blocks, shape = _to_blocks(w, QK, name)
    out = _chunked(fn, blocks)  # (N, type_size)
    return out.reshape(*shape[:-1], -1)  # (..., width / 32 * type_size)


def quantize_q8_0(w: Array) -> np.ndarray:
    """Q8_0 bytes (..., width/32 * 34) of ``w`` (..., width): ``d = max|x|/127``, ``q = roundf(x/d)``."""
    return _quantize(w, _q8_0_blocks, "Q8_0")


def quantize_q4_0(w: Array) -> np.ndarray:
    """Q4_0 bytes (..., width/32 * 18): ``d = x_m/-8`` (signed largest magnitude), ``q = trunc(x/d + 8.5)``."""
    return _quantize(w, _q4_0_blocks, "Q4_0")


def quantize_q4_1(w: Array) -> np.ndarray:
    """Q4_1 bytes (..., width/32 * 20): ``d = (max-min)/15``, ``m = min``, ``q = trunc((x-m)/d + 0.5)``."""
    return _quantize(w, _q4_1_blocks, "Q4_1")


def _dequantize(data: Array, type_size: int, block_size: int, fn: Callable, name: str) -> np.ndarray:
    raw = _as_bytes(data, type_size, name)  # (..., n_bytes)
    out = _chunked(fn, raw.reshape(-1, type_size))  # (N, type_size) -> (N, block_size)
    return out.reshape(*raw.shape[:-1], raw.shape[-1] // type_size * block_size)  # (..., width)


def dequantize_q8_0(data: Array) -> np.ndarray:
    """float32 weights (..., width) from Q8_0 bytes: ``x_hat = d q``."""
    return _dequantize(data, 34, QK, lambda b: b[:, 2:].view(np.int8).astype(np.float32) * _f16(b[:, :2]), "Q8_0")


def dequantize_q4_0(data: Array) -> np.ndarray:
    """float32 weights (..., width) from Q4_0 bytes: ``x_hat = d (q - 8)``."""

    def blocks(b: np.ndarray) -> np.ndarray:
        return _f16(b[:, :2]) * (_unpack_nibbles(b[:, 2:]).astype(np.float32) - np.float32(8))

    return _dequantize(data, 18, QK, blocks, "Q4_0")


def dequantize_q4_1(data: Array) -> np.ndarray:
    """float32 weights (..., width) from Q4_1 bytes: ``x_hat = d q + m``."""

    def blocks(b: np.ndarray) -> np.ndarray:
        return _f16(b[:, :2]) * _unpack_nibbles(b[:, 4:]).astype(np.float32) + _f16(b[:, 2:4])

    return _dequantize(data, 20, QK, blocks, "Q4_1")


# ---------------------------------------------------------------------------------------------------------------
# Q6_K: super-blocks of 256, dequantisation only


def _q6_k_blocks(b: np.ndarray) -> np.ndarray:
    n = len(b)
    ql, qh = b[:, :128], b[:, 128:192]  # low nibbles, high bit pairs
    scales = np.ascontiguousarray(b[:, 192:208]).view(np.int8).astype(np.float32)  # (N, 16), one per 16 weights
    d = _f16(b[:, 208:210])  # (N, 1)
    # Each half of 128 weights: ql[0:32] and ql[32:64] feed quarters 0, 1 (low nibbles) and 2, 3 (high nibbles);
    # qh[0:32] gives quarter k its 2 high bits at bit 2k.
    ql = ql.reshape(n, 2, 1, 2, 32) >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2, 1, 1)  # (N, half, nib, j, 32)
    low = (ql & np.uint8(0x0F)).reshape(n, 2, 4, 32)  # (N, half, quarter = 2 nib + j, 32)
    high = (qh.reshape(n, 2, 1, 32) >> np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)) & np.uint8(3)
    q = (low | (high << np.uint8(4))).astype(np.int8) - np.int8(32)  # (N, 2, 4, 32) in [-32, 31]
    q = q.reshape(n, 16, 16).astype(np.float32)  # (N, sub-block, 16): weight i uses scale i // 16
    return ((d * scales).reshape(n, 16, 1) * q).reshape(n, QK_K)


def dequantize_q6_k(data: Array) -> np.ndarray:
    """float32 weights (..., width) from Q6_K bytes: ``x_hat = d * s_(i // 16) * (q_i - 32)``."""
    return _dequantize(data, 210, QK_K, _q6_k_blocks, "Q6_K")


# ---------------------------------------------------------------------------------------------------------------
# Registry


def _float_bytes(dtype: type) -> Callable[[Array], np.ndarray]:
    return lambda w: np.ascontiguousarray(_as_float32(w).astype(dtype)).view(np.uint8)


def _float_values(dtype: type) -> Callable[[Array], np.ndarray]:
    size = np.dtype(dtype).itemsize
    return lambda data: _as_bytes(data, size, np.dtype(dtype).name).view(dtype).astype(np.float32)


@dataclass(frozen=True, kw_only=True)
class GgmlType:
    """One ggml storage type: its block layout and its (de)quantiser to and from raw bytes."""

    name: str  # ggml's name, also the GGMLQuantizationType member
    block_size: int  # weights that share one scale (1 for the float types)
    type_size: int  # bytes one block takes in the file
    quantize: Callable[[Array], np.ndarray] | None  # float weights -> uint8 bytes; None: dequantise only
    dequantize: Callable[[Array], np.ndarray]  # uint8 bytes -> float32 weights

    @property
    def bits_per_weight(self) -> float:
        """Storage cost including the scales: ``8 * type_size / block_size``."""
        return 8 * self.type_size / self.block_size

    @property
    def ggml_type(self) -> gguf.GGMLQuantizationType:
        return gguf.GGMLQuantizationType[self.name]


GGML_TYPES: dict[str, GgmlType] = {
    "F32": GgmlType(name="F32", block_size=1, type_size=4, quantize=_float_bytes(np.float32),
                    dequantize=_float_values(np.float32)),
    "F16": GgmlType(name="F16", block_size=1, type_size=2, quantize=_float_bytes(np.float16),
                    dequantize=_float_values(np.float16)),
    "Q8_0": GgmlType(name="Q8_0", block_size=QK, type_size=34, quantize=quantize_q8_0, dequantize=dequantize_q8_0),
    "Q4_0": GgmlType(name="Q4_0", block_size=QK, type_size=18, quantize=quantize_q4_0, dequantize=dequantize_q4_0),
    "Q4_1": GgmlType(name="Q4_1", block_size=QK, type_size=20, quantize=quantize_q4_1, dequantize=dequantize_q4_1),
    "Q6_K": GgmlType(name="Q6_K", block_size=QK_K, type_size=210, quantize=None, dequantize=dequantize_q6_k),
}  # fmt: skip


def ggml_type(qtype: str) -> GgmlType:
    """The registry entry for ``qtype``, with one clear error for a name it does not hold."""
    if qtype not in GGML_TYPES:
        raise ValueError(f"unknown ggml type {qtype!r}: choose one of {sorted(GGML_TYPES)}")
    return GGML_TYPES[qtype]


def _quantizer(qtype: str) -> Callable[[Array], np.ndarray]:
    quantize = ggml_type(qtype).quantize
    if quantize is None:
        raise ValueError(f"{qtype} is dequantise-only here: quantise to one of Q8_0, Q4_0, Q4_1, F16, F32")
    return quantize


def quantize_ggml(w: Array, qtype: str) -> np.ndarray:
    """``w`` (..., width) as the raw bytes of ``qtype`` (..., width / block_size * type_size), uint8."""
    return _quantizer(qtype)(w)


def dequantize_ggml(data: Array, qtype: str) -> np.ndarray:
    """float32 weights (..., width) from the raw bytes of ``qtype``."""
    return ggml_type(qtype).dequantize(data)


def quantized_nbytes(shape: Sequence[int], qtype: str) -> int:
    """Bytes a tensor of ``shape`` takes as ``qtype`` (without the file's 32-byte alignment padding)."""
    entry = ggml_type(qtype)
    if shape[-1] % entry.block_size:
        raise ValueError(f"{qtype}: last dimension {shape[-1]} is not a multiple of {entry.block_size}")
    return int(np.prod(shape[:-1], dtype=np.int64)) * shape[-1] // entry.block_size * entry.type_size


# ---------------------------------------------------------------------------------------------------------------
# GGUF writer for LLaMA


_LAYER_NAMES = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
_TOP_NAMES = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}
_LAYER_RE = re.compile(r"model\.layers\.(\d+)\.(.+)")


def gguf_tensor_name(hf_name: str) -> str:
    """llama.cpp's name for a HF LLaMA parameter: ``model.layers.3.self_attn.q_proj.weight -> blk.3.attn_q.weight``."""
    module, _, suffix = hf_name.rpartition(".")
    if module in _TOP_NAMES:
        return f"{_TOP_NAMES[module]}.{suffix}"
    match = _LAYER_RE.fullmatch(module)
    if match is None or match.group(2) not in _LAYER_NAMES:
        raise ValueError(f"write_gguf knows LLaMA's parameters only; {hf_name!r} has no llama.cpp name here")
    return f"blk.{match.group(1)}.{_LAYER_NAMES[match.group(2)]}.{suffix}"


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Rows of a q/k projection reordered from HF's rotary layout to llama.cpp's (``LlamaModel.permute``).

    HF's ``rotate_half`` rotates dimension ``i`` of each head with ``i + D/2``; llama.cpp's rope rotates
    the pairs ``(2i, 2i + 1)`` (Meta's original layout). Moving row ``i + D/2`` next to row ``i`` in both
    W_q and W_k turns one into the other and leaves every score ``q . k`` unchanged.
    """
    d_half = w.shape[0] // n_head // 2
    # (H*D, C) -> (H, 2, D/2, C) -> (H, D/2, 2, C) -> (H*D, C)
    return w.reshape(n_head, 2, d_half, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _tokenizer_metadata(writer: gguf.GGUFWriter, tokenizer: Any, vocab_size: int, pre_tokenizer: str) -> None:
    """llama.cpp's ``tokenizer.ggml.*`` keys for a byte-level BPE tokenizer (``tokenizer.ggml.model = gpt2``)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    model = json.loads(backend.to_str())["model"] if backend is not None else {}
    if model.get("type") != "BPE":
        raise TypeError("write_gguf writes byte-level BPE tokenizers (GPT-2 style): pass a fast BPE tokenizer")
    if len(tokenizer) > vocab_size:
        raise ValueError(f"the tokenizer has {len(tokenizer)} tokens but the model's vocabulary is {vocab_size}")
    added = tokenizer.added_tokens_decoder  # id -> AddedToken
    tokens, types = [], []
    for index, token in enumerate(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))):
        tokens.append(token)
        if index in added:
            types.append(gguf.TokenType.CONTROL if added[index].special else gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
    for index in range(len(tokenizer), vocab_size):  # rows of the embedding no token uses (llama.cpp's padding)
        tokens.append(f"[PAD{index}]")
        types.append(gguf.TokenType.USER_DEFINED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for key, add in (("bos", writer.add_bos_token_id), ("eos", writer.add_eos_token_id),
                     ("unk", writer.add_unk_token_id), ("pad", writer.add_pad_token_id)):  # fmt: skip
        token_id = getattr(tokenizer, f"{key}_token_id", None)
        if token_id is not None:
            add(token_id)
    adds_bos = tokenizer.bos_token_id is not None and tokenizer.encode("a")[:1] == [tokenizer.bos_token_id]
    writer.add_add_bos_token(adds_bos)
    if isinstance(getattr(tokenizer, "chat_template", None), str):
        writer.add_chat_template(tokenizer.chat_template)


def _model_metadata(writer: gguf.GGUFWriter, config: Any, n_layers: int) -> None:
    rope = getattr(config, "rope_parameters", None) or {"rope_type": "default", "rope_theta": config.rope_theta}
    if rope.get("rope_type", "default") != "default":
        raise ValueError(f"write_gguf writes plain RoPE only; this model uses rope_type={rope['rope_type']!r}")
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(n_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(float(rope["rope_theta"]))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(config.vocab_size)
    writer.add_rope_dimension_count(head_dim)


def _tensor_type(name: str, array: np.ndarray, qtype: str, embedding_qtype: str, keep_f32: Sequence[str]) -> str:
    if array.ndim == 1 or any(part in name for part in keep_f32):
        return "F32"  # norms and biases: ggml computes them in float32, and they are a rounding error in size
    chosen = embedding_qtype if name == "token_embd.weight" else qtype
    block = ggml_type(chosen).block_size
    if array.shape[-1] % block:
        raise ValueError(
            f"{name} has rows of {array.shape[-1]} values, not a multiple of {chosen}'s block of {block}: "
            f"choose F16/F32 for it (keep_f32=...) or another type"
        )
    return chosen


def write_gguf(
    model: Any,
    tokenizer: Any | None,
    path: str | PathLike[str],
    qtype: str = "Q8_0",
    *,
    keep_f32: Sequence[str] = ("norm",),
    embedding_qtype: str | None = None,
    pre_tokenizer: str = "default",
    name: str | None = None,
) -> dict[str, str]:
    """Write a HF ``LlamaForCausalLM`` and its tokenizer as a GGUF file llama.cpp and transformers load.

    ``qtype`` is the type of the 2-D weights; 1-D tensors and those whose GGUF name contains a ``keep_f32``
    part stay F32. ``embedding_qtype`` (default ``qtype``) sets ``token_embd.weight``, which is also the output
    layer of a tied model (llama.cpp often keeps it at 8 bits). ``pre_tokenizer`` is llama.cpp's name for the
    pre-tokeniser regex (``tokenizer.ggml.pre``: "smollm" for SmolLM2, "llama-bpe" for Llama 3). With
    ``tokenizer=None`` the file holds the model only: transformers loads it, llama.cpp needs the vocabulary.
    q/k rows are permuted to llama.cpp's rotary layout (:func:`permute_qk`). Returns ``{tensor name: type}``.
    """
    config = model.config
    if getattr(config, "model_type", None) != "llama":
        raise TypeError(f"write_gguf writes LLaMA models; got model_type={getattr(config, 'model_type', None)!r}")
    for chosen in (qtype, embedding_qtype or qtype):
        _quantizer(chosen)  # an unknown or dequantise-only type fails before any work
    layers = model.model.layers
    tied = model.lm_head.weight is model.model.embed_tokens.weight or bool(
        getattr(config, "tie_word_embeddings", False)
    )
    writer = gguf.GGUFWriter(path, arch="llama")
    writer.add_name(name or str(getattr(config, "_name_or_path", "") or "llama"))
    writer.add_file_type(gguf.LlamaFileType.ALL_F32 if qtype == "F32" else gguf.LlamaFileType[f"MOSTLY_{qtype}"])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _model_metadata(writer, config, len(layers))
    if tokenizer is not None:
        _tokenizer_metadata(writer, tokenizer, config.vocab_size, pre_tokenizer)

    types: dict[str, str] = {}
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and tied:
            continue  # a tied model has no output.weight: llama.cpp (and transformers) reuse token_embd
        gguf_name = gguf_tensor_name(hf_name)
        array = tensor.detach().to("cpu", torch.float32).numpy()
        if ".attn_q." in gguf_name:
            array = permute_qk(array, config.num_attention_heads)
        elif ".attn_k." in gguf_name:
            array = permute_qk(array, config.num_key_value_heads)
        chosen = _tensor_type(gguf_name, array, qtype, embedding_qtype or qtype, keep_f32)
        writer.add_tensor(gguf_name, quantize_ggml(array, chosen), raw_dtype=ggml_type(chosen).ggml_type)
        types[gguf_name] = chosen
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return types
