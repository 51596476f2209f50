"""Put adapters into a model, switch them, merge them: the model-level half of ``llmbook.lora``.

Works on any ``nn.Module`` whose target layers are ``nn.Linear`` (or a quantised layer with
``in_features``/``out_features`` and ``weight_dequantized()``): the book's ``DecoderLM`` and
``transformers``' Llama models alike. Each target layer is replaced in place by an
:class:`AdaptedLinear` that keeps the original under ``base_layer``, so module paths stay the same
and checkpoints line up with peft's (``<path>.lora_A.weight``).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from llmbook.lora.adapters import AdaptedLinear, LoraAdapter, LoraConfig, VeraAdapter, VeraConfig, matches_target

AdapterConfig = LoraConfig | VeraConfig


def _is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or hasattr(module, "weight_dequantized")


def target_layers(model: nn.Module, targets: tuple[str, ...] | list[str] | str) -> dict[str, nn.Module]:
    """The linear layers whose path matches ``targets`` (already adapted layers count by their path)."""
    found = {}
    for name, module in model.named_modules():
        if isinstance(module, AdaptedLinear):
            if matches_target(name, targets):
                found[name] = module
        elif _is_linear(module) and matches_target(name, targets) and not name.endswith(".base_layer"):
            found[name] = module
    if not found:
        linears = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if _is_linear(m)})
        raise ValueError(f"target modules {targets!r} match no linear layer; this model's linear layers: {linears}")
    return found


def _replace(model: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, child = path.rpartition(".")
    setattr(model.get_submodule(parent_path) if parent_path else model, child, new)


def add_adapter(model: nn.Module, config: AdapterConfig, name: str = "default") -> list[str]:
    """Add adapter ``name`` to every target layer, make it active, freeze everything else; return the paths.

    Layers are visited in ``named_modules`` order, as peft does, so the same seed draws the same weights.
    """
    if not name or "." in name:
        raise ValueError(f"adapter name {name!r} must be non-empty and without '.' (it becomes a module name)")
    layers = target_layers(model, config.targets)
    # Every check before the first change: a refused adapter leaves the model as it was.
    if any(name in getattr(layer, "adapters", {}) for layer in layers.values()):
        raise ValueError(f"an adapter named {name!r} is already in this model: pick another name")
    if isinstance(config, VeraConfig) and config.r < 1:
        raise ValueError(f"VeRA rank r={config.r} must be at least 1")
    if isinstance(config, LoraConfig):
        for path, layer in layers.items():
            if not 1 <= config.r <= min(layer.in_features, layer.out_features):
                raise ValueError(
                    f"LoRA rank r={config.r} must be between 1 and min(in, out) = "
                    f"{min(layer.in_features, layer.out_features)} of {path} ({layer.in_features} -> "
                    f"{layer.out_features}): a larger rank adds parameters, not expressiveness"
                )
    shared = None
    if isinstance(config, VeraConfig):
        shared = VeraAdapter.shared_projections(
            config, max(m.in_features for m in layers.values()), max(m.out_features for m in layers.values())
        )
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    for path, layer in layers.items():
        if not isinstance(layer, AdaptedLinear):
            layer = AdaptedLinear(layer)
            _replace(model, path, layer)
        base = layer.base_layer
        adapter = VeraAdapter(base, config, shared) if shared is not None else LoraAdapter(base, config)
        layer.adapters[name] = adapter
    set_active_adapter(model, name)
    return list(layers)


def adapted_layers(model: nn.Module) -> dict[str, AdaptedLinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, AdaptedLinear)}


def adapter_names(model: nn.Module) -> list[str]:
    names: dict[str, None] = {}
    for layer in adapted_layers(model).values():
        names.update(dict.fromkeys(layer.adapters))
    return list(names)


def set_active_adapter(model: nn.Module, name: str | None) -> None:
    """Route every adapted layer through adapter ``name`` (None: the base model alone); only it trains."""
    if name is not None and name not in adapter_names(model):
        raise ValueError(f"no adapter named {name!r}; this model has {adapter_names(model)}")
    for layer in adapted_layers(model).values():
        if layer.merged is not None:
            raise ValueError(f"adapter {layer.merged!r} is merged: unmerge before switching")
        layer.active = name if name in layer.adapters else None
        for adapter_name, adapter in layer.adapters.items():
            for parameter in adapter.parameters():
                parameter.requires_grad_(adapter_name == name)


def merge_adapter(model: nn.Module) -> float:
    """Fold the active adapter into every base weight; the largest error left (0 unless a base is 4-bit)."""
    return max((layer.merge() for layer in adapted_layers(model).values() if layer.active), default=0.0)


def unmerge_adapter(model: nn.Module) -> None:
    for layer in adapted_layers(model).values():
        if layer.merged is not None:
            layer.unmerge()


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Merge the active adapter and put the plain base layers back: a model with no adapter code left."""
    for path, layer in adapted_layers(model).items():
        if layer.active is not None and layer.merged is None:
            layer.merge()
        _replace(model, path, layer.base_layer)
    return model


@dataclass(kw_only=True)
class ParameterCount:
    trainable: int
    total: int

    @property
    def percent(self) -> float:
        return 100.0 * self.trainable / self.total


def count_parameters(model: nn.Module) -> ParameterCount:
    """Trainable and total parameters (buffers such as VeRA's shared matrices and 4-bit codes not counted)."""
    parameters = list(model.parameters())
    return ParameterCount(
        trainable=sum(p.numel() for p in parameters if p.requires_grad), total=sum(p.numel() for p in parameters)
    )
