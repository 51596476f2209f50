"""Run a Hugging Face decoder (LLaMA family) over a paged KV cache, many sequences per forward.

A serving engine owns the model's forward pass, as vLLM does: the tokens of every scheduled
sequence (a decode token, a whole prompt or a prefill chunk) are concatenated into one flat batch,
so each linear layer is one matrix product over all of them; only attention looks at sequences
separately, through the block tables (:mod:`llmbook.serving.paged_attention`). The weights are the
model's own modules (``q_proj`` ... ``down_proj``, norms, rotary embedding), called in the order of
``modeling_llama.py``; nothing is copied.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from llmbook.serving.kv_cache import CacheShape, PagedKVCache, slot_indices
from llmbook.serving.paged_attention import paged_attention


@dataclass(kw_only=True)
class Chunk:
    """New tokens of one sequence to run: ``token_ids`` sit at positions ``start ..``."""

    token_ids: list[int]
    start: int  # tokens already in the cache for this sequence
    block_table: list[int]  # must cover start + len(token_ids) tokens
    all_logits: bool = False  # logits of every new position (speculative verification), else the last only


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE (Su et al. 2021, arXiv:2104.09864) in LLaMA's half-split layout: ``x·cos + rotate_half(x)·sin``."""
    return x * cos + rotate_half(x) * sin


class PagedModelRunner:
    """Owns the KV block pool of ``model`` and runs :class:`Chunk` batches through it."""

    def __init__(self, model: nn.Module, *, num_blocks: int, block_size: int) -> None:
        config = model.config
        for name in ("num_attention_heads", "num_key_value_heads", "hidden_size"):
            if not hasattr(config, name):
                raise ValueError(f"the paged runner needs a LLaMA-style config; {type(config).__name__} has no {name}")
        self.model = model.eval()
        self.backbone = model.model
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.num_heads
        param = next(model.parameters())
        self.device = param.device
        self.cache = PagedKVCache(CacheShape(num_layers=len(self.backbone.layers), num_blocks=num_blocks,
                                             block_size=block_size, num_kv_heads=self.num_kv_heads,
                                             head_dim=self.head_dim, dtype=param.dtype), self.device)
        self.block_size = block_size

    @torch.no_grad()
    def forward(self, chunks: list[Chunk]) -> list[torch.Tensor]:
        """Write the chunks' keys/values into the cache and return float32 logits per chunk:
        ``(V,)`` for the last position, or ``(L, V)`` with ``all_logits``."""
        if not chunks:
            return []
        dev, bs = self.device, self.block_size
        lens = [len(c.token_ids) for c in chunks]
        ids = torch.tensor([t for c in chunks for t in c.token_ids], device=dev)  # (N,)
        positions = torch.tensor([p for c in chunks for p in range(c.start, c.start + len(c.token_ids))], device=dev)
        slots = [slot_indices(c.block_table, c.start, c.start + len(c.token_ids), bs) for c in chunks]
        slots = torch.tensor([s for chunk_slots in slots for s in chunk_slots], device=dev)  # (N,)
        groups = _attention_groups(chunks, lens, dev)

        x = self.backbone.embed_tokens(ids)[None]  # (1, N, C)
        cos, sin = self.backbone.rotary_emb(x, positions[None])  # (1, N, D)
        cos, sin = cos[:, None], sin[:, None]  # (1, 1, N, D): broadcast over heads
        for index, layer in enumerate(self.backbone.layers):
            attn = layer.self_attn
            h = layer.input_layernorm(x)
            q = attn.q_proj(h).view(1, -1, self.num_heads, self.head_dim).transpose(1, 2)  # (1, H, N, D)
            k = attn.k_proj(h).view(1, -1, self.num_kv_heads, self.head_dim).transpose(1, 2)  # (1, H_kv, N, D)
            v = attn.v_proj(h).view(1, -1, self.num_kv_heads, self.head_dim)  # (1, N, H_kv, D)
            if hasattr(attn, "q_norm"):  # Qwen3-style per-head norms before RoPE
                q, k = attn.q_norm(q), attn.k_norm(k)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
            self.cache.write(index, slots, k[0].transpose(0, 1), v[0])
            out = torch.empty(len(ids), self.num_heads * self.head_dim, dtype=q.dtype, device=dev)  # (N, H*D)
            for g in groups:
                q_g = q[0][:, g.rows].view(self.num_heads, g.size, -1, self.head_dim).transpose(0, 1)  # (B, H, L, D)
                o = paged_attention(q_g, self.cache.keys[index], self.cache.values[index], g.tables, g.starts,
                                    g.query_lens, g.starts + g.query_lens, block_size=bs,
                                    scale=getattr(attn, "scaling", None))
                out[g.rows] = o.transpose(1, 2).reshape(-1, self.num_heads * self.head_dim)
            x = x + attn.o_proj(out)[None]
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        x = self.backbone.norm(x)[0]  # (N, C)
        ends = torch.tensor(lens).cumsum(0).tolist()
        picked = [x[end - n:end] if c.all_logits else x[end - 1:end]
                  for c, n, end in zip(chunks, lens, ends, strict=True)]
        logits = self.model.lm_head(torch.cat(picked)).float()
        out, row = [], 0
        for c, n in zip(chunks, lens, strict=True):
            out.append(logits[row:row + n] if c.all_logits else logits[row])
            row += n if c.all_logits else 1
        return out


@dataclass(kw_only=True)
class _AttentionGroup:
    """Chunks of equal length attended in one call: every decode together, each longer chunk alone
    (padding a decode to a prefill chunk's length would multiply its attention work)."""

    rows: torch.Tensor  # flat token rows of the group's chunks, chunk by chunk
    size: int  # chunks in the group
    tables: torch.Tensor  # (size, blocks) block tables, padded with block 0 (masked out)
    starts: torch.Tensor  # (size,) tokens already cached per chunk
    query_lens: torch.Tensor  # (size,) new tokens per chunk


def _attention_groups(chunks: list[Chunk], lens: list[int], device: torch.device) -> list[_AttentionGroup]:
    offsets = torch.tensor([0, *lens]).cumsum(0).tolist()
    decodes = [i for i, n in enumerate(lens) if n == 1]
    members = ([decodes] if decodes else []) + [[i] for i, n in enumerate(lens) if n > 1]
    groups = []
    for group in members:
        width = max(len(chunks[i].block_table) for i in group)
        groups.append(_AttentionGroup(
            rows=torch.tensor([r for i in group for r in range(offsets[i], offsets[i + 1])], device=device),
            size=len(group),
            tables=torch.tensor([chunks[i].block_table + [0] * (width - len(chunks[i].block_table)) for i in group],
                                device=device),
            starts=torch.tensor([chunks[i].start for i in group], device=device),
            query_lens=torch.tensor([lens[i] for i in group], device=device)))
    return groups
