"""llmbook.compression.quantize / packed / int8_cpu / references: hand-derived RTN cases, packed storage, CPU int8
kernels, and equality of dequantised weights with bitsandbytes, torchao, optimum-quanto and HQQ where the schemes
coincide (the libraries called through llmbook.compression.references)."""

from __future__ import annotations

import logging
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

from llmbook.compression.int8_cpu import dynamic_int8, linear_latency
from llmbook.compression.nf4 import dequantize_4bit, quantize_4bit
from llmbook.compression.packed import PackedLinear, pack_int4, unpack_int4
from llmbook.compression.quantize import (
    QuantizedTensor,
    QuantSpec,
    fake_quantize,
    fake_quantize_4bit,
    quantize_weight,
)
from llmbook.compression.references import (
    REFERENCES,
    bitsandbytes_int8,
    bitsandbytes_nf4,
    compare_with_references,
    hqq_4bit,
    quanto_group_size,
    quanto_int4,
    quanto_int8,
    torchao_int4,
    torchao_int8_weight_only,
)

# torchao logs "Failed to load .../_C_*.so" (logger "torchao") and torch's pytree logs Enum-registration warnings
# (logger "torch.utils._pytree") when torchao is imported, also from inside transformers: keep them out of the log.
logging.getLogger("torchao").setLevel(logging.ERROR)
logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)


