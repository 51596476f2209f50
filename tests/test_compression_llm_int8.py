"""llmbook.compression.llm_int8 (LLM.int8(), arXiv:2208.07339) against bitsandbytes' CPU ``Linear8bitLt`` and
``int8_vectorwise_quant``, against its own definition, and on the first two blocks of SmolLM2-135M."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from llmbook.compression.llm_int8 import (
    Int8MixedLinear,
    int8_matmul,
    int8_mixed_matmul,
    int8_vectorwise_dequant,
    int8_vectorwise_quant,
    outlier_columns,
    outlier_fraction,
    to_llm_int8,
)


@pytest.fixture(scope="module")
def bnb():
    bnb = pytest.importorskip("bitsandbytes")
    import bitsandbytes.functional  # noqa: F401  (the submodule the tests call)

    return bnb


def randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def fp16_linear(in_features: int, out_features: int, *, seed: int) -> nn.Linear:
    """A float32 linear layer whose values are exactly representable in fp16: bitsandbytes casts to fp16 before
    quantising, so on these weights both sides quantise the same numbers."""
    layer = nn.Linear(in_features, out_features)
    with torch.no_grad():
        layer.weight.copy_((0.05 * randn(out_features, in_features, seed=seed)).half().float())
        layer.bias.copy_(randn(out_features, seed=seed + 1).half().float())
    return layer


def bnb_linear(bnb, layer: nn.Linear, threshold: float) -> nn.Module:
    """``Linear8bitLt`` with int8 weights (no fp16 copy) built from ``layer``; quantised by ``.to("cpu")``."""
    m = bnb.nn.Linear8bitLt(
        layer.in_features, layer.out_features, bias=True, has_fp16_weights=False, threshold=threshold
    )
    m.weight = bnb.nn.Int8Params(layer.weight.detach().clone(), requires_grad=False, has_fp16_weights=False)
    m.bias = nn.Parameter(layer.bias.detach().clone(), requires_grad=False)
    return m.to("cpu").eval()


def clean_outliers(seed: int) -> torch.Tensor:
    """(2, 8, 128) inputs, fp16-exact, whose two outlier columns hold only values >= 6 or tiny ones, so no
    entry of an outlier column below the threshold sets a token's scale (where bitsandbytes differs, below)."""
    x = randn(2, 8, 128, seed=seed)
    x[..., [7, 90]] = 0.01 * x[..., [7, 90]]
    x[0, 3, 7], x[1, 5, 7], x[1, 2, 90] = 9.0, -12.5, 30.0
    return x.half().float()


def max_rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


# --- the pieces ----------------------------------------------------------------------------------------------------


def test_weight_codes_and_row_scales_equal_bitsandbytes_exactly(bnb):
    for seed, shape in ((0, (96, 256)), (1, (7, 33))):
        w = randn(*shape, seed=seed) * torch.logspace(-2, 1, shape[1])  # rows and columns of many magnitudes
        codes, absmax = int8_vectorwise_quant(w)
        ref_codes, ref_absmax, _ = bnb.functional.int8_vectorwise_quant(w.clone())
        flips = int((codes != ref_codes).sum())
        assert codes.dtype == torch.int8 and flips == 0, f"{flips} int8 codes differ from bitsandbytes"
        assert torch.equal(absmax, ref_absmax), f"max_abs_diff={float((absmax - ref_absmax).abs().max()):.3g}"
        # and read back the same way: codes * absmax / 127
        back = int8_vectorwise_dequant(codes, absmax)
        ref_back = bnb.functional.int8_vectorwise_dequant(ref_codes, ref_absmax)
        assert torch.allclose(back, ref_back, rtol=1e-6, atol=0), f"max_abs_diff={float((back - ref_back).abs().max())}"


def test_zero_rows_quantise_to_zero_codes():
    codes, absmax = int8_vectorwise_quant(torch.zeros(2, 5))
    assert torch.equal(codes, torch.zeros(2, 5, dtype=torch.int8)) and torch.equal(absmax, torch.zeros(2))


