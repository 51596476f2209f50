"""Save and load adapters in PEFT's format: ``adapter_config.json`` + ``adapter_model.safetensors``.

Keys are ``base_model.model.<module path>.lora_A.weight`` (and ``.lora_B.weight``,
``.lora_magnitude_vector``, ``.vera_lambda_b``, ``.vera_lambda_d``, plus ``base_model.vera_A`` /
``base_model.vera_B`` once per VeRA adapter), so ``peft.PeftModel.from_pretrained`` reads what
:func:`save_adapter` writes and :func:`load_adapter` reads what peft saves.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from llmbook.lora.adapters import LoraAdapter, LoraConfig, VeraAdapter, VeraConfig
from llmbook.lora.inject import AdapterConfig, adapted_layers, add_adapter, target_layers

CONFIG_FILE, WEIGHTS_FILE = "adapter_config.json", "adapter_model.safetensors"
PREFIX = "base_model.model."


def _peft_config(config: AdapterConfig, base_model: str | None) -> dict:
    targets = config.targets if isinstance(config.targets, str) else sorted(config.targets)
    common = {"base_model_name_or_path": base_model, "task_type": "CAUSAL_LM", "target_modules": targets,
              "bias": "none", "fan_in_fan_out": False, "modules_to_save": None, "inference_mode": True}
    if isinstance(config, VeraConfig):
        return {**common, "peft_type": "VERA", "r": config.r, "d_initial": config.d_initial,
                "vera_dropout": config.dropout, "projection_prng_key": config.projection_seed,
                "save_projection": True, "init_weights": True}
    if config.init == "pissa":
        raise ValueError(
            "a PiSSA adapter belongs to the residual base it rewrote (W - s·B·A): save the merged model "
            "(merge_and_unload + save_pretrained) rather than the adapter alone"
        )
    return {**common, "peft_type": "LORA", "r": config.r, "lora_alpha": config.alpha,
            "lora_dropout": config.dropout, "use_rslora": config.rslora, "use_dora": config.dora,
            "init_lora_weights": True}


def adapter_config(directory: str | Path) -> AdapterConfig:
    """Our config for a PEFT adapter directory; a PEFT method other than LoRA/VeRA is refused by name."""
    raw = json.loads((Path(directory) / CONFIG_FILE).read_text())
    kind = raw.get("peft_type")
    targets = raw["target_modules"]
    targets = targets if isinstance(targets, str) else tuple(targets)
    if kind == "LORA":
        init = raw.get("init_lora_weights", True)
        if raw.get("bias", "none") != "none" or raw.get("modules_to_save") or raw.get("lora_bias"):
            raise ValueError("this adapter trains biases or whole modules as well: llmbook.lora loads plain LoRA only")
        if init not in (True, False, "gaussian"):
            raise ValueError(f"this adapter was initialised with {init!r}, which rewrites the base weights: "
                             "load it with peft, or save the merged model instead")
        return LoraConfig(r=raw["r"], alpha=raw["lora_alpha"], dropout=raw.get("lora_dropout", 0.0),
                          targets=targets, rslora=raw.get("use_rslora", False), dora=raw.get("use_dora", False))
    if kind == "VERA":
        return VeraConfig(r=raw["r"], d_initial=raw.get("d_initial", 0.1), dropout=raw.get("vera_dropout", 0.0),
                          targets=targets, projection_seed=raw.get("projection_prng_key", 0))
    raise ValueError(f"{directory}: peft_type {kind!r} is not supported here (LORA and VERA are)")


def adapter_state(model: nn.Module, name: str = "default") -> dict[str, torch.Tensor]:
    """Adapter ``name``'s tensors under PEFT's key names."""
    state: dict[str, torch.Tensor] = {}
    for path, layer in adapted_layers(model).items():
        if name not in layer.adapters:
            continue
        adapter = layer.adapters[name]
        if isinstance(adapter, VeraAdapter):
            state[f"{PREFIX}{path}.vera_lambda_b"] = adapter.vera_lambda_b
            state[f"{PREFIX}{path}.vera_lambda_d"] = adapter.vera_lambda_d
            state["base_model.vera_A"], state["base_model.vera_B"] = adapter.vera_A, adapter.vera_B
        else:
            state[f"{PREFIX}{path}.lora_A.weight"] = adapter.lora_A
            state[f"{PREFIX}{path}.lora_B.weight"] = adapter.lora_B
            if adapter.lora_magnitude_vector is not None:
                state[f"{PREFIX}{path}.lora_magnitude_vector"] = adapter.lora_magnitude_vector
    if not state:
        raise ValueError(f"no adapter named {name!r} in this model")
    return {key: value.detach().contiguous().clone() for key, value in state.items()}


def save_adapter(model: nn.Module, directory: str | Path, config: AdapterConfig, name: str = "default",
                 base_model: str | None = None) -> Path:
    """Write adapter ``name`` (created with ``config``) in PEFT's format; ``base_model`` names its base."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CONFIG_FILE).write_text(json.dumps(_peft_config(config, base_model), indent=2))
    save_file(adapter_state(model, name), directory / WEIGHTS_FILE, metadata={"format": "pt"})
    return directory