def randn(*shape: int, seed: int = 0, std: float = 1.0) -> torch.Tensor:
    return std * torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def heavy_tailed(out_features: int, in_features: int, seed: int = 0) -> torch.Tensor:
    """Student-t (3 degrees of freedom) entries with a log-normal scale per row: outliers and uneven rows."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(out_features, in_features, generator=g)
    chi2 = torch.randn(3, out_features, in_features, generator=g).pow(2).sum(0)
    row_scale = torch.exp(torch.randn(out_features, 1, generator=g))
    return 0.02 * row_scale * z / (chi2 / 3).sqrt()


def rel_error(w_hat: torch.Tensor, w: torch.Tensor) -> float:
    return float((w_hat.float() - w.float()).norm() / w.float().norm())


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().float() - b.detach().float()).abs().max())


# --- hand-derived RTN grids ----------------------------------------------------------------------------------------


def test_symmetric_int8_row_by_hand():
    # max|w| = 127 / 64, so s = 1/64 exactly; round half to even sends 2.5 -> 2 and -0.5 -> 0.
    w = torch.tensor([[127.0, -64.0, 3.4, -0.5, 2.5, -127.0]]) / 64
    q = quantize_weight(w, QuantSpec(bits=8, granularity="channel"))
    assert q.codes.tolist() == [[127, -64, 3, 0, 2, -127]]
    assert q.scale.tolist() == [[1 / 64]] and q.zero.tolist() == [[0.0]]
    assert q.dequantize().mul(64).tolist() == [[127.0, -64.0, 3.0, 0.0, 2.0, -127.0]]


def test_asymmetric_4bit_groups_by_hand():
    # group 1: range [-1, 2.75] -> s = 3.75 / 15 = 0.25, z = round(1 / 0.25) = 4.
    # group 2: all positive; the range is stretched to [0, 3.75] so that 0 stays exact -> s = 0.25, z = 0.
    w = torch.tensor([[-1.0, 0.3, 2.75, 0.125, 0.5, 1.0, 1.5, 3.75]])
    q = quantize_weight(w, QuantSpec(bits=4, symmetric=False, granularity="group", group_size=4))
    assert q.codes.tolist() == [[0, 5, 15, 4, 2, 4, 6, 15]]
    assert q.scale.tolist() == [[0.25, 0.25]] and q.zero.tolist() == [[4.0, 0.0]]
    assert q.dequantize().tolist() == [[-1.0, 0.25, 2.75, 0.0, 0.5, 1.0, 1.5, 3.75]]


def test_float_zero_4bit_group_by_hand():
    # quanto / HQQ convention: range [min, max] = [0.5, 4.25], s = 3.75 / 15 = 0.25, z = -0.5 / 0.25 = -2 (unrounded).
    w = torch.tensor([[0.5, 1.1, 4.25, 2.0]])
    q = quantize_weight(w, QuantSpec(bits=4, symmetric=False, float_zero=True, group_size=4))
    assert q.codes.tolist() == [[0, 2, 15, 6]] and q.scale.tolist() == [[0.25]] and q.zero.tolist() == [[-2.0]]
    assert q.dequantize().tolist() == [[0.5, 1.0, 4.25, 2.0]]


def test_symmetric_3bit_by_hand():
    # 3 bits: codes -4..3, s = max|w| / 3 = 0.25; full_range divides by 3.5 instead and uses -4.
    w = torch.tensor([[0.75, -0.75, 0.3, -0.125], [0.0, 0.0, 0.0, 0.0]])
    q = quantize_weight(w, QuantSpec(bits=3, granularity="channel"))
    assert q.codes.tolist() == [[3, -3, 1, 0], [0, 0, 0, 0]]
    assert q.dequantize().tolist() == [[0.75, -0.75, 0.25, 0.0], [0.0, 0.0, 0.0, 0.0]]  # an all-zero row stays 0
    w_full = torch.tensor([[0.875, -0.875, 0.3, 0.0]])  # s = 0.875 / 3.5 = 0.25; 3.5 -> 4 clamps to 3, -3.5 -> -4
    assert quantize_weight(w_full, QuantSpec(bits=3, granularity="channel", full_range=True)).codes.tolist() == [
        [3, -4, 1, 0]
    ]


def test_error_ordering_tensor_channel_group():
    w = heavy_tailed(64, 256)
    errors = {
        g: rel_error(fake_quantize(w, QuantSpec(bits=4, granularity=g, group_size=32)), w)
        for g in ("tensor", "channel", "group")
    }
    assert errors["tensor"] > 1.5 * errors["channel"] > 1.5 * errors["group"], errors
    assert errors["group"] < 0.15, errors


def test_bad_specs_raise_clear_errors():
    with pytest.raises(ValueError, match="bits=5"):
        QuantSpec(bits=5)
    with pytest.raises(ValueError, match="does not divide the 100 input columns"):
        fake_quantize(torch.zeros(4, 100), QuantSpec(bits=4, group_size=64))
    with pytest.raises(ValueError, match="full_range applies to symmetric"):
        QuantSpec(symmetric=False, full_range=True)
    with pytest.raises(ValueError, match="float_zero applies to asymmetric"):
        QuantSpec(float_zero=True)
    with pytest.raises(ValueError, match="expected a weight matrix"):
        quantize_weight(torch.zeros(8), QuantSpec())


# --- QuantizedTensor and the 4-bit code tables -----------------------------------------------------------------------

SPECS = [
    QuantSpec(bits=8, granularity="channel"),
    QuantSpec(bits=8, symmetric=False, granularity="tensor"),
    QuantSpec(bits=4, group_size=32),
    QuantSpec(bits=4, symmetric=False, group_size=32, scale_dtype=torch.float16),
    QuantSpec(bits=4, symmetric=False, float_zero=True, group_size=64),
    QuantSpec(bits=3, group_size=64, full_range=True),
    QuantSpec(bits=2, symmetric=False, granularity="channel"),
]


@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_quantized_tensor_dequantizes_to_fake_quantize(spec):
    w = heavy_tailed(32, 128, seed=1)
    q = quantize_weight(w, spec)
    n_groups = {"tensor": 1, "channel": 32, "group": 32 * 128 // spec.group_size}[spec.granularity]
    assert q.n_groups == n_groups and q.codes.shape == w.shape
    assert spec.qmin <= int(q.codes.min()) and int(q.codes.max()) <= spec.qmax
    assert torch.equal(q.scale, q.scale.to(spec.scale_dtype).float())  # scales are representable in scale_dtype
    assert torch.equal(q.dequantize(), fake_quantize(w, spec))
    w16 = w.to(torch.bfloat16)
    assert fake_quantize(w16, spec).dtype == torch.bfloat16


def test_fake_quantize_4bit_codes():
    w = randn(64, 256, seed=2, std=0.02)
    for code in ("nf4", "fp4", "int4"):
        ref = dequantize_4bit(quantize_4bit(w, code=code, blocksize=64, double_quant=False))
        assert torch.equal(fake_quantize_4bit(w, code=code, blocksize=64), ref)
    errors = {code: rel_error(fake_quantize_4bit(w, code=code, blocksize=64), w) for code in ("nf4", "fp4", "int4")}
    assert errors["nf4"] < errors["int4"] and errors["nf4"] < errors["fp4"], errors  # NF4 fits Gaussian weights
    # nf4.py's int4 table (levels k/7 times the block absmax) is our symmetric 4-bit grid with group_size = blocksize.
    ours = fake_quantize(w, QuantSpec(bits=4, group_size=64))
    diff = max_abs_diff(fake_quantize_4bit(w, code="int4", blocksize=64), ours)
    assert diff < 1e-8, f"max_abs_diff={diff}"


# --- packed storage ------------------------------------------------------------------------------------------------


def test_pack_int4_nibble_order_and_round_trip():
    assert pack_int4(torch.tensor([[1, 2, 15, 0]])).tolist() == [[0x12, 0xF0]]  # element 2i in the high nibble
    values = torch.arange(16).repeat(3, 2)  # (3, 32)
    packed = pack_int4(values)
    assert packed.dtype == torch.uint8 and packed.shape == (3, 16)
    assert torch.equal(unpack_int4(packed).long(), values)
    with pytest.raises(ValueError, match="values 0..15"):
        pack_int4(torch.tensor([[16, 0]]))
    with pytest.raises(ValueError, match="even number"):
        pack_int4(torch.tensor([[1, 2, 3]]))


PACKED_SPECS = [
    QuantSpec(bits=4, group_size=32, scale_dtype=torch.float16),
    QuantSpec(bits=4, symmetric=False, group_size=32, scale_dtype=torch.float16),
    QuantSpec(bits=4, symmetric=False, float_zero=True, group_size=64, scale_dtype=torch.float16),
    QuantSpec(bits=4, granularity="tensor"),
    QuantSpec(bits=8, granularity="channel", scale_dtype=torch.float16),
    QuantSpec(bits=8, symmetric=False, granularity="channel", scale_dtype=torch.float16),
]


def _linear(seed: int = 3) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(256, 64)


@pytest.mark.parametrize("spec", PACKED_SPECS, ids=repr)
def test_packed_linear_matches_fake_quantized_linear(spec):
    linear = _linear()
    layer = PackedLinear.from_linear(linear, spec)
    x = randn(5, 256, seed=4)
    ref = F.linear(x, fake_quantize(linear.weight.detach(), spec), linear.bias)
    diff = max_abs_diff(layer(x), ref)
    assert diff <= 1e-6, f"max_abs_diff={diff}"
    # Real bytes: bits / 8 per weight, a scale (2 or 4 bytes) per group, a zero point (1 byte, or a float) per group.
    n_groups = layer.scale.numel()
    zero_bytes = 0 if spec.symmetric else (spec.scale_dtype.itemsize if spec.float_zero else 1)
    expected = 64 * 256 * spec.bits // 8 + n_groups * (spec.scale_dtype.itemsize + zero_bytes)
    assert layer.nbytes(include_bias=False) == expected
    assert layer.nbytes() == expected + 64 * 4
    if spec.symmetric:  # QuantSpec.bits_per_weight counts a zero point at `bits` bits; here it takes a byte
        bits_per_weight = 8 * layer.nbytes(include_bias=False) / (64 * 256)
        assert bits_per_weight == pytest.approx(spec.bits_per_weight(8 * spec.scale_dtype.itemsize), rel=0.01)


def test_packed_linear_safetensors_round_trip(tmp_path):
    spec = QuantSpec(bits=4, symmetric=False, group_size=32, scale_dtype=torch.float16)
    layer = PackedLinear.from_linear(_linear(), spec)
    save_file(layer.state_dict(), tmp_path / "layer.safetensors")
    loaded = PackedLinear(256, 64, spec)
    loaded.load_state_dict(load_file(tmp_path / "layer.safetensors"))
    for name, buffer in layer.state_dict().items():
        assert torch.equal(buffer, loaded.state_dict()[name]), name
    x = randn(3, 256, seed=5)
    assert torch.equal(loaded(x), layer(x))
    ratio = layer.nbytes(include_bias=False) / (64 * 256 * 4)
    assert ratio == pytest.approx((0.5 + 3 / 32) / 4), ratio  # 4-bit codes + fp16 scale + uint8 zero per 32 columns


def test_packed_linear_rejects_unsupported_bits():
    with pytest.raises(ValueError, match="bits=3"):
        PackedLinear.from_linear(_linear(), QuantSpec(bits=3, group_size=32))
    with pytest.raises(ValueError, match="does not divide"):
        PackedLinear(100, 8, QuantSpec(bits=4, group_size=64))


# --- int8 on CPU ---------------------------------------------------------------------------------------------------


def test_dynamic_int8_close_to_float():
    torch.manual_seed(6)
    model = nn.Sequential(nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 64))
    x = randn(32, 256, seed=7)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the deprecation warnings of torch.ao.quantization stay inside
        qmodel = dynamic_int8(model)
    assert type(model[0]) is nn.Linear  # the float model is untouched
    assert isinstance(qmodel[0], DynamicLinear) and isinstance(qmodel[2], DynamicLinear)
    assert qmodel[0].weight().qscheme() == torch.per_channel_affine
    with torch.no_grad():
        err = rel_error(qmodel(x), model(x))
    assert 1e-4 < err < 0.03, f"relative error {err:.4f}"  # quantised (not a float pass-through), within 3 %
    partial = dynamic_int8(model, keep_float=["2"])
    assert type(partial[2]) is nn.Linear and isinstance(partial[0], DynamicLinear)
    assert linear_latency(qmodel, x, repeats=2, warmup=1) > 0
    with pytest.raises(ValueError, match="no nn.Linear"):
        dynamic_int8(nn.ReLU())
    with pytest.raises(ValueError, match="float32 CPU"):
        dynamic_int8(nn.Linear(4, 4).half())


# --- production libraries ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def weight() -> torch.Tensor:
    return randn(64, 256, seed=8, std=0.02)


def _codes_and_values_match(ours: QuantizedTensor, ref: torch.Tensor, tol: float = 1e-8) -> None:
    diff = max_abs_diff(ours.dequantize(), ref)
    assert diff <= tol, f"max_abs_diff={diff}"


def test_bitsandbytes_int8_vectorwise(weight):
    pytest.importorskip("bitsandbytes")
    ref = bitsandbytes_int8(weight)
    ours = quantize_weight(weight, QuantSpec(bits=8, granularity="channel"))
    codes = torch.round(ref / ours.scale).int()  # bnb's codes, read back from its dequantised weight
    mismatches = int((codes != ours.codes).sum())
    assert mismatches == 0, f"{mismatches} codes differ"
    _codes_and_values_match(ours, ref)


def test_bitsandbytes_nf4(weight):
    pytest.importorskip("bitsandbytes")
    diff = max_abs_diff(fake_quantize_4bit(weight, code="nf4", blocksize=64), bitsandbytes_nf4(weight, blocksize=64))
    assert diff == 0.0, f"max_abs_diff={diff}"


def test_torchao_int8_weight_only(weight):
    pytest.importorskip("torchao")
    ref = torchao_int8_weight_only(weight)
    _codes_and_values_match(quantize_weight(weight, QuantSpec(bits=8, granularity="channel", full_range=True)), ref)
    # torchao's scale is max|w| / 127.5 (codes -128..127), not max|w| / 127: the default spec differs.
    assert max_abs_diff(fake_quantize(weight, QuantSpec(bits=8, granularity="channel")), ref) > 1e-5


@pytest.mark.parametrize("symmetric", [True, False])
def test_torchao_int4_per_group(weight, symmetric):
    pytest.importorskip("torchao")
    spec = QuantSpec(bits=4, group_size=32, symmetric=symmetric, full_range=symmetric)
    _codes_and_values_match(quantize_weight(weight, spec), torchao_int4(weight, group_size=32, symmetric=symmetric))


def test_quanto_qint8(weight):
    pytest.importorskip("optimum.quanto")
    _codes_and_values_match(quantize_weight(weight, QuantSpec(bits=8, granularity="channel")), quanto_int8(weight))


def test_quanto_qint4(weight):
    """quanto's qint4 (MaxOptimizer + quantize_affine, dequantised by hand in references.quanto_int4)."""
    pytest.importorskip("optimum.quanto")
    ref = quanto_int4(weight, group_size=128)
    ours = quantize_weight(weight, QuantSpec(bits=4, symmetric=False, float_zero=True, group_size=128))
    groups = ref.reshape(-1, 128)  # (64 * 2, 128): quanto's groups
    codes = torch.round(groups / ours.scale.reshape(-1, 1) + ours.zero.reshape(-1, 1))  # quanto's codes, read back
    assert torch.equal(ours.codes.reshape(-1, 128), codes.int())
    _codes_and_values_match(ours, ref)