def test_int8_matmul_is_exact_int32_accumulation():
    a = torch.randint(-127, 128, (33, 1536), generator=torch.Generator().manual_seed(0), dtype=torch.int8)
    b = torch.randint(-127, 128, (40, 1536), generator=torch.Generator().manual_seed(1), dtype=torch.int8)
    exact = a.long() @ b.long().t()  # int64 reference
    out = int8_matmul(a, b)
    assert out.dtype == torch.int32 and torch.equal(out.long(), exact), "int8 x int8 -> int32 is not exact"
    if hasattr(torch, "_int_mm"):
        assert torch.equal(out, torch._int_mm(a, b.t())), "differs from torch._int_mm"
    with pytest.raises(TypeError, match="int8"):
        int8_matmul(a.float(), b)


def test_outlier_columns_use_threshold_inclusively():
    x = torch.tensor([[0.0, 6.0, -5.99, 1.0], [0.5, 0.0, 1.0, -7.0]])
    assert outlier_columns(x, 6.0).tolist() == [False, True, False, True]
    assert outlier_fraction(x, 6.0) == 0.5 and outlier_fraction(x, math.inf) == 0.0


# --- the layer against bitsandbytes --------------------------------------------------------------------------------


def test_matches_bitsandbytes_linear8bitlt_with_and_without_outliers(bnb):
    layer = fp16_linear(128, 48, seed=2)
    x = clean_outliers(seed=3)
    assert int(outlier_columns(x, 6.0).sum()) == 2
    with torch.no_grad():
        ref = layer(x)
        for threshold, ours_threshold in ((6.0, 6.0), (0.0, math.inf)):  # bitsandbytes: 0 turns the outlier path off
            theirs = bnb_linear(bnb, layer, threshold)(x)
            ours = Int8MixedLinear(layer, threshold=ours_threshold, outlier_weights="int8")(x)
            # bitsandbytes rescales by the constant 6.200124e-05 where 1 / 127^2 = 6.2000124e-05: 1.8e-5 relative
            diff = max_rel_diff(ours, theirs)
            assert diff < 5e-5, f"threshold={threshold}: max_abs_diff relative to max|y| = {diff:.3g}"
            # the paper's fp outlier weights move the result by no more than int8 weight error on 2 columns
            fp = Int8MixedLinear(layer, threshold=ours_threshold, outlier_weights="fp")(x)
            assert max_rel_diff(fp, theirs) < 1e-2, f"max_rel_diff={max_rel_diff(fp, theirs):.3g}"
            assert max_rel_diff(ours, ref) < 0.03, f"int8 error vs float: {max_rel_diff(ours, ref):.3g}"
    built = bnb_linear(bnb, layer, 6.0).weight  # quantised by .to("cpu"), before any forward
    assert torch.equal(built.CB, Int8MixedLinear(layer).weight_codes), "weight codes differ from Linear8bitLt's"
    assert torch.equal(built.SCB, Int8MixedLinear(layer).weight_absmax), "row scales differ from Linear8bitLt's"


def test_outlier_columns_close_to_bitsandbytes_on_dense_outlier_features(bnb):
    """A whole feature 8x larger than the rest: bitsandbytes zeroes only the entries >= 6 before taking each
    token's absmax, so the column's smaller entries still set some token scales although they take the float
    path; we take the absmax over the int8 columns only (the paper's decomposition). Measured: the outputs
    differ by 0.72% of max|y|; our max error to the float result is 0.0326, theirs 0.0358."""
    layer = fp16_linear(256, 96, seed=0)
    x = randn(4, 16, 256, seed=5)
    x[..., 7] *= 8
    x = x.half().float()
    with torch.no_grad():
        ref, theirs = layer(x), bnb_linear(bnb, layer, 6.0)(x)
        ours = Int8MixedLinear(layer, threshold=6.0, outlier_weights="int8")(x)
    assert max_rel_diff(ours, theirs) < 0.02, f"max_rel_diff={max_rel_diff(ours, theirs):.3g}"
    assert float((ours - ref).abs().max()) <= float((theirs - ref).abs().max()), "decomposition lost accuracy"


