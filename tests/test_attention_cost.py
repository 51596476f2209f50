"""KV-cache formulas on published configs, and the CPU peak-memory / cost measurement."""

import dataclasses

import pytest
import torch

from llmbook.attention import KVCache, LatentAttentionConfig, MultiHeadLatentAttention, cost
from llmbook.model import DecoderLM, ModelConfig


def test_published_kv_bytes_hand_values():
    # bf16: 2 (K and V) * layers * kv heads * head dim * 2 bytes; MLA: layers * (r + d_r) * 2 bytes
    assert cost.kv_cache_bytes_per_token(cost.PUBLISHED["Llama-3-8B"]) == 2 * 32 * 8 * 128 * 2 == 131072
    assert cost.kv_cache_bytes_per_token(cost.PUBLISHED["Qwen2.5-7B"]) == 2 * 28 * 4 * 128 * 2
    assert cost.kv_cache_bytes_per_token(cost.PUBLISHED["DeepSeek-V2"]) == 60 * (512 + 64) * 2
    mha = cost.as_variant(cost.PUBLISHED["DeepSeek-V2"], "MHA")
    assert cost.kv_cache_bytes_per_token(mha) == 2 * 60 * 128 * 128 * 2
    assert cost.attention_params_per_layer(cost.PUBLISHED["Llama-3-8B"]) == 2 * 4096 * 4096 + 2 * 4096 * 1024
    with pytest.raises(ValueError, match="dtype"):
        cost.kv_cache_bytes_per_token(mha, "int3")


def test_formula_matches_real_caches():
    cfg = ModelConfig(vocab_size=50, d_model=32, n_layers=3, n_heads=4, n_kv_heads=2)
    cache = KVCache()
    with torch.no_grad():
        DecoderLM(cfg)(torch.zeros(1, 10, dtype=torch.long), kv_cache=cache)
    shape = cost.PublishedAttention(name="t", source="test", n_layers=3, d_model=32, n_heads=4, n_kv_heads=2,
                                    head_dim=8)
    assert cache.nbytes() == 10 * cost.kv_cache_bytes_per_token(shape, "fp32")
    assert cost.attention_shape(cfg, name="t") == dataclasses.replace(shape, source="config")
    mla_cfg = LatentAttentionConfig(d_model=32, n_heads=4, kv_lora_rank=12, qk_nope_head_dim=8, qk_rope_head_dim=4,
                                    v_head_dim=8)
    mla = MultiHeadLatentAttention(mla_cfg)
    cache = KVCache()
    with torch.no_grad():
        mla(torch.randn(1, 10, 32), cache=cache)
    shape = cost.PublishedAttention(name="m", source="test", n_layers=1, d_model=32, n_heads=4, n_kv_heads=1,
                                    head_dim=12, kv_lora_rank=12, qk_rope_head_dim=4)
    assert cache.nbytes() == 10 * cost.kv_cache_bytes_per_token(shape, "fp32")
    assert cache.nbytes() == 10 * cost.kv_cache_bytes_per_token(cost.attention_shape(mla_cfg, n_layers=1), "fp32")
    with pytest.raises(ValueError, match="n_layers is required"):
        cost.attention_shape(mla_cfg)
    assert cost.dense_scores_bytes(2, 4, 16) == 2 * 4 * 16 * 16 * 4


def test_peak_memory_tracks_live_tensors():
    def two_then_one():
        a = torch.empty(1024, dtype=torch.float32)  # 4 KiB
        b = torch.empty(2048, dtype=torch.float32)  # 8 KiB, both alive
        del a, b
        return torch.empty(512)  # 2 KiB after the peak

    _, peak = cost.peak_memory(two_then_one)
    assert peak == 4096 + 8192, peak
    x = torch.randn(256)
    _, peak = cost.peak_memory(lambda: x[10:].view(-1))  # views allocate nothing
    assert peak == 0, peak


def test_tiled_uses_less_memory_than_eager_at_long_t():
    eager = cost.attention_cost("eager", 512, repeats=1)
    tiled = cost.attention_cost("tiled", 512, repeats=1)
    assert tiled["peak_mib"] < eager["peak_mib"] / 2, (tiled, eager)
    assert eager["peak_mib"] >= eager["dense_scores_mib"]  # the score matrix is materialised
    with pytest.raises(ValueError, match="sdpa_backend"):
        cost.attention_cost("eager", 64, sdpa_backend="flash")


def test_causal_attention_flops_hand_case():
    assert cost.causal_attention_flops(1, 1, 4, 2) == 4 * 16 * 2 / 2
    assert cost.causal_attention_flops(1, 1, 4, 2, causal=False) == 4 * 16 * 2
