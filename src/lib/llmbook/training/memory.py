"""Training memory: model states as formulas, activations by Korthikanti et al., the ZeRO per-GPU table.

Model states per parameter (mixed-precision Adam; Rajbhandari et al. 2020, ZeRO, arXiv:1910.02054)::

    bf16/fp16 weights 2 B + bf16/fp16 gradients 2 B + fp32 master weights, m, v 12 B = 16 B/param
    fp32 training:    weights 4 B + gradients 4 B + m, v 8 B                          = 16 B/param

ZeRO over ``N_d`` data-parallel GPUs shards them (Psi = parameter count)::

    stage 0 (DDP): 16 Psi            stage 1 (optimizer): 4 Psi + 12 Psi / N_d
    stage 2 (+ grads): 2 Psi + 14 Psi / N_d      stage 3 (+ weights): 16 Psi / N_d

Activations per transformer layer, 16-bit, no tensor/sequence parallelism (Korthikanti et al.
2022, arXiv:2205.05198, eq. 1 with t = 1; s sequence, b micro-batch, h hidden, a heads)::

    A_layer = s b h (34 + 5 a s / h)  bytes

The ``5 a s^2 b`` part is the attention score/softmax/dropout matrices; FlashAttention
(arXiv:2205.14135) never stores them, leaving ``34 s b h``. With full activation checkpointing
only each layer's input (``2 s b h`` bytes) is kept and one layer is recomputed at a time::

    A_total = L * 2 s b h + A_layer      (checkpointing)     A_total = L * A_layer (none)

The 34 is derived for a GPT block (4h GeLU MLP, dropout); for a LLaMA block (SwiGLU with
8/3 h, no dropout) it is an estimate, not an identity. Logits add ``s b V`` values (x 4 B when the
loss is computed in fp32).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode

GB = 1e9
T = TypeVar("T")


def model_state_bytes(n_params: int, *, mixed_precision: bool = True) -> dict[str, float]:
    """Bytes of weights, gradients and Adam states for ``n_params`` parameters (see module docstring)."""
    if mixed_precision:
        return {"params": 2.0 * n_params, "grads": 2.0 * n_params, "optimizer": 12.0 * n_params}
    return {"params": 4.0 * n_params, "grads": 4.0 * n_params, "optimizer": 8.0 * n_params}


def activation_bytes(
    *,
    seq_len: int,
    micro_batch: int,
    d_model: int,
    n_heads: int,
    n_layers: int,
    flash: bool = True,
    checkpointing: bool = False,
    bytes_per_value: int = 2,
) -> float:
    """Korthikanti et al.'s activation memory for the whole stack (bytes), scaled by ``bytes_per_value / 2``."""
    s, b, h, a = seq_len, micro_batch, d_model, n_heads
    per_layer = s * b * h * 34 + (0 if flash else 5 * a * s * s * b)
    total = n_layers * 2 * s * b * h + per_layer if checkpointing else n_layers * per_layer
    return total * bytes_per_value / 2


def measured_state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict[str, int]:
    """Bytes actually held by weights, ``.grad`` tensors and optimizer state tensors (shared tensors once)."""
    params = {id(p): p for p in model.parameters()}.values()
    out = {
        "params": sum(p.numel() * p.element_size() for p in params),
        "grads": sum(p.grad.numel() * p.grad.element_size() for p in params if p.grad is not None),
        "optimizer": 0,
        "optimizer_scalars": 0,
    }
    if optimizer is not None:
        for state in optimizer.state.values():
            for v in state.values():
                if isinstance(v, torch.Tensor):
                    key = "optimizer" if v.dim() > 0 else "optimizer_scalars"  # 0-d: step counters
                    out[key] += v.numel() * v.element_size()
    return out


class _LiveActivations(TorchDispatchMode):
    """Sees every aten op (forward, backward, recomputation); tracks storages created under grad mode."""

    def __init__(self, exclude: set[int]) -> None:
        super().__init__()
        self.exclude = exclude  # parameter storages: model states, not activations
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}  # data_ptr -> (weak ref, bytes)
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        self.live = {ptr: (ref, n) for ptr, (ref, n) in self.live.items() if not ref.expired()}
        if torch.is_grad_enabled():  # forward and recomputation; backward formulas run with grad off
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor):
                    storage = t.untyped_storage()
                    ptr = storage.data_ptr()
                    if storage.nbytes() > 0 and ptr not in self.exclude and ptr not in self.live:
                        self.live[ptr] = (StorageWeakRef(storage), storage.nbytes())
        self.peak = max(self.peak, sum(n for _, n in self.live.values()))
        return out


