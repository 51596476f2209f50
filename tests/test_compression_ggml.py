"""llama.cpp's Q8_0/Q4_0/Q4_1/Q6_K from their block layouts, checked byte for byte against the ``gguf`` package
(llama.cpp's own Python port of ggml-quants.c), and the GGUF writer checked against llama.cpp's shipped
SmolLM2 file and against transformers' GGUF loader."""

from __future__ import annotations

import copy
import os
from types import SimpleNamespace

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType
from gguf import quants as gguf_quants
from transformers.integrations.gguf import GgufHeader, read_gguf_metadata

from llmbook.chain.pretrained import load_pretrained, quiet_transformers, smollm2_gguf
from llmbook.compression.ggml import (
    GGML_TYPES,
    dequantize_ggml,
    dequantize_q4_0,
    dequantize_q6_k,
    gguf_tensor_name,
    permute_qk,
    quantize_ggml,
    quantize_q4_0,
    quantized_nbytes,
    round_half_away,
    write_gguf,
)

QTYPES = ("Q8_0", "Q4_0", "Q4_1")


def awkward_rows() -> np.ndarray:
    """Seeded float32 rows (16, 256) = 128 blocks, with the cases where a quantiser can go wrong."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 256)).astype(np.float32)
    x[0, :32] = 0.0  # an all-zero block: d = 0, so 1/d must be taken as 0
    x[0, 32:64] = -0.0
    x[1, :32] = 1.5  # a constant block: Q4_1's max - min = 0
    # Exact ties of the rounding: with these maxima d = 1 exactly, so x/d lands on k + 1/2.
    x[2, :32] = np.r_[127.0, np.arange(-15.5, 15.5, 1.0)]  # Q8_0: roundf sends halves away from zero
    x[2, 32:64] = np.r_[-8.0, np.arange(-7.5, 8.0, 0.5)]  # Q4_0: trunc(x + 8.5) at integers
    x[2, 64:96] = np.r_[0.0, 15.0, np.arange(0.5, 15.5, 0.5)]  # Q4_1: trunc(x - min + 0.5) at integers
    x[3, :32] = np.r_[3.0, -3.0, rng.uniform(-1, 1, 30)]  # equal magnitudes: the first one sets Q4_0's sign
    x[3, 32:64] = np.r_[-3.0, 3.0, rng.uniform(-1, 1, 30)]
    x[4] *= 1e4  # huge, yet every scale and minimum still fits float16 (max 65504)
    x[5] *= 1e-6  # tiny: the float16 scales go subnormal or flush to zero
    x[6, ::32] = 100.0  # one outlier per block
    x[7] = np.abs(x[7])  # all positive: Q4_0's scale is negative
    return x


@pytest.mark.parametrize("qtype", QTYPES)
def test_quantizers_match_gguf_bytes(qtype: str) -> None:
    x = awkward_rows()
    ref = gguf_quants.quantize(x, GGMLQuantizationType[qtype])
    ours = quantize_ggml(x, qtype)
    assert ours.dtype == np.uint8 and ours.shape == ref.shape == (16, 8 * GGML_TYPES[qtype].type_size)
    diff = np.abs(dequantize_ggml(ours, qtype) - gguf_quants.dequantize(ref, GGMLQuantizationType[qtype]))
    assert np.array_equal(ours, ref), f"{qtype}: {(ours != ref).sum()} bytes differ, max_abs_diff {diff.max()}"
    # Dequantising gguf's bytes with ours gives gguf's floats exactly.
    back = dequantize_ggml(ref, qtype)
    expected = gguf_quants.dequantize(ref, GGMLQuantizationType[qtype])
    assert np.array_equal(back, expected), f"{qtype}: max_abs_diff {np.abs(back - expected).max()}"
    # A torch tensor quantises the same way.
    assert np.array_equal(quantize_ggml(torch.from_numpy(x), qtype), ref)


def test_round_half_away_is_c_roundf() -> None:
    v = np.array([0.5, -0.5, 1.5, -2.5, 0.49999997, -0.49999997, 126.5, -126.5, 2.0], dtype=np.float32)
    expected = np.array([1, -1, 2, -3, 0, 0, 127, -127, 2], dtype=np.float32)
    assert np.array_equal(round_half_away(v), expected), round_half_away(v)
    assert not np.array_equal(np.rint(v), expected)  # numpy's banker's rounding would not do


def test_q4_0_nibble_order_and_signed_max() -> None:
    """Block [-8, 0, ..., 0 | 7, ...]: d = -8/-8 = 1, codes q + 8; value j in the low nibble of byte j."""
    x = np.zeros(32, dtype=np.float32)
    x[0], x[16], x[1] = -8.0, 7.0, -1.0
    block = quantize_q4_0(x)
    assert block[:2].view(np.float16)[0] == 1.0
    assert block[2] == 0 | (15 << 4)  # value 0 -> code 0 (low nibble), value 16 -> code 15 (high nibble)
    assert block[3] == 7 | (8 << 4)  # value 1 -> -1 + 8, value 17 -> 0 + 8
    assert np.array_equal(dequantize_q4_0(block), x)


def test_q6_k_dequantize_matches_gguf() -> None:
    rng = np.random.default_rng(1)
    raw = rng.integers(0, 256, size=(6, 2 * 210), dtype=np.uint8)  # 6 rows of 512 weights
    blocks = raw.reshape(-1, 210)
    blocks[:, 208:] = rng.standard_normal((len(blocks), 1)).astype(np.float16).view(np.uint8)  # finite d
    ours, ref = dequantize_q6_k(raw), gguf_quants.dequantize(raw, GGMLQuantizationType.Q6_K)
    assert ours.shape == ref.shape == (6, 512)
    assert np.array_equal(ours, ref), f"max_abs_diff {np.abs(ours - ref).max()}"


def test_registry_sizes_match_gguf() -> None:
    expected_bits = {"F32": 32.0, "F16": 16.0, "Q8_0": 8.5, "Q4_0": 4.5, "Q4_1": 5.0, "Q6_K": 6.5625}
    for name, entry in GGML_TYPES.items():
        assert (entry.block_size, entry.type_size) == gguf.GGML_QUANT_SIZES[entry.ggml_type], name
        assert entry.bits_per_weight == expected_bits[name], (name, entry.bits_per_weight)
    x = awkward_rows()
    for name in ("F32", "F16"):
        ref = gguf_quants.quantize(x, GGMLQuantizationType[name])
        assert np.array_equal(quantize_ggml(x, name), ref.view(np.uint8)), name
        assert np.array_equal(dequantize_ggml(quantize_ggml(x, name), name), ref.astype(np.float32)), name
    assert quantized_nbytes((576, 1536), "Q4_0") == 576 * 1536 // 32 * 18


def test_bad_input_raises() -> None:
    with pytest.raises(ValueError, match="multiple of 32"):
        quantize_ggml(np.zeros((2, 48), np.float32), "Q8_0")
    with pytest.raises(ValueError, match="NaN or inf"):
        quantize_ggml(np.full(32, np.nan, np.float32), "Q4_0")
    with pytest.raises(ValueError, match="overflows float16"):
        quantize_ggml(np.full(32, 1e7, np.float32), "Q4_1")
    with pytest.raises(ValueError, match="unknown ggml type"):
        quantize_ggml(np.zeros(32, np.float32), "Q3_0")
    with pytest.raises(ValueError, match="dequantise-only"):
        quantize_ggml(np.zeros(256, np.float32), "Q6_K")
    with pytest.raises(ValueError, match="blocks are 34 bytes"):
        dequantize_ggml(np.zeros(35, np.uint8), "Q8_0")


def test_write_gguf_refuses_what_it_cannot_write(tmp_path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=48, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=1, vocab_size=64)  # fmt: skip
    with pytest.raises(ValueError, match="token_embd.weight has rows of 48"):
        write_gguf(LlamaForCausalLM(config), None, tmp_path / "x.gguf", "Q8_0")
    with pytest.raises(ValueError, match="dequantise-only"):
        write_gguf(LlamaForCausalLM(config), None, tmp_path / "x.gguf", "Q6_K")
    with pytest.raises(TypeError, match="LLaMA"):
        write_gguf(SimpleNamespace(config=SimpleNamespace(model_type="gpt2")), None, tmp_path / "x.gguf")
    assert gguf_tensor_name("model.layers.7.mlp.down_proj.weight") == "blk.7.ffn_down.weight"
    with pytest.raises(ValueError, match="no llama.cpp name"):
        gguf_tensor_name("model.layers.0.mlp.experts.weight")


# ---------------------------------------------------------------------------------------------------------------
# GGUF files of the real model (SmolLM2-135M-Instruct, first 2 blocks)


@pytest.fixture(scope="module")
def model_and_tokenizer():
    return load_pretrained(layers=2)


@pytest.fixture(scope="module")
def gguf_dir(tmp_path_factory, model_and_tokenizer):
    """Two files: llama.cpp's own recipe for the shipped file (Q4_1, embedding Q8_0, with the tokenizer), and a
    model-only Q4_0 file for transformers to load (reading 100k vocabulary strings would dominate the load)."""
    model, tokenizer = model_and_tokenizer
    directory = tmp_path_factory.mktemp("gguf")
    write_gguf(model, tokenizer, directory / "q4_1.gguf", "Q4_1", embedding_qtype="Q8_0", pre_tokenizer="smollm")
    types = write_gguf(model, None, directory / "q4_0.gguf", "Q4_0")
    assert types["token_embd.weight"] == "Q4_0" and types["blk.1.ffn_norm.weight"] == "F32"
    assert "output.weight" not in types  # tied embeddings: no separate output matrix, as llama.cpp writes it
    return directory


def _tensor_bytes(header: GgufHeader) -> dict[str, np.ndarray]:
    blob = np.memmap(header.path, mode="r", dtype=np.uint8)
    return {
        t.name: blob[header.data_start + t.offset : header.data_start + t.offset + t.nbytes] for t in header.tensors
    }


def test_gguf_matches_llama_cpp_file(gguf_dir) -> None:
    """The shipped SmolLM2 GGUF was made by llama.cpp's convert + quantize (Q4_1, embedding Q8_0); our model's
    weights are its dequantised values. Re-writing them with the same recipe must give the same bytes: this
    checks the names, the q/k permutation, the quantisers against ggml's C code, and the metadata."""
    ours = GgufHeader.from_file(str(gguf_dir / "q4_1.gguf"))
    ref = GgufHeader.from_file(str(smollm2_gguf()))
    keep = ("token_embd.", "blk.0.", "blk.1.", "output_norm.")
    ref_tensors = {t.name: t for t in ref.tensors if t.name.startswith(keep)}
    our_tensors = {t.name: t for t in ours.tensors}
    assert sorted(our_tensors) == sorted(ref_tensors)
    for name, info in our_tensors.items():
        assert (info.shape, info.ggml_type) == (ref_tensors[name].shape, ref_tensors[name].ggml_type), name
    our_bytes, ref_bytes = _tensor_bytes(ours), _tensor_bytes(ref)
    for name in our_tensors:
        differ = int((our_bytes[name] != ref_bytes[name]).sum())
        assert differ == 0, f"{name}: {differ} of {our_bytes[name].size} bytes differ from llama.cpp's file"

    arrays = ("tokenizer.ggml.tokens", "tokenizer.ggml.merges")
    our_meta, _ = read_gguf_metadata(str(gguf_dir / "q4_1.gguf"), arrays)
    ref_meta, _ = read_gguf_metadata(str(smollm2_gguf()), arrays)
    assert our_meta["llama.block_count"] == 2 and ref_meta["llama.block_count"] == 30
    missing = sorted(k for k in ref_meta if k.startswith(("llama.", "tokenizer.")) and k not in our_meta)
    assert missing == ["tokenizer.ggml.add_space_prefix"], missing  # llama.cpp ignores it for gpt2 vocabularies
    for key, value in our_meta.items():
        if key.startswith(("llama.", "tokenizer.", "general.file_type", "general.quantization")):
            if key != "llama.block_count":
                assert value == ref_meta[key], key


