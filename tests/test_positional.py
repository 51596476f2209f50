"""Positional encodings: hand-derived cases and equivalence with transformers' RoPE code."""

import math

import pytest
import torch
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.bloom.modeling_bloom import build_alibi_tensor
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

from llmbook.positional import (
    LearnedPositionalEmbedding,
    RopeConfig,
    RotaryEmbedding,
    T5RelativeBias,
    alibi_bias,
    alibi_slopes,
    apply_rope,
    permute_qk_weight,
    rope_cos_sin,
    rope_inv_freq,
    rope_parameters,
    sinusoidal_embedding,
    t5_relative_bucket,
)


def mad(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


# ----------------------------------------------------------------- absolute


def test_sinusoidal_hand_values():
    pe = sinusoidal_embedding(torch.arange(3), 4, base=10000.0)
    # dim pair 0: frequency 1; dim pair 1: frequency 10000^(-2/4) = 0.01
    expected = torch.tensor(
        [[0.0, 1.0, 0.0, 1.0], [math.sin(1), math.cos(1), math.sin(0.01), math.cos(0.01)],
         [math.sin(2), math.cos(2), math.sin(0.02), math.cos(0.02)]]
    )
    assert mad(pe, expected) < 1e-6, f"max_abs_diff={mad(pe, expected)}"


def test_learned_positions_out_of_range():
    emb = LearnedPositionalEmbedding(8, 4)
    assert emb(torch.arange(8)).shape == (8, 4)
    with pytest.raises(ValueError, match="max_positions"):
        emb(torch.arange(9))


# ----------------------------------------------------------------- relative biases


def test_t5_buckets_hand_derived():
    rel = torch.tensor([0, -1, -15, -16, -32, -127, -1000, 5])
    got = t5_relative_bucket(rel, bidirectional=False, num_buckets=32, max_distance=128)
    # exact for n < 16; then 16 + floor(log(n/16)/log(8) * 16): n=32 -> 21, n=127 -> 31; capped at 31; future -> 0
    assert got.tolist() == [0, 1, 15, 16, 21, 31, 31, 0]
    bi = t5_relative_bucket(torch.tensor([3, -3, 0]), bidirectional=True, num_buckets=32, max_distance=128)
    assert bi.tolist() == [16 + 3, 3, 0]  # positive offsets use the upper half of the buckets
    bias = T5RelativeBias(n_heads=2)(torch.arange(4), torch.arange(4))
    assert bias.shape == (2, 4, 4)


def test_alibi_slopes_hand_derived():
    assert alibi_slopes(8).tolist() == [2.0**-i for i in range(1, 9)]
    # 6 heads: the 4-head sequence 2^-2,2^-4,2^-6,2^-8 then every other slope of the 8-head one: 2^-1, 2^-3
    assert alibi_slopes(6).tolist() == [2.0**-2, 2.0**-4, 2.0**-6, 2.0**-8, 2.0**-1, 2.0**-3]
    s12 = alibi_slopes(12)
    expected = [2.0**-i for i in range(1, 9)] + [2.0**-0.5, 2.0**-1.5, 2.0**-2.5, 2.0**-3.5]
    assert mad(s12, torch.tensor(expected)) < 1e-7, f"max_abs_diff={mad(s12, torch.tensor(expected))}"


@pytest.mark.parametrize("n_heads", [4, 6, 12])
def test_alibi_matches_bloom(n_heads):
    # BLOOM's bias is slope * key_position (softmax-equivalent to -slope * (i - j) per query row)
    t = 7
    bloom = build_alibi_tensor(torch.ones(1, t), n_heads, torch.float32).view(n_heads, 1, t)
    ours = alibi_bias(n_heads, torch.arange(t), torch.arange(t))  # (H, T, T)
    shifted = ours - ours[:, :, :1]  # remove the per-row constant -slope * i
    assert mad(shifted, bloom.expand(n_heads, t, t)) < 1e-6, f"max_abs_diff={mad(shifted, bloom.expand(-1, t, t))}"
    assert ours[1, 3, 1].item() == pytest.approx(-alibi_slopes(n_heads)[1].item() * 2)


# ----------------------------------------------------------------- RoPE


def test_rope_half_matches_transformers():
    torch.manual_seed(0)
    rope = {"rope_type": "default", "rope_theta": 500.0}
    cfg = LlamaConfig(hidden_size=64, num_attention_heads=4, rope_parameters=rope)
    hf_rope = LlamaRotaryEmbedding(cfg)
    q, k = torch.randn(2, 4, 9, 16), torch.randn(2, 4, 9, 16)
    pos = torch.arange(9)
    hf_cos, hf_sin = hf_rope(q, pos[None])
    hq, hk = apply_rotary_pos_emb(q, k, hf_cos, hf_sin)
    cos, sin = RotaryEmbedding(16, RopeConfig(theta=500.0))(pos)
    assert mad(cos, hf_cos[0]) < 1e-6
    assert mad(apply_rope(q, cos, sin), hq) < 1e-6, f"max_abs_diff={mad(apply_rope(q, cos, sin), hq)}"
    assert mad(apply_rope(k, cos, sin), hk) < 1e-6


def test_rope_interleaved_matches_complex_reference():
    # Meta's original: view (x0, x1) pairs as complex numbers and multiply by e^{i p theta_k}
    torch.manual_seed(0)
    x, pos = torch.randn(1, 2, 5, 8), torch.arange(5)
    inv = rope_inv_freq(8)
    rot = torch.polar(torch.ones(5, 4), pos[:, None].float() * inv[None])  # (T, D/2) complex
    ref = torch.view_as_real(torch.view_as_complex(x.reshape(1, 2, 5, 4, 2)) * rot).flatten(-2)
    cos, sin = rope_cos_sin(pos, inv, layout="interleaved")
    got = apply_rope(x, cos, sin, layout="interleaved")
    assert mad(got, ref) < 1e-6, f"max_abs_diff={mad(got, ref)}"


def test_rope_scores_depend_on_relative_position_only():
    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)
    rope = RotaryEmbedding(16)

    def score(i: int, j: int) -> float:
        ci, si = rope(torch.tensor([i]))
        cj, sj = rope(torch.tensor([j]))
        return (apply_rope(q, ci, si) * apply_rope(k, cj, sj)).sum().item()

    assert score(3, 1) == pytest.approx(score(10, 8), abs=1e-5)
    assert abs(score(3, 1) - score(3, 2)) > 1e-3


