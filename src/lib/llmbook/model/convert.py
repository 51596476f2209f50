"""Conversion between :class:`DecoderLM` and ``transformers.LlamaForCausalLM``, both ways.

The architectures are the same function, so conversion is a renaming of tensors plus a config
mapping. One wrinkle: a model trained with the *interleaved* RoPE layout is exported by
permuting the rows of its q/k projections into HF's half layout
(:func:`llmbook.positional.permute_qk_weight`), exactly as HF's script converts Meta checkpoints.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from llmbook.model.llama import DecoderLM, ModelConfig
from llmbook.positional import RopeConfig, permute_qk_weight

if TYPE_CHECKING:
    from transformers import LlamaConfig, LlamaForCausalLM

_HF_ACT = {"swiglu": "silu", "geglu": "gelu"}
_FROM_HF_ACT = {"silu": "swiglu", "gelu": "geglu"}

# ours -> HF, per layer ({i} = layer index); the non-layer names follow
LAYER_KEYS = {
    "layers.{i}.attn.q_proj.weight": "model.layers.{i}.self_attn.q_proj.weight",
    "layers.{i}.attn.k_proj.weight": "model.layers.{i}.self_attn.k_proj.weight",
    "layers.{i}.attn.v_proj.weight": "model.layers.{i}.self_attn.v_proj.weight",
    "layers.{i}.attn.o_proj.weight": "model.layers.{i}.self_attn.o_proj.weight",
    "layers.{i}.attn_norm.weight": "model.layers.{i}.input_layernorm.weight",
    "layers.{i}.mlp_norm.weight": "model.layers.{i}.post_attention_layernorm.weight",
    "layers.{i}.mlp.gate_proj.weight": "model.layers.{i}.mlp.gate_proj.weight",
    "layers.{i}.mlp.up_proj.weight": "model.layers.{i}.mlp.up_proj.weight",
    "layers.{i}.mlp.down_proj.weight": "model.layers.{i}.mlp.down_proj.weight",
}
GLOBAL_KEYS = {
    "embed_tokens.weight": "model.embed_tokens.weight",
    "norm.weight": "model.norm.weight",
    "lm_head.weight": "lm_head.weight",
}
_BIAS_KEYS = ("q_proj", "k_proj", "v_proj", "o_proj")


def key_map(cfg: ModelConfig) -> dict[str, str]:
    """Our state-dict name -> HF name for every tensor of a model with config ``cfg``."""
    out = dict(GLOBAL_KEYS)
    for i in range(cfg.n_layers):
        out.update({k.format(i=i): v.format(i=i) for k, v in LAYER_KEYS.items()})
        if cfg.attention_bias:
            out.update({f"layers.{i}.attn.{p}.bias": f"model.layers.{i}.self_attn.{p}.bias" for p in _BIAS_KEYS})
    return out


def _check_convertible(cfg: ModelConfig) -> None:
    problems = []
    if cfg.pos_encoding != "rope":
        problems.append(f"pos_encoding={cfg.pos_encoding!r} (Llama needs 'rope')")
    if cfg.activation not in _HF_ACT:
        problems.append(f"activation={cfg.activation!r} (Llama needs a gated MLP: 'swiglu' or 'geglu')")
    if cfg.norm_position != "pre":
        problems.append(f"norm_position={cfg.norm_position!r} (Llama is 'pre')")
    if cfg.moe is not None:
        problems.append("moe is set (Llama has dense MLPs)")
    if cfg.sliding_window is not None:
        problems.append("sliding_window is set (Llama attends to the full context)")
    if cfg.rope.scaling == "ntk":
        problems.append("rope.scaling='ntk' (no HF rope_type; use 'dynamic' or bake theta)")
    if problems:
        raise ValueError("config cannot be expressed as a LlamaConfig: " + "; ".join(problems))


def _rope_parameters(rope: RopeConfig) -> dict[str, Any]:
    params: dict[str, Any] = {"rope_type": rope.scaling, "rope_theta": float(rope.theta)}
    if rope.scaling != "default":
        params["factor"] = float(rope.factor)
    if rope.scaling in ("yarn", "llama3"):
        params["original_max_position_embeddings"] = rope.original_max_position_embeddings
    if rope.scaling == "yarn":
        params.update(beta_fast=rope.beta_fast, beta_slow=rope.beta_slow)
        if rope.attention_factor is not None:
            params["attention_factor"] = rope.attention_factor
    if rope.scaling == "llama3":
        params.update(low_freq_factor=rope.low_freq_factor, high_freq_factor=rope.high_freq_factor)
    return params


def to_hf_config(cfg: ModelConfig) -> LlamaConfig:
    """``ModelConfig`` -> ``transformers.LlamaConfig`` (raises ValueError for non-Llama choices)."""
    from transformers import LlamaConfig

    _check_convertible(cfg)
    max_pos = cfg.max_seq_len
    if cfg.rope.scaling == "dynamic":  # HF's dynamic NTK measures growth against max_position_embeddings
        max_pos = int(cfg.rope.original_max_position_embeddings)  # type: ignore[arg-type]
    return LlamaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.d_model,
        intermediate_size=cfg.hidden_dim,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads or cfg.n_heads,
        head_dim=cfg.resolved_head_dim,
        hidden_act=_HF_ACT[cfg.activation],
        max_position_embeddings=max_pos,
        rms_norm_eps=cfg.norm_eps,
        tie_word_embeddings=cfg.tie_embeddings,
        rope_parameters=_rope_parameters(cfg.rope),
        attention_bias=cfg.attention_bias,
        mlp_bias=False,
        initializer_range=cfg.init_std,
    )


def from_hf_config(hf: LlamaConfig, **overrides: Any) -> ModelConfig:
    """``transformers.LlamaConfig`` -> ``ModelConfig`` (half RoPE layout); ``overrides`` set other fields."""
    if hf.hidden_act not in _FROM_HF_ACT:
        raise ValueError(f"hidden_act must be one of {tuple(_FROM_HF_ACT)}, got {hf.hidden_act!r}")
    if getattr(hf, "mlp_bias", False):
        raise ValueError("mlp_bias=True is not supported (LLaMA MLPs have no bias)")
    rp = dict(hf.rope_parameters or {})
    scaling = rp.get("rope_type", "default")
    rope_kwargs: dict[str, Any] = {"theta": float(rp.get("rope_theta", 10000.0)), "scaling": scaling}
    for ours, theirs in [
        ("factor", "factor"),
        ("original_max_position_embeddings", "original_max_position_embeddings"),
        ("low_freq_factor", "low_freq_factor"),
        ("high_freq_factor", "high_freq_factor"),
        ("beta_fast", "beta_fast"),
        ("beta_slow", "beta_slow"),
        ("attention_factor", "attention_factor"),
    ]:
        if rp.get(theirs) is not None:
            rope_kwargs[ours] = rp[theirs]
    if scaling == "dynamic":
        rope_kwargs["original_max_position_embeddings"] = hf.max_position_embeddings
    kwargs: dict[str, Any] = dict(
        vocab_size=hf.vocab_size,
        d_model=hf.hidden_size,
        n_layers=hf.num_hidden_layers,
        n_heads=hf.num_attention_heads,
        n_kv_heads=hf.num_key_value_heads,
        head_dim=hf.head_dim,
        d_ff=hf.intermediate_size,
        max_seq_len=hf.max_position_embeddings,
        norm_eps=hf.rms_norm_eps,
        activation=_FROM_HF_ACT[hf.hidden_act],
        tie_embeddings=bool(hf.tie_word_embeddings),
        attention_bias=bool(hf.attention_bias),
        init_std=hf.initializer_range,
        rope=RopeConfig(**rope_kwargs),
    )
    kwargs.update(overrides)
    return ModelConfig(**kwargs)


def to_hf_state_dict(model: DecoderLM) -> dict[str, torch.Tensor]:
    """Our weights under HF names, q/k rows permuted to the half layout if needed."""
    cfg, sd = model.cfg, model.state_dict()
    out = {}
    for ours, theirs in key_map(cfg).items():
        if ours == "lm_head.weight" and cfg.tie_embeddings:
            continue  # HF re-ties lm_head to embed_tokens
        w = sd[ours]
        if cfg.rope.layout == "interleaved" and (".q_proj." in ours or ".k_proj." in ours):
            heads = cfg.n_heads if ".q_proj." in ours else (cfg.n_kv_heads or cfg.n_heads)
            w = permute_qk_weight(w, heads, to="half")
        out[theirs] = w.detach().clone()
    return out


def to_hf(model: DecoderLM) -> LlamaForCausalLM:
    """A ``LlamaForCausalLM`` computing the same function as ``model`` (fp32, eval mode)."""
    from transformers import LlamaForCausalLM

    hf = LlamaForCausalLM(to_hf_config(model.cfg))
    missing, unexpected = hf.load_state_dict(to_hf_state_dict(model), strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and model.cfg.tie_embeddings)]
    if missing or unexpected:
        raise RuntimeError(f"state-dict mismatch: missing {missing}, unexpected {unexpected}")
    if model.cfg.tie_embeddings:
        hf.tie_weights()
    return hf.to(next(model.parameters()).dtype).eval()


def from_hf(hf_model: LlamaForCausalLM, **overrides: Any) -> DecoderLM:
    """``LlamaForCausalLM`` -> :class:`DecoderLM` with copied weights (``overrides``: e.g. attn_impl)."""
    cfg = from_hf_config(hf_model.config, **overrides)
    if cfg.rope.layout != "half":
        raise ValueError("from_hf produces the half RoPE layout; convert afterwards with permute_qk_weight")
    model = DecoderLM(cfg)
    hf_sd = hf_model.state_dict()
    sd = {}
    for ours, theirs in key_map(cfg).items():
        if ours == "lm_head.weight" and cfg.tie_embeddings:
            continue
        sd[ours] = hf_sd[theirs]
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and cfg.tie_embeddings)]
    if missing or unexpected:
        raise RuntimeError(f"state-dict mismatch: missing {missing}, unexpected {unexpected}")
    return model.to(hf_model.dtype).eval()


def save_pretrained(model: DecoderLM, path: str | Path) -> Path:
    """Write ``config.json`` + ``model.safetensors`` that ``LlamaForCausalLM.from_pretrained`` loads.

    The book's own config is stored too (``llmbook_config.json``) so :func:`from_pretrained`
    restores non-HF fields such as the attention implementation, dropout or activation checkpointing.
    """
    path = Path(path)
    hf = to_hf(model)
    hf.save_pretrained(path, safe_serialization=True)
    (path / "llmbook_config.json").write_text(json.dumps(dataclasses.asdict(model.cfg), indent=2))
    return path


def from_pretrained(path: str | Path, **overrides: Any) -> DecoderLM:
    """Load a HF Llama checkpoint directory (safetensors) into a :class:`DecoderLM`.

    ``overrides`` replace config fields (e.g. ``attn_impl="eager"``, ``activation_checkpointing=False``).
    """
    from transformers import LlamaForCausalLM

    hf = LlamaForCausalLM.from_pretrained(Path(path), dtype=torch.float32)
    extra: dict[str, Any] = {}
    book_cfg = Path(path) / "llmbook_config.json"
    if book_cfg.exists():
        saved = json.loads(book_cfg.read_text())
        extra = {k: saved[k] for k in ("attn_impl", "dropout", "activation_checkpointing") if k in saved}
    extra.update(overrides)
    return from_hf(hf, **extra)
