"""Attention: masks by hand, eager/tiled vs torch SDPA (forward and gradients), KV cache, MLA, windows."""

import pytest
import torch
import torch.nn.functional as F

from llmbook.attention import (
    AttentionConfig,
    GroupedQueryAttention,
    KVCache,
    LatentAttentionConfig,
    MultiHeadLatentAttention,
    attend,
    causal_mask,
    eager_attention,
    mask_to_bias,
    padding_mask,
    sdpa_attention,
    tiled_attention,
)
from llmbook.positional import RotaryEmbedding


def mad(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


def qkv(b=2, h=4, h_kv=2, t_q=13, t_k=13, d=8, seed=0, grad=False):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, t_q, d, generator=g)
    k = torch.randn(b, h_kv, t_k, d, generator=g)
    v = torch.randn(b, h_kv, t_k, d, generator=g)
    return [x.requires_grad_(grad) for x in (q, k, v)]


# ----------------------------------------------------------------- masks by hand


def test_causal_and_window_masks_hand_derived():
    assert causal_mask(3, 3).tolist() == [[True, False, False], [True, True, False], [True, True, True]]
    # two new queries after two cached keys sit at positions 2 and 3 (bottom-right alignment)
    assert causal_mask(2, 4).tolist() == [[True, True, True, False], [True, True, True, True]]
    assert causal_mask(4, 4, window=2).tolist() == [
        [True, False, False, False],
        [True, True, False, False],
        [False, True, True, False],
        [False, False, True, True],
    ]
    assert padding_mask(torch.tensor([[0, 1, 1]])).tolist() == [[[[False, True, True]]]]
    bias = mask_to_bias(torch.tensor([True, False]))
    assert bias[0].item() == 0.0 and bias[1].item() == float("-inf")


def test_mask_semantics_true_means_attend():
    q, k, v = qkv(b=1, h=1, h_kv=1, t_q=1, t_k=3)
    only_second = torch.tensor([False, True, False])
    out, w = eager_attention(q, k, v, mask=only_second, return_weights=True)
    assert w[0, 0, 0].tolist() == [0.0, 1.0, 0.0]
    assert mad(out, v[:, :, 1:2]) < 1e-6


def test_fully_masked_row_gives_zeros_not_nan():
    q, k, v = qkv(b=1, h=2, h_kv=2, t_q=3, t_k=3)
    mask = torch.tensor([[False, False, False], [True, False, False], [True, True, True]])
    for fn in (eager_attention, sdpa_attention):
        out = fn(q, k, v, mask=mask)
        assert not out.isnan().any()
        assert out[:, :, 0].abs().max().item() == 0.0
    tiled = tiled_attention(q, k, v, key_padding_mask=torch.zeros(1, 3, dtype=torch.bool))
    assert not tiled.isnan().any() and tiled.abs().max().item() == 0.0


# ----------------------------------------------------------------- eager and dispatch vs SDPA


@pytest.mark.parametrize("h,h_kv", [(4, 4), (4, 2), (4, 1)], ids=["MHA", "GQA", "MQA"])
def test_eager_matches_sdpa_heads(h, h_kv):
    q, k, v = qkv(h=h, h_kv=h_kv)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    got = eager_attention(q, k, v, mask=causal_mask(13, 13))
    assert mad(got, ref) < 1e-5, f"max_abs_diff={mad(got, ref)}"


@pytest.mark.parametrize("impl", ["eager", "sdpa", "tiled"])
def test_attend_with_padding_matches_sdpa(impl):
    q, k, v = qkv()
    keep = torch.ones(2, 13, dtype=torch.bool)
    keep[0, :4] = False  # left padding in row 0
    dense = causal_mask(13, 13) & keep[:, None, None, :]
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=dense, enable_gqa=True)
    got = attend(q, k, v, impl=impl, key_padding_mask=keep)
    rows = dense.any(-1).expand(2, 4, 13)  # rows with at least one key (others: SDPA gives NaN, we give 0)
    assert mad(got[rows], ref[rows]) < 1e-5, f"max_abs_diff={mad(got[rows], ref[rows])}"


