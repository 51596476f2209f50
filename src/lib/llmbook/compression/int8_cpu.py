"""Real int8 matrix multiplication on CPU: PyTorch's dynamically quantised linear layers (fbgemm / oneDNN kernels).

Fake quantisation computes in float; the speed of int8 comes from integer kernels. Dynamic quantisation
(Jacob et al. 2017, arXiv:1712.05877) stores each weight row as int8 with a scale ``s_w = max|w| / 127``
(per output channel here) and, at every call, quantises the activations on the fly: one uint8 scale and zero point
per input tensor from its min and max, ``x_q = round(x / s_x) + z_x``. The product is accumulated in int32 and
rescaled, ``y = s_x s_w (x_q - z_x) w_q^T + b``. On x86 the activations get 7 bits (``reduce_range``) so the
int16 intermediate sums of the VNNI-less kernels cannot saturate; that, not the weights, dominates the error.

Which API: PyTorch marks ``torch.ao.quantization.quantize_dynamic`` deprecated in favour of torchao's
``quantize_(model, Int8DynamicActivationInt8WeightConfig())``, but in torch 2.13 / torchao 0.18 on CPU the torchao
path runs in eager mode through a generic int-matmul (about 15x slower than float32 without ``torch.compile``),
while ``quantize_dynamic`` still calls the packed fbgemm/oneDNN int8 GEMM. :func:`dynamic_int8` therefore uses
``quantize_dynamic`` and silences only its two deprecation warnings.
"""

from __future__ import annotations

import copy
import statistics
import time
import warnings
from collections.abc import Iterable

import torch
from torch import nn
from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic

_DEPRECATIONS = (
    (DeprecationWarning, r"torch\.ao\.quantization is deprecated"),
    (UserWarning, r"torch\.quantize_per_tensor, torch\.quantize_per_channel"),
)


def dynamic_int8(model: nn.Module, *, per_channel: bool = True, keep_float: Iterable[str] = ()) -> nn.Module:
    """A copy of ``model`` whose ``nn.Linear`` layers run int8 GEMMs with dynamically quantised activations.

    ``per_channel``: one weight scale per output row (else one per tensor). ``keep_float``: names of linear layers
    (as in ``named_modules``, e.g. ``"lm_head"``) left in float32. ``model`` itself is not changed.
    """
    linears = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    if not linears:
        raise ValueError("dynamic_int8 found no nn.Linear layer to quantise in the model")
    for name, layer in linears.items():
        if layer.weight.device.type != "cpu" or layer.weight.dtype != torch.float32:
            raise ValueError(
                f"layer {name or '(root)'} is {layer.weight.dtype} on {layer.weight.device}: dynamic int8 runs on "
                "float32 CPU modules; call model.float().cpu() first"
            )
    keep = list(keep_float)
    tied = [name for name, layer in linears.items() if _is_tied_embedding(model, layer) and name not in keep]
    if tied:
        raise ValueError(
            f"{tied[0]} shares its weight with the input embedding (tied embeddings): an int8 copy would untie "
            f"them and store the matrix twice. Pass keep_float=({tied[0]!r},) to keep it in float32"
        )
    unknown = [n for n in keep if n not in linears]
    if unknown:
        raise ValueError(f"keep_float names {unknown} are not linear layers of the model; e.g. {list(linears)[:3]}")
    qconfig = per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig
    spec: dict[type[nn.Module] | str, object] = {nn.Linear: qconfig}
    spec.update({name: None for name in keep})  # a module name overrides its type: these stay float
    with warnings.catch_warnings():
        for category, message in _DEPRECATIONS:
            warnings.filterwarnings("ignore", message=message, category=category)
        return quantize_dynamic(copy.deepcopy(model), qconfig_spec=spec, dtype=torch.qint8)


def _is_tied_embedding(model: nn.Module, layer: nn.Linear) -> bool:
    """Whether ``layer`` is the output head of a model whose input embedding holds the same weight tensor."""
    get_input = getattr(model, "get_input_embeddings", None)
    embedding = get_input() if callable(get_input) else None
    return embedding is not None and layer.weight is embedding.weight


@torch.inference_mode()
def linear_latency(module: nn.Module, x: torch.Tensor, repeats: int = 20, warmup: int = 3) -> float:
    """Median wall-clock seconds of ``module(x)`` over ``repeats`` calls after ``warmup`` untimed ones."""
    if repeats < 1:
        raise ValueError(f"repeats={repeats}: time at least one call")
    for _ in range(warmup):
        module(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        module(x)
        times.append(time.perf_counter() - start)
    return statistics.median(times)
