"""The book's LLaMA-style decoder, its MoE variant and conversion to/from ``transformers``."""

from llmbook.model.convert import (
    from_hf,
    from_hf_config,
    from_pretrained,
    key_map,
    save_pretrained,
    to_hf,
    to_hf_config,
    to_hf_state_dict,
)
from llmbook.model.layers import FeedForward, RMSNorm, rms_norm
from llmbook.model.llama import DecoderBlock, DecoderLM, ModelConfig, ModelOutput, causal_lm_loss, seeded_model
from llmbook.model.modes import eval_mode
from llmbook.model.moe import MoEConfig, MoEFeedForward, load_balancing_loss, route

__all__ = [
    "DecoderBlock",
    "DecoderLM",
    "FeedForward",
    "MoEConfig",
    "MoEFeedForward",
    "ModelConfig",
    "ModelOutput",
    "RMSNorm",
    "causal_lm_loss",
    "eval_mode",
    "from_hf",
    "from_hf_config",
    "from_pretrained",
    "key_map",
    "load_balancing_loss",
    "rms_norm",
    "route",
    "save_pretrained",
    "seeded_model",
    "to_hf",
    "to_hf_config",
    "to_hf_state_dict",
]
