"""The book's decoder-only language model, LLaMA-style (Touvron et al. 2023, arXiv:2302.13971).

    h_0 = E[x] (+ absolute position vectors, if chosen)
    h  = h + Attn(Norm(h))          pre-norm residual blocks (post-norm / sandwich selectable)
    h  = h + FFN(Norm(h))           SwiGLU by default, optionally MoE
    logits = W_out Norm(h_L)        W_out = E when embeddings are tied

with RMSNorm, RoPE on q/k and grouped-query attention. With the defaults the weights convert
one-to-one to ``transformers.LlamaForCausalLM`` (see :mod:`llmbook.model.convert`, which also saves
and loads checkpoints: ``save_pretrained(model, path)``, ``from_pretrained(path)``). Decoding
(greedy, sampling, beam search) lives in :mod:`llmbook.decoding`.

Initialisation (stated once): every Linear and Embedding weight ~ N(0, 0.02^2); the two residual
output projections of each block (attention ``o_proj``, MLP ``down_proj``) ~ N(0, (0.02/sqrt(2L))^2)
so the residual stream's variance does not grow with depth (GPT-2, Radford et al. 2019); biases 0,
RMSNorm gains 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from llmbook.attention.core import ATTN_IMPLS, AttentionConfig, AttnImpl, GroupedQueryAttention, KVCache
from llmbook.model.layers import ACTIVATIONS, Activation, FeedForward, RMSNorm
from llmbook.model.moe import MoEConfig, MoEFeedForward
from llmbook.positional import LearnedPositionalEmbedding, RopeConfig, RotaryEmbedding, alibi_bias, sinusoidal_embedding

PosEncoding = Literal["rope", "sinusoidal", "learned", "alibi", "none"]
POS_ENCODINGS = ("rope", "sinusoidal", "learned", "alibi", "none")
NormPosition = Literal["pre", "post", "sandwich"]
NORM_POSITIONS = ("pre", "post", "sandwich")


@dataclass(kw_only=True)
class ModelConfig:
    """Every size and switch of the decoder. Defaults are LLaMA's choices."""

    vocab_size: int  # V
    d_model: int = 256  # C, residual width
    n_layers: int = 4  # L
    n_heads: int = 4  # H query heads
    n_kv_heads: int | None = None  # Hkv; None = H (MHA), 1 = MQA, else GQA
    head_dim: int | None = None  # D; None = C / H
    d_ff: int | None = None  # MLP width; None = 8/3 C rounded up to 32 (gated) or 4 C (gelu)
    max_seq_len: int = 2048  # longest context (learned positions table; HF max_position_embeddings)
    norm_eps: float = 1e-6  # RMSNorm epsilon (HF rms_norm_eps)
    pos_encoding: PosEncoding = "rope"  # "rope", "sinusoidal", "learned", "alibi" or "none" (NoPE)
    rope: RopeConfig = field(default_factory=RopeConfig)  # theta, context-extension scaling, layout
    activation: Activation = "swiglu"  # "swiglu", "geglu" or plain "gelu"
    norm_position: NormPosition = "pre"  # "pre" (LLaMA), "post" (original Transformer), "sandwich"
    tie_embeddings: bool = False  # share the input embedding with the output head
    attn_impl: AttnImpl = "sdpa"  # "eager", "tiled" or "sdpa"
    sliding_window: int | None = None  # attend to the last `window` positions only (Mistral)
    attention_bias: bool = False  # biases in q/k/v/o
    dropout: float = 0.0  # residual and attention dropout (0 for LLM pretraining)
    init_std: float = 0.02  # std of the normal init
    moe: MoEConfig | None = None  # replace every dense MLP with a mixture of experts
    # recompute each block's activations in backward (Chen et al. 2016, arXiv:1604.06174): keeps only
    # block inputs, saving memory for ~one extra forward; training with grad only, never with a KV cache
    activation_checkpointing: bool = False

    def __post_init__(self) -> None:
        checks = {
            "pos_encoding": (self.pos_encoding, POS_ENCODINGS),
            "activation": (self.activation, ACTIVATIONS),
            "norm_position": (self.norm_position, NORM_POSITIONS),
            "attn_impl": (self.attn_impl, ATTN_IMPLS),
        }
        for name, (value, allowed) in checks.items():
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        if self.head_dim is None and self.d_model % self.n_heads != 0:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        kv = self.n_kv_heads or self.n_heads
        if self.n_heads % kv != 0:
            raise ValueError(f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({kv})")
        if self.pos_encoding == "alibi" and self.attn_impl == "tiled":
            raise ValueError("attn_impl='tiled' takes no dense bias; use 'eager' or 'sdpa' with pos_encoding='alibi'")
        if self.pos_encoding == "sinusoidal" and self.d_model % 2 != 0:
            raise ValueError(f"sinusoidal positions need an even d_model, got {self.d_model}")

    @property
    def hidden_dim(self) -> int:
        """Resolved MLP width."""
        if self.d_ff is not None:
            return self.d_ff
        if self.activation == "gelu":
            return 4 * self.d_model
        return 32 * math.ceil(8 * self.d_model / 3 / 32)

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim or self.d_model // self.n_heads


@dataclass
class ModelOutput:
    """What :meth:`DecoderLM.forward` returns."""

    logits: torch.Tensor  # (B, T, V)
    loss: torch.Tensor | None = None  # next-token cross-entropy (+ MoE aux) when labels are given
    aux_loss: torch.Tensor | None = None  # MoE load-balancing loss, summed over layers (unweighted)
    kv_cache: KVCache | None = None  # the cache passed in, now extended


class DecoderBlock(nn.Module):
    """Attention + MLP with residuals; the norm placement is the ablation knob."""

    def __init__(self, cfg: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx, self.norm_position = layer_idx, cfg.norm_position
        self.attn = GroupedQueryAttention(
            AttentionConfig(
                d_model=cfg.d_model,
                n_heads=cfg.n_heads,
                n_kv_heads=cfg.n_kv_heads,
                head_dim=cfg.head_dim,
                bias=cfg.attention_bias,
                impl=cfg.attn_impl,
                window=cfg.sliding_window,
                dropout=cfg.dropout,
                rope_layout=cfg.rope.layout,
            )
        )
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        if cfg.norm_position == "sandwich":  # extra norms on each sub-layer's output (CogView, Gemma 2)
            self.attn_out_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
            self.mlp_out_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp: nn.Module = (
            MoEFeedForward(cfg.d_model, cfg.hidden_dim, cfg.moe, cfg.activation)
            if cfg.moe is not None
            else FeedForward(cfg.d_model, cfg.hidden_dim, cfg.activation, bias=False)
        )
        self.dropout = nn.Dropout(cfg.dropout)

    def _mlp(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        out = self.mlp(x)
        return out if isinstance(out, tuple) else (out, None)

    def forward(self, h: torch.Tensor, **attn_kwargs: object) -> tuple[torch.Tensor, torch.Tensor | None]:
        attn = lambda x: self.dropout(self.attn(x, layer_idx=self.layer_idx, **attn_kwargs))  # noqa: E731
        if self.norm_position == "pre":
            h = h + attn(self.attn_norm(h))
            y, aux = self._mlp(self.mlp_norm(h))
            return h + self.dropout(y), aux
        if self.norm_position == "post":
            h = self.attn_norm(h + attn(h))
            y, aux = self._mlp(h)
            return self.mlp_norm(h + self.dropout(y)), aux
        h = h + self.attn_out_norm(attn(self.attn_norm(h)))  # sandwich
        y, aux = self._mlp(self.mlp_norm(h))
        return h + self.dropout(self.mlp_out_norm(y)), aux


class DecoderLM(nn.Module):
    """Decoder-only language model; ``forward(input_ids, attention_mask, kv_cache, labels)``.

    With ``cfg.activation_checkpointing`` a training forward with grad enabled and no KV cache runs
    each block under non-reentrant ``torch.utils.checkpoint`` (Chen et al. 2016, arXiv:1604.06174):
    autograd keeps only the block's input and backward reruns the block (same RNG state, so the
    same dropout masks) before differentiating it: ~one extra forward for O(L) less memory.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        if cfg.pos_encoding == "learned":
            self.pos_embed = LearnedPositionalEmbedding(cfg.max_seq_len, cfg.d_model)
        if cfg.pos_encoding == "rope":
            self.rotary = RotaryEmbedding(cfg.resolved_head_dim, cfg.rope)
        self.layers = nn.ModuleList(DecoderBlock(cfg, i) for i in range(cfg.n_layers))
        self.norm: nn.Module = RMSNorm(cfg.d_model, cfg.norm_eps) if cfg.norm_position != "post" else nn.Identity()
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.dropout = nn.Dropout(cfg.dropout)
        self.reset_parameters()
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """N(0, std) everywhere; residual output projections N(0, std / sqrt(2L)); norms 1, biases 0."""
        std = self.cfg.init_std
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                is_residual_out = name.endswith("o_proj") or name.endswith("down_proj")
                nn.init.normal_(module.weight, 0.0, std / math.sqrt(2 * self.cfg.n_layers) if is_residual_out else std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.Embedding, LearnedPositionalEmbedding)):
                nn.init.normal_(module.weight, 0.0, std)
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)

    def num_parameters(self, *, exclude_embeddings: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.embed_tokens.weight.numel() if exclude_embeddings else n

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
        labels: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> ModelOutput:
        """input_ids ``(B, T)``; attention_mask ``(B, T_past + T)`` 1 = token, 0 = padding (HF convention).

        Positions default to ``T_past + arange(T)``. Loss is HF's: logits at t predict labels at t+1,
        ``-100`` ignored, mean over the rest; MoE adds ``aux_loss_coef * aux``.
        """
        cfg = self.cfg
        b, t = input_ids.shape
        past = kv_cache.seq_len() if kv_cache is not None else 0
        if position_ids is None:
            position_ids = torch.arange(past, past + t, device=input_ids.device)  # (T,)
        if attention_mask is not None and attention_mask.shape != (b, past + t):
            raise ValueError(
                f"attention_mask must have shape (B, T_past + T) = {(b, past + t)}, got {tuple(attention_mask.shape)}"
            )
        h = self.embed_tokens(input_ids)  # (B, T, C)
        attn_kwargs: dict[str, object] = {"cache": kv_cache}
        if attention_mask is not None:
            attn_kwargs["key_padding_mask"] = attention_mask.bool()
        if cfg.pos_encoding == "rope":
            cos, sin = self.rotary(position_ids)  # (T, D) or (B, T, D)
            if cos.dim() == 3:
                cos, sin = cos[:, None], sin[:, None]  # (B, 1, T, D): broadcast over heads
            attn_kwargs["position_embeddings"] = (cos.to(h.dtype), sin.to(h.dtype))
        elif cfg.pos_encoding == "sinusoidal":
            h = h + sinusoidal_embedding(position_ids, cfg.d_model).to(h.dtype)
        elif cfg.pos_encoding == "learned":
            h = h + self.pos_embed(position_ids)
        elif cfg.pos_encoding == "alibi":
            k_pos = torch.arange(past + t, device=input_ids.device)
            attn_kwargs["bias"] = alibi_bias(cfg.n_heads, k_pos[past:], k_pos).to(h.dtype)  # (H, T, T_past + T)
        h = self.dropout(h)
        aux_total: torch.Tensor | None = None
        recompute = cfg.activation_checkpointing and self.training and torch.is_grad_enabled() and kv_cache is None
        for layer in self.layers:
            if recompute:  # keep only the block input; rerun the block (same RNG state) in backward
                h, aux = checkpoint(layer, h, use_reentrant=False, **attn_kwargs)
            else:
                h, aux = layer(h, **attn_kwargs)
            if aux is not None:
                aux_total = aux if aux_total is None else aux_total + aux
        logits = self.lm_head(self.norm(h))  # (B, T, V)
        loss = None
        if labels is not None:
            loss = causal_lm_loss(logits, labels)
            if aux_total is not None and cfg.moe is not None:
                loss = loss + cfg.moe.aux_loss_coef * aux_total
        return ModelOutput(logits=logits, loss=loss, aux_loss=aux_total, kv_cache=kv_cache)


def seeded_model(cfg: ModelConfig, seed: int, device: str | torch.device = "cpu") -> DecoderLM:
    """A fresh model whose weights come from ``torch.manual_seed(seed)``.

    Two calls with the same seed start from the same weights wherever their shapes agree, which is how
    the book compares variants (position encodings, norm placements) from one initialisation.
    """
    torch.manual_seed(seed)
    return DecoderLM(cfg).to(device)


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Mean cross-entropy of ``logits[:, t]`` against ``labels[:, t + 1]`` (HF's shift), fp32."""
    v = logits.shape[-1]
    # shift the labels left (pad the end with ignore_index) rather than slicing the big logits tensor
    targets = F.pad(labels[:, 1:], (0, 1), value=ignore_index)  # (B, T)
    return F.cross_entropy(logits.reshape(-1, v).float(), targets.reshape(-1), ignore_index=ignore_index)
