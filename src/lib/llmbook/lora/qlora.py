"""QLoRA (Dettmers et al., arXiv 2305.14314): LoRA adapters on a base whose linear layers are NF4.

The frozen base is stored in 4 bits (NF4, blocks of 64, double-quantised block constants:
``llmbook.compression.nf4``); each forward dequantises a layer's weight to the compute dtype and the
adapters, kept in that dtype, are trained as usual. Gradients flow through the dequantised weights
to the adapters, never into the codes.
"""

from __future__ import annotations

from torch import nn

from llmbook.compression.nf4 import Nf4Linear
from llmbook.lora.adapters import AdaptedLinear, matches_target


def quantize_base(model: nn.Module, targets: tuple[str, ...] | list[str] | str, *, code: str = "nf4",
                  blocksize: int = 64, double_quant: bool = True) -> list[str]:
    """Replace every matching ``nn.Linear`` (not yet adapted) by a frozen 4-bit copy; return their paths.

    Call it before :func:`llmbook.lora.add_adapter`. ``lm_head`` and embeddings are left alone unless
    targeted, as QLoRA does.
    """
    paths = [name for name, module in model.named_modules()
             if isinstance(module, nn.Linear) and matches_target(name, targets)
             and not isinstance(model.get_submodule(name.rpartition(".")[0]) if "." in name else model, AdaptedLinear)]
    if not paths:
        raise ValueError(f"target modules {targets!r} match no nn.Linear to quantise")
    for path in paths:
        parent_path, _, child = path.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        linear = getattr(parent, child)
        setattr(parent, child, Nf4Linear.from_linear(linear, code=code, blocksize=blocksize,
                                                     double_quant=double_quant))
    return paths