def measured_activation_bytes(model: nn.Module, input_ids: torch.Tensor, *, peak: bool = False) -> int:
    """Activation bytes of one forward + loss on ``input_ids``, measured (distinct storages counted once).

    ``peak=False``: bytes of the tensors autograd saves for backward, read by a
    ``saved_tensors_hooks`` pack hook. Parameters saved by reference (e.g. weights for the input
    gradient) are excluded: they are model states, not activations. Under non-reentrant activation
    checkpointing the checkpoint pushes its own, inner hooks, so the tensors saved inside a block
    never reach this hook and are dropped; the block input, which the checkpoint keeps to rerun the
    block, is saved through ``save_for_backward`` and is counted. (Checked against the live
    storages after the forward: equal up to the 4-byte loss and RoPE's cos/sin, which the
    checkpoint holds by closure.)

    ``peak=True``: the most activation bytes alive at any moment of forward, loss and backward
    (``torch.autograd.grad``, so ``.grad`` is left alone). This is what the checkpointed formula
    ``L * 2 s b h + A_layer`` counts: backward reruns one block at a time. Method: a
    ``TorchDispatchMode`` sees every aten op, the backward's and the recomputation's included;
    each storage an op outputs while grad mode is on (forward and recomputation; the autograd
    engine runs backward formulas with grad mode off, so gradients are not counted) is tracked
    by a weak reference, and after each op the bytes of those still alive are summed. Costs
    O(ops x live tensors): meant for small models.
    """
    param_ptrs = {p.untyped_storage().data_ptr() for p in model.parameters()}
    if peak:
        params = [p for p in model.parameters() if p.requires_grad]
        mode = _LiveActivations(param_ptrs)
        with mode:
            loss = model(input_ids, labels=input_ids).loss
            torch.autograd.grad(loss, params, allow_unused=True)  # an MoE expert may get no token
        return mode.peak
    loss, saved = saved_tensor_bytes(lambda: model(input_ids, labels=input_ids).loss, exclude=param_ptrs)
    del loss
    return saved


def saved_tensor_bytes(run: Callable[[], T], *, exclude: set[int]) -> tuple[T, int]:
    """``run()``'s result and the bytes of the distinct storages autograd saved for backward during it,
    read by a ``saved_tensors_hooks`` pack hook; storages whose ``data_ptr`` is in ``exclude`` (the
    model's own weights, saved by reference) are not activations and are left out."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in exclude:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        result = run()
    return result, sum(seen.values())


@dataclass(kw_only=True)
class ModelShape:
    """The sizes the memory formulas need (LLaMA-2 7B by default)."""

    n_params: int = 6_738_415_616  # Psi
    d_model: int = 4096  # h
    n_layers: int = 32  # L
    n_heads: int = 32  # a
    vocab_size: int = 32000  # V


LLAMA_SHAPES = {
    "1B": ModelShape(n_params=1_235_814_400, d_model=2048, n_layers=16, n_heads=32, vocab_size=128256),
    "7B": ModelShape(),
    "13B": ModelShape(n_params=13_015_864_320, d_model=5120, n_layers=40, n_heads=40),
    "70B": ModelShape(n_params=68_976_648_192, d_model=8192, n_layers=80, n_heads=64),
}


def zero_table(
    shape: ModelShape,
    *,
    n_gpus: int = 8,
    seq_len: int = 4096,
    micro_batch: int = 1,
    gpu_memory_gb: float = 80.0,
    flash: bool = True,
    checkpointing: bool = False,
) -> list[dict[str, float | int | bool | str]]:
    """Per-GPU memory (GB) of ZeRO stages 0-3 with mixed-precision Adam; one row per stage.

    Columns: stage, params/grads/optimizer/activations/logits/total in GB, fits (total <=
    ``gpu_memory_gb``). Activations are not sharded by ZeRO (each GPU holds its micro-batch's);
    buffers, fragmentation and the CUDA context (typically a few GB) are not counted.
    """
    if n_gpus < 1:
        raise ValueError(f"n_gpus must be >= 1, got {n_gpus}")
    psi, nd = shape.n_params, n_gpus
    states = {
        0: (2 * psi, 2 * psi, 12 * psi),
        1: (2 * psi, 2 * psi, 12 * psi / nd),
        2: (2 * psi, 2 * psi / nd, 12 * psi / nd),
        3: (2 * psi / nd, 2 * psi / nd, 12 * psi / nd),
    }
    act = activation_bytes(
        seq_len=seq_len,
        micro_batch=micro_batch,
        d_model=shape.d_model,
        n_heads=shape.n_heads,
        n_layers=shape.n_layers,
        flash=flash,
        checkpointing=checkpointing,
    )
    logits = seq_len * micro_batch * shape.vocab_size * (2 + 4)  # bf16 logits + fp32 copy for the loss
    rows = []
    for stage, (p, g, o) in states.items():
        total = p + g + o + act + logits
        rows.append(
            {
                "stage": stage,
                "params_gb": p / GB,
                "grads_gb": g / GB,
                "optimizer_gb": o / GB,
                "activations_gb": act / GB,
                "logits_gb": logits / GB,
                "total_gb": total / GB,
                "fits": total <= gpu_memory_gb * GB,
            }
        )
    return rows