def load_adapter(model: nn.Module, directory: str | Path, name: str = "default",
                 base_model: str | None = None) -> AdapterConfig:
    """Add the adapter saved in ``directory`` (by peft or by :func:`save_adapter`) to ``model`` as ``name``.

    ``base_model``, when given, must equal the name the adapter was saved with; every tensor's shape
    must equal this model's layer shapes. A mismatch is one clear error, raised before the model changes.
    """
    directory = Path(directory)
    config = adapter_config(directory)
    saved_base = json.loads((directory / CONFIG_FILE).read_text()).get("base_model_name_or_path")
    if base_model and saved_base and base_model != saved_base:
        raise ValueError(f"adapter {directory} was trained on {saved_base!r}, not on {base_model!r}")
    saved = load_file(directory / WEIGHTS_FILE)
    expected = _expected_shapes(model, config)
    for key, shape in expected.items():
        if key not in saved:
            raise ValueError(f"adapter {directory} has no tensor {key}: it was saved for another model")
        if tuple(saved[key].shape) != shape:
            raise ValueError(f"adapter {directory}: {key} has shape {tuple(saved[key].shape)}, this model needs "
                             f"{shape}: the adapter was trained on a base with different layer sizes")
    add_adapter(model, config, name)
    with torch.no_grad():
        for path, layer in adapted_layers(model).items():
            adapter = layer.adapters[name] if name in layer.adapters else None
            if isinstance(adapter, LoraAdapter):
                adapter.lora_A.copy_(saved[f"{PREFIX}{path}.lora_A.weight"])
                adapter.lora_B.copy_(saved[f"{PREFIX}{path}.lora_B.weight"])
                if adapter.lora_magnitude_vector is not None:
                    adapter.lora_magnitude_vector.copy_(saved[f"{PREFIX}{path}.lora_magnitude_vector"])
            elif isinstance(adapter, VeraAdapter):
                adapter.vera_lambda_b.copy_(saved[f"{PREFIX}{path}.vera_lambda_b"])
                adapter.vera_lambda_d.copy_(saved[f"{PREFIX}{path}.vera_lambda_d"])
                if "base_model.vera_A" in saved:  # saved projections win over the seed's
                    adapter.vera_A.copy_(saved["base_model.vera_A"])
                    adapter.vera_B.copy_(saved["base_model.vera_B"])
    return config


def _expected_shapes(model: nn.Module, config: AdapterConfig) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for path, layer in target_layers(model, config.targets).items():
        out_f, in_f = layer.out_features, layer.in_features
        if isinstance(config, VeraConfig):
            shapes[f"{PREFIX}{path}.vera_lambda_b"] = (out_f,)
            shapes[f"{PREFIX}{path}.vera_lambda_d"] = (config.r,)
        else:
            shapes[f"{PREFIX}{path}.lora_A.weight"] = (config.r, in_f)
            shapes[f"{PREFIX}{path}.lora_B.weight"] = (out_f, config.r)
            if config.dora:
                shapes[f"{PREFIX}{path}.lora_magnitude_vector"] = (out_f,)
    return shapes