def test_quanto_group_size_follows_quanto_layers():
    quanto = pytest.importorskip("optimum.quanto")
    for in_features in (64, 128, 256, 576, 1536, 200):
        model = nn.Sequential(nn.utils.skip_init(nn.Linear, in_features, 8, bias=False))
        quanto.quantize(model, weights=quanto.qint4)  # the layer picks its group on construction
        assert quanto_group_size(in_features) == model[0].weight_group_size, in_features
    assert quanto_group_size(576) == 96 and quanto_group_size(1536) == 128


def test_hqq_unoptimised_rtn(weight):
    pytest.importorskip("hqq")
    float_zero = QuantSpec(bits=4, symmetric=False, float_zero=True, group_size=64)
    # HQQ stores 1 / (15 / (max - min)) as the scale: a few float32 ulps from ours, far below one step (~4e-3).
    _codes_and_values_match(quantize_weight(weight, float_zero), hqq_4bit(weight, group_size=64), 1e-7)
    integer_zero = QuantSpec(bits=4, symmetric=False, group_size=64)
    hqq_default = hqq_4bit(weight, group_size=64, round_zero=True)  # every group here holds both signs
    _codes_and_values_match(quantize_weight(weight, integer_zero), hqq_default, 1e-7)
    ours, theirs = rel_error(fake_quantize(weight, integer_zero), weight), rel_error(hqq_default, weight)
    assert ours <= 1.05 * theirs, (ours, theirs)