def test_bias_path_matches_sdpa_float_mask():
    q, k, v = qkv()
    bias = torch.randn(4, 13, 13)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.masked_fill(~causal_mask(13, 13), float("-inf")),
                                         enable_gqa=True)
    for impl in ("eager", "sdpa"):
        got = attend(q, k, v, impl=impl, bias=bias)
        assert mad(got, ref) < 1e-5, f"{impl}: max_abs_diff={mad(got, ref)}"
    with pytest.raises(ValueError, match="tiled"):
        attend(q, k, v, impl="tiled", bias=bias)


# ----------------------------------------------------------------- tiled FlashAttention


@pytest.mark.parametrize(
    "causal,t_q,t_k,h_kv,bq,bk",
    [(False, 37, 37, 4, 8, 16), (True, 37, 37, 2, 16, 8), (True, 5, 29, 1, 4, 8), (True, 64, 64, 2, 64, 64)],
    ids=["full", "causal-gqa", "decode-offset-mqa", "one-tile"],
)
def test_tiled_forward_and_backward_match_sdpa(causal, t_q, t_k, h_kv, bq, bk):
    q, k, v = qkv(h_kv=h_kv, t_q=t_q, t_k=t_k, d=16, grad=True)
    dense = causal_mask(t_q, t_k) if causal else None
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=dense, enable_gqa=True)
    got = tiled_attention(q, k, v, causal=causal, block_q=bq, block_k=bk)
    assert mad(got, ref) < 1e-5, f"forward max_abs_diff={mad(got, ref)}"
    grad_out = torch.randn_like(ref)
    g_ref = torch.autograd.grad(ref, (q, k, v), grad_out)
    g_got = torch.autograd.grad(got, (q, k, v), grad_out)
    for name, a, b in zip("qkv", g_got, g_ref):
        assert mad(a, b) < 1e-4, f"d{name} max_abs_diff={mad(a, b)}"


def test_tiled_backward_with_padding_and_window():
    q, k, v = qkv(t_q=40, t_k=40, grad=True)
    keep = torch.ones(2, 40, dtype=torch.bool)
    keep[1, :7] = False
    dense = causal_mask(40, 40, window=9) & keep[:, None, None, :]
    ref = eager_attention(q, k, v, mask=dense)
    got = tiled_attention(q, k, v, causal=True, window=9, key_padding_mask=keep, block_q=8, block_k=8)
    assert mad(got, ref) < 1e-5, f"forward max_abs_diff={mad(got, ref)}"
    grad_out = torch.randn_like(ref)
    grads_got, grads_ref = torch.autograd.grad(got, (q, k, v), grad_out), torch.autograd.grad(ref, (q, k, v), grad_out)
    for name, a, b in zip("qkv", grads_got, grads_ref):
        assert mad(a, b) < 1e-4, f"d{name} max_abs_diff={mad(a, b)}"


def test_tiled_gradcheck_float64():
    q, k, v = [x.double().detach().requires_grad_() for x in qkv(b=1, h=2, h_kv=1, t_q=6, t_k=6, d=4)]
    tiled = lambda a, b, c: tiled_attention(a, b, c, causal=True, block_q=4, block_k=4)  # noqa: E731
    assert torch.autograd.gradcheck(tiled, (q, k, v))


# ----------------------------------------------------------------- modules and caches


def _gqa(impl="sdpa", window=None, h_kv=2):
    torch.manual_seed(0)
    cfg = AttentionConfig(d_model=32, n_heads=4, n_kv_heads=h_kv, impl=impl, window=window)
    return GroupedQueryAttention(cfg).eval()


def test_gqa_module_matches_manual_mha_and_impls_agree():
    x = torch.randn(2, 11, 32)
    mha = _gqa(h_kv=4)
    q = (x @ mha.q_proj.weight.T).view(2, 11, 4, 8).transpose(1, 2)
    k = (x @ mha.k_proj.weight.T).view(2, 11, 4, 8).transpose(1, 2)
    v = (x @ mha.v_proj.weight.T).view(2, 11, 4, 8).transpose(1, 2)
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, D)
    manual = y.transpose(1, 2).reshape(2, 11, 32) @ mha.o_proj.weight.T
    assert mad(mha(x), manual) < 1e-5, f"max_abs_diff={mad(mha(x), manual)}"
    ref = _gqa("sdpa")(x)
    for impl in ("eager", "tiled"):
        got = _gqa(impl)(x)
        assert mad(got, ref) < 1e-5, f"{impl}: max_abs_diff={mad(got, ref)}"


