"""Attention: eager reference, fused SDPA, tiled FlashAttention, GQA/MQA, MLA, sliding window, KV cache.

Boolean masks everywhere in ``llmbook`` mean **True = may attend** (SDPA's convention).
"""

from llmbook.attention.core import (
    ATTN_IMPLS,
    AttentionConfig,
    AttnImpl,
    GroupedQueryAttention,
    KVCache,
    attend,
    causal_mask,
    combine_masks,
    eager_attention,
    mask_to_bias,
    padding_mask,
    sdpa_attention,
)
from llmbook.attention.heads import check_heads, repeat_kv
from llmbook.attention.latent import LatentAttentionConfig, MultiHeadLatentAttention
from llmbook.attention.tiled import TiledAttentionFunction, tiled_attention

__all__ = [
    "ATTN_IMPLS",
    "AttentionConfig",
    "AttnImpl",
    "GroupedQueryAttention",
    "KVCache",
    "LatentAttentionConfig",
    "MultiHeadLatentAttention",
    "TiledAttentionFunction",
    "attend",
    "causal_mask",
    "check_heads",
    "combine_masks",
    "eager_attention",
    "mask_to_bias",
    "padding_mask",
    "repeat_kv",
    "sdpa_attention",
    "tiled_attention",
]