def test_layout_converter_permutes_qk_rows():
    torch.manual_seed(0)
    n_heads, d, c, t = 2, 8, 12, 6
    wq, wk, x = torch.randn(n_heads * d, c), torch.randn(n_heads * d, c), torch.randn(1, t, c)
    pos = torch.arange(t)

    def scores(wq_, wk_, layout):
        q = (x @ wq_.T).view(1, t, n_heads, d).transpose(1, 2)  # (B, H, T, D)
        k = (x @ wk_.T).view(1, t, n_heads, d).transpose(1, 2)
        cos, sin = rope_cos_sin(pos, rope_inv_freq(d), layout=layout)
        return apply_rope(q, cos, sin, layout) @ apply_rope(k, cos, sin, layout).transpose(-2, -1)

    inter = scores(wq, wk, "interleaved")
    half = scores(permute_qk_weight(wq, n_heads, to="half"), permute_qk_weight(wk, n_heads, to="half"), "half")
    assert mad(inter, half) < 1e-4, f"max_abs_diff={mad(inter, half)}"
    assert mad(inter, scores(wq, wk, "half")) > 1e-2  # without the permutation they differ
    back = permute_qk_weight(permute_qk_weight(wq, n_heads, to="half"), n_heads, to="interleaved")
    assert torch.equal(back, wq)


# ----------------------------------------------------------------- context extension vs transformers

HEAD_DIM = 64


def _hf(rope_parameters: dict, max_pos: int = 4096, seq_len: int | None = None) -> tuple[torch.Tensor, float]:
    cfg = LlamaConfig(
        hidden_size=HEAD_DIM * 4,
        num_attention_heads=4,
        max_position_embeddings=max_pos,
        rope_parameters=rope_parameters,
    )
    kind = rope_parameters["rope_type"]
    if kind == "default":
        return LlamaRotaryEmbedding.compute_default_rope_parameters(cfg)
    return ROPE_INIT_FUNCTIONS[kind](cfg, "cpu", seq_len=seq_len)