@pytest.mark.parametrize("impl,window", [("sdpa", None), ("eager", None), ("tiled", None), ("sdpa", 4), ("tiled", 4)])
def test_kv_cache_prefill_then_decode_equals_full(impl, window):
    attn = _gqa(impl, window=window)
    rope = RotaryEmbedding(8)
    x = torch.randn(2, 12, 32)
    full = attn(x, position_embeddings=rope(torch.arange(12)))
    cache = KVCache()
    outs = [attn(x[:, :7], position_embeddings=rope(torch.arange(7)), cache=cache)]
    for t in range(7, 12):
        outs.append(attn(x[:, t : t + 1], position_embeddings=rope(torch.tensor([t])), cache=cache))
    got = torch.cat(outs, dim=1)
    assert cache.seq_len() == 12
    assert mad(got, full) < 1e-5, f"max_abs_diff={mad(got, full)}"


def test_sliding_window_matches_masked_eager():
    q, k, v = qkv(t_q=20, t_k=20)
    win = 5
    band = torch.zeros(20, 20, dtype=torch.bool)
    for i in range(20):
        band[i, max(0, i - win + 1) : i + 1] = True  # hand-built band: itself and 4 previous keys
    ref = eager_attention(q, k, v, mask=band)
    for impl in ("eager", "sdpa", "tiled"):
        got = attend(q, k, v, impl=impl, window=win)
        assert mad(got, ref) < 1e-5, f"{impl}: max_abs_diff={mad(got, ref)}"
    full = attend(q, k, v, impl="eager")
    assert mad(full, ref) > 1e-2  # the window changes the result


def _mla(q_lora_rank=None, impl="sdpa"):
    torch.manual_seed(0)
    cfg = LatentAttentionConfig(
        d_model=32, n_heads=4, kv_lora_rank=12, q_lora_rank=q_lora_rank, qk_nope_head_dim=8, qk_rope_head_dim=4,
        v_head_dim=6, impl=impl,
    )
    return MultiHeadLatentAttention(cfg).eval()


@pytest.mark.parametrize("q_lora_rank", [None, 16])
def test_mla_cache_equals_no_cache_and_absorbed(q_lora_rank):
    mla = _mla(q_lora_rank)
    x = torch.randn(2, 10, 32)
    full = mla(x)
    absorbed = mla(x, absorb=True)
    assert mad(absorbed, full) < 1e-5, f"absorbed max_abs_diff={mad(absorbed, full)}"
    for absorb in (False, True):
        cache = KVCache()
        outs = [mla(x[:, :6], cache=cache, absorb=absorb)]
        outs += [mla(x[:, t : t + 1], cache=cache, absorb=absorb) for t in range(6, 10)]
        got = torch.cat(outs, dim=1)
        assert mad(got, full) < 1e-5, f"absorb={absorb}: max_abs_diff={mad(got, full)}"
    assert cache.keys[0].shape == (2, 10, 12) and cache.values[0].shape == (2, 1, 10, 4)  # c_kv and k_rope only
    assert mla.cache_floats_per_token() == 16  # vs 2 * H * D = 2 * 4 * 14 for MHA of the same head dims


def test_mla_impls_agree_and_is_causal():
    x = torch.randn(1, 9, 32)
    ref = _mla(impl="sdpa")(x)
    for impl in ("eager", "tiled"):
        assert mad(_mla(impl=impl)(x), ref) < 1e-5
    x2 = x.clone()
    x2[:, -1] += 1.0  # changing the last token must not change earlier outputs
    assert mad(_mla()(x2)[:, :-1], ref[:, :-1]) < 1e-6


def test_bad_arguments_raise():
    q, k, v = qkv(h=3, h_kv=2)
    with pytest.raises(ValueError, match="multiple"):
        eager_attention(q, k, v)
    with pytest.raises(ValueError, match="impl"):
        attend(*qkv(), impl="flash")
    with pytest.raises(ValueError, match="n_kv_heads"):
        AttentionConfig(d_model=32, n_heads=4, n_kv_heads=3)
