"""Parameter-efficient fine-tuning from scratch: LoRA, rsLoRA, DoRA, PiSSA, VeRA, LoRA+, QLoRA on an
NF4 base, merging and adapter arithmetic, and PEFT's checkpoint format. Tested equal to ``peft``."""

from llmbook.lora.adapters import AdaptedLinear, LoraAdapter, LoraConfig, VeraAdapter, VeraConfig, matches_target
from llmbook.lora.checkpoint import adapter_config, adapter_state, load_adapter, save_adapter
from llmbook.lora.inject import (
    ParameterCount,
    adapted_layers,
    adapter_names,
    add_adapter,
    count_parameters,
    merge_adapter,
    merge_and_unload,
    set_active_adapter,
    target_layers,
    unmerge_adapter,
)

__all__ = [
    "AdaptedLinear", "LoraAdapter", "LoraConfig", "ParameterCount", "VeraAdapter", "VeraConfig",
    "adapted_layers", "adapter_config", "adapter_names", "adapter_state", "add_adapter", "count_parameters",
    "load_adapter", "matches_target", "merge_adapter", "merge_and_unload", "save_adapter", "set_active_adapter",
    "target_layers", "unmerge_adapter",
]