CASES = [
    (RopeConfig(theta=10000.0), {"rope_type": "default", "rope_theta": 10000.0}),
    (
        RopeConfig(theta=10000.0, scaling="linear", factor=4.0),
        {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0},
    ),
    (
        RopeConfig(theta=500000.0, scaling="llama3", factor=8.0, original_max_position_embeddings=512,
                   low_freq_factor=1.0, high_freq_factor=4.0),
        {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "original_max_position_embeddings": 512,
         "low_freq_factor": 1.0, "high_freq_factor": 4.0},
    ),
    (
        RopeConfig(theta=10000.0, scaling="yarn", factor=4.0, original_max_position_embeddings=1024),
        {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 1024},
    ),
    (
        RopeConfig(theta=10000.0, scaling="yarn", factor=8.0, original_max_position_embeddings=2048,
                   beta_fast=16.0, beta_slow=2.0, attention_factor=1.3),
        {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 8.0, "original_max_position_embeddings": 2048,
         "beta_fast": 16.0, "beta_slow": 2.0, "attention_factor": 1.3},
    ),
]


@pytest.mark.parametrize("ours,theirs", CASES, ids=lambda c: getattr(c, "scaling", None) or "")
def test_rope_scaling_matches_transformers(ours, theirs):
    inv, scale = rope_parameters(HEAD_DIM, ours)
    hf_inv, hf_scale = _hf(theirs)
    rel = ((inv - hf_inv).abs() / hf_inv).max().item()
    assert rel < 1e-6, f"max relative diff {rel}, max_abs_diff={mad(inv, hf_inv)}"
    assert scale == pytest.approx(hf_scale, rel=1e-7)


@pytest.mark.parametrize("seq_len", [1000, 4096, 9000])
def test_dynamic_ntk_matches_transformers(seq_len):
    ours = RopeConfig(scaling="dynamic", factor=2.0, original_max_position_embeddings=4096)
    inv, _ = rope_parameters(HEAD_DIM, ours, seq_len=seq_len)
    hf_inv, _ = _hf({"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0}, max_pos=4096, seq_len=seq_len)
    rel = ((inv - hf_inv).abs() / hf_inv).max().item()
    assert rel < 1e-6, f"max relative diff {rel}"


def test_ntk_aware_hand_formula_and_yarn_temperature():
    # static NTK-aware: theta' = theta * s^(D/(D-2)); the highest frequency (dim 0) is unchanged
    inv, _ = rope_parameters(HEAD_DIM, RopeConfig(scaling="ntk", factor=4.0))
    base = rope_inv_freq(HEAD_DIM)
    assert inv[0].item() == 1.0
    expected_last = (10000.0 * 4.0 ** (HEAD_DIM / (HEAD_DIM - 2))) ** (-(HEAD_DIM - 2) / HEAD_DIM)
    assert inv[-1].item() == pytest.approx(expected_last, rel=1e-5)
    assert inv[-1].item() == pytest.approx(base[-1].item() / 4.0, rel=1e-5)  # lowest frequency fully interpolated
    # YaRN temperature 0.1 ln s + 1 multiplies cos/sin, i.e. logits by its square
    rope = RotaryEmbedding(HEAD_DIM, RopeConfig(scaling="yarn", factor=16.0, original_max_position_embeddings=512))
    assert rope.attention_scaling == pytest.approx(0.1 * math.log(16.0) + 1)
    cos, sin = rope(torch.arange(3))
    assert (cos**2 + sin**2).mean().item() == pytest.approx(rope.attention_scaling**2, rel=1e-5)


def test_rope_config_validation():
    with pytest.raises(ValueError, match="scaling"):
        RopeConfig(scaling="ntk-by-parts")
    with pytest.raises(ValueError, match="original_max_position_embeddings"):
        RopeConfig(scaling="yarn", factor=2.0)