def test_compare_with_references_table():
    w = randn(16, 576, seed=9, std=0.02)  # 576 columns: quanto's layers group by 96
    rows = compare_with_references(w)
    assert [row["name"] for row in rows] == list(REFERENCES)
    for row in rows:
        if row["status"] == "not installed":
            continue
        assert row["codes_equal"] and row["codes_differ"] == 0, row
        assert row["max_abs_diff"] < 1e-7, row
        assert row["rel_error_ours"] == pytest.approx(row["rel_error_library"], rel=1e-5), row
        assert 1e-3 < row["rel_error_ours"] < 0.15, row  # really quantised: 8-bit ~0.007, 4-bit ~0.09
    by_name = {row["name"]: row for row in rows}
    assert "group_size=96" in by_name["quanto_int4"]["ours_spec"]
    assert by_name["torchao_int8"]["ours_spec"] == "QuantSpec(bits=8, granularity='channel', full_range=True)"
    with pytest.raises(ValueError, match="unknown references"):
        compare_with_references(w, names=["gguf"])
    with pytest.raises(ValueError, match="does not divide the 576 input columns"):
        torchao_int4(w, group_size=100)


def test_missing_library_is_reported(weight, monkeypatch):
    for module in ("hqq", "hqq.core", "hqq.core.quantize"):
        monkeypatch.setitem(sys.modules, module, None)  # as if hqq were not installed
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'hqq' \(or pip install 'llmbook\[compression\]'\)"):
        hqq_4bit(weight)
    (row,) = compare_with_references(weight, names=["hqq_4bit"])
    assert row["status"] == "not installed" and row["max_abs_diff"] is None, row


def test_dynamic_int8_refuses_to_untie_a_tied_output_head():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=64, tie_word_embeddings=True)
    model = LlamaForCausalLM(config).eval()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    with pytest.raises(ValueError, match="tied embeddings.*keep_float=\\('lm_head',\\)"):
        dynamic_int8(model)
    quantized = dynamic_int8(model, keep_float=("lm_head",))
    assert isinstance(quantized.lm_head, torch.nn.Linear)  # still float, still the embedding's matrix
    assert quantized.lm_head.weight is quantized.model.embed_tokens.weight