def test_gguf_size_is_bits_per_weight(gguf_dir, model_and_tokenizer) -> None:
    path = gguf_dir / "q4_0.gguf"
    reader = gguf.GGUFReader(path)  # llama.cpp's reader; cheap on a file without a vocabulary
    padded = 0
    weights = stored = 0
    for tensor in reader.tensors:
        qtype = tensor.tensor_type.name
        shape = tuple(int(s) for s in reversed(tensor.shape.tolist()))  # ggml lists dimensions fastest first
        assert tensor.n_bytes == quantized_nbytes(shape, qtype), tensor.name
        assert qtype == ("Q4_0" if len(shape) == 2 else "F32"), tensor.name
        padded += -(-tensor.n_bytes // reader.alignment) * reader.alignment
        weights += int(np.prod(shape))
        stored += tensor.n_bytes
    assert os.path.getsize(path) == reader.data_offset + padded
    n_params = sum(p.numel() for p in model_and_tokenizer[0].parameters())  # tied: the embedding counts once
    assert weights == n_params
    assert 4.5 < 8 * stored / weights < 4.51, 8 * stored / weights  # 4.5 bits, plus the F32 norms


def test_transformers_loads_our_gguf(gguf_dir, model_and_tokenizer) -> None:
    """transformers un-permutes q/k and dequantises with gguf: its weights must be our dequantised ones, and the
    model must give the logits of the HF model carrying those weights."""
    from transformers import LlamaForCausalLM

    model, tokenizer = model_and_tokenizer
    with quiet_transformers():
        loaded = LlamaForCausalLM.from_pretrained(gguf_dir, gguf_file="q4_0.gguf", dtype=torch.float32).eval()
    assert loaded.config.tie_word_embeddings and loaded.config.num_hidden_layers == 2
    expected = {}
    for name, weight in model.state_dict().items():
        w = weight.numpy()
        expected[name] = torch.from_numpy(dequantize_ggml(quantize_ggml(w, "Q4_0"), "Q4_0")) if w.ndim == 2 else weight
    state = loaded.state_dict()
    for name, weight in expected.items():
        assert torch.equal(state[name], weight), f"{name}: max_abs_diff {(state[name] - weight).abs().max()}"
    # Without the permutation transformers would un-permute unpermuted rows: the test above can catch that.
    q = model.model.layers[0].self_attn.q_proj.weight.detach().numpy()
    assert not np.array_equal(permute_qk(q, model.config.num_attention_heads), q)

    reference = copy.deepcopy(model)
    reference.load_state_dict(expected)
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        ours, theirs = loaded(ids).logits, reference(ids).logits
    diff = (ours - theirs).abs().max().item()
    assert diff < 1e-4, f"max_abs_diff {diff}"