def test_infinite_threshold_is_the_pure_int8_product():
    layer = fp16_linear(64, 24, seed=6)
    x = randn(10, 64, seed=7) * 3
    x[2, 5] = 40.0
    with torch.no_grad():
        ours = Int8MixedLinear(layer, threshold=math.inf)(x)
    # definition: (dequantised x) (dequantised W)^T + b, one absmax scale per token and per weight row, float64
    xq = int8_vectorwise_dequant(*int8_vectorwise_quant(x)).double()
    wq = int8_vectorwise_dequant(*int8_vectorwise_quant(layer.weight.detach())).double()
    expected = (xq @ wq.t() + layer.bias.detach().double()).float()
    assert torch.allclose(ours, expected, rtol=1e-5, atol=1e-5), f"max_abs_diff={float((ours - expected).abs().max())}"


def test_decomposition_rescues_tokens_with_an_outlier_feature():
    layer = fp16_linear(64, 24, seed=8)
    x = randn(32, 64, seed=9)
    x[:, 11] = 20.0 * torch.sign(x[:, 11])  # one systematic outlier feature, as in large transformers
    with torch.no_grad():
        ref = layer(x)
        mixed = float((Int8MixedLinear(layer, threshold=6.0)(x) - ref).pow(2).mean())
        pure = float((Int8MixedLinear(layer, threshold=math.inf)(x) - ref).pow(2).mean())
    # measured: mixed 1.1e-05, pure 3.4e-04 (the outlier flattens each token's other 63 features)
    assert mixed < 0.1 * pure, f"mixed-precision MSE {mixed:.3g} vs pure int8 {pure:.3g}"


def test_functional_form_handles_no_outliers_and_validates():
    layer = fp16_linear(16, 8, seed=10)
    codes, absmax = int8_vectorwise_quant(layer.weight.detach())
    x = randn(3, 16, seed=11)
    a = int8_mixed_matmul(x, codes, absmax, threshold=6.0)
    b = int8_mixed_matmul(x, codes, absmax, threshold=math.inf)
    assert torch.equal(a, b), "with no |x| >= 6 the threshold must not matter"
    with pytest.raises(ValueError, match="threshold"):
        Int8MixedLinear(layer, threshold=0.0)
    with pytest.raises(ValueError, match="outlier_weights"):
        Int8MixedLinear(layer, outlier_weights="fp16")
    with pytest.raises(TypeError, match="nn.Linear"):
        Int8MixedLinear(nn.Conv1d(2, 2, 1))


# --- the real model ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_and_ids():
    pytest.importorskip("transformers")
    from llmbook.chain.pretrained import load_pretrained
    from llmbook.data.corpora import corpus_text

    model, tok = load_pretrained(layers=2)
    ids = tok(corpus_text("en", max_bytes=2000), return_tensors="pt").input_ids[:, :128]  # (1, T)
    return model, ids


def test_to_llm_int8_on_smollm2_keeps_the_hidden_states(model_and_ids):
    """All 14 block linears to LLM.int8(), on 128 tokens; on this model the inputs >= 6 sit in a handful of
    down_proj's input channels, so the decomposition has something to do."""
    model, ids = model_and_ids
    with torch.no_grad():
        ref = model.model(ids).last_hidden_state  # (1, T, C), after the final norm
        q = to_llm_int8(copy.deepcopy(model), threshold=6.0)
        layers = [m for m in q.modules() if isinstance(m, Int8MixedLinear)]
        assert len(layers) == 14 and isinstance(q.lm_head, nn.Linear), "replace the block linears only"
        errors = {}
        for threshold in (6.0, math.inf):
            for layer in layers:
                layer.threshold = threshold
            hidden = q.model(ids).last_hidden_state
            errors[threshold] = float((hidden - ref).pow(2).mean() / ref.pow(2).mean())
    # measured: relative MSE 1.6e-3 with threshold 6 vs 2.1e-3 pure int8
    assert errors[6.0] < errors[math.inf] < 1e-2, f"relative MSE of the final hidden states {errors}"
