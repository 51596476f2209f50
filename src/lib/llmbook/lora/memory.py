"""What fine-tuning holds in memory: measured on a real step, and on paper for 7B-70B models.

Training state per parameter (Adam keeps two moments per trainable parameter):

    bytes = N_total · b_weight + N_trainable · (b_grad + b_master + 8)

with ``b_master`` the fp32 master copy that mixed-precision training keeps (0 in plain fp32). Full
fine-tuning in bf16 mixed precision costs 2 + 2 + 4 + 8 = 16 bytes per parameter; LoRA keeps the
same base weights but trains ~1 % of the parameters; QLoRA (Dettmers et al., arXiv 2305.14314)
also stores the frozen base in NF4: 4 bits plus the double-quantised block constants
(8 bits per 64 weights, then 32 bits per 256 constants: 0.127 bits), about 0.52 bytes per parameter.
Activations come on top and grow with batch x sequence; :func:`measure_step` counts them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from llmbook.training.memory import measured_state_bytes, saved_tensor_bytes

ADAM_STATE_BYTES = 8  # two fp32 moments per trainable parameter
NF4_BYTES = (4 + 8 / 64 + 32 / (64 * 256)) / 8  # 4-bit codes + double-quantised absmax per parameter


@dataclass(kw_only=True)
class MemoryBreakdown:
    """Bytes of each kind of tensor a training step keeps."""

    weights: int
    gradients: int
    optimizer: int
    activations: int  # tensors autograd saved for backward (not counting the weights themselves)

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations


def measure_step(model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: Callable[[nn.Module], torch.Tensor]
                 ) -> MemoryBreakdown:
    """Run one optimizer step and count the bytes of every tensor it holds, by kind.

    Weights are the model's parameters and buffers (a 4-bit base's codes and scales are buffers);
    gradients and optimizer state as :func:`llmbook.training.memory.measured_state_bytes` counts them;
    activations are the distinct storages autograd saved for backward, less the weights. On a CPU the
    allocator keeps no peak counter, so this counts tensors; on a GPU compare with
    ``torch.cuda.max_memory_allocated``.
    """
    weights = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    for parameter in model.parameters():  # gradients left by earlier work are not this step's
        parameter.grad = None
    loss, activations = saved_tensor_bytes(lambda: loss_fn(model), exclude=weights)
    loss.backward()
    optimizer.step()
    states = measured_state_bytes(model, optimizer)
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    return MemoryBreakdown(weights=states["params"] + buffers, gradients=states["grads"],
                           optimizer=states["optimizer"], activations=activations)


def training_state_bytes(n_total: int, n_trainable: int, *, weight_bytes: float, grad_bytes: float | None = None,
                         master_bytes: float = 0.0, optimizer_bytes: float = ADAM_STATE_BYTES) -> float:
    """Weights + gradients + Adam state (+ master copy): the formula in the module docstring.

    ``optimizer_bytes`` is 8 for fp32 moments; ``torch.optim.AdamW`` on bf16 parameters keeps its
    moments in bf16 (4 bytes), which is why mixed-precision training keeps an fp32 master copy instead.
    """
    grad_bytes = weight_bytes if grad_bytes is None else grad_bytes
    return n_total * weight_bytes + n_trainable * (grad_bytes + master_bytes + optimizer_bytes)


@dataclass(frozen=True, kw_only=True)
class LlamaShape:
    """The sizes that fix a LLaMA-style model's linear layers (from each model's published config.json)."""

    d_model: int
    d_ff: int
    n_layers: int
    kv_dim: int  # n_kv_heads · head_dim: smaller than d_model under grouped-query attention
    vocab: int

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each projection in one block."""
        d, f, kv = self.d_model, self.d_ff, self.kv_dim
        return {"q_proj": (d, d), "k_proj": (d, kv), "v_proj": (d, kv), "o_proj": (d, d),
                "gate_proj": (d, f), "up_proj": (d, f), "down_proj": (f, d)}

    @property
    def n_params(self) -> int:
        block = sum(i * o for i, o in self.linear_shapes().values()) + 2 * self.d_model  # + two RMSNorms
        return self.n_layers * block + 2 * self.vocab * self.d_model + self.d_model  # untied embeddings

    def lora_params(self, r: int, targets: tuple[str, ...]) -> int:
        return self.n_layers * sum(r * (i + o) for name, (i, o) in self.linear_shapes().items() if name in targets)


LLAMA2 = {  # meta-llama/Llama-2-{7,13,70}b-hf config.json
    "Llama-2-7B": LlamaShape(d_model=4096, d_ff=11008, n_layers=32, kv_dim=4096, vocab=32000),
    "Llama-2-13B": LlamaShape(d_model=5120, d_ff=13824, n_layers=40, kv_dim=5120, vocab=32000),
    "Llama-2-70B": LlamaShape(d_model=8192, d_ff=28672, n_layers=80, kv_dim=1024, vocab=32000),
}
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def paper_memory(shape: LlamaShape, *, r: int = 16, targets: tuple[str, ...] = ALL_LINEAR) -> dict[str, float]:
    """GB of training state (no activations) for full fine-tuning, LoRA and QLoRA in bf16 mixed precision."""
    n, lora = shape.n_params, shape.lora_params(r, targets)
    gb = 1e9
    return {
        "full fine-tuning": training_state_bytes(n, n, weight_bytes=2, master_bytes=4) / gb,
        "LoRA": (training_state_bytes(n, 0, weight_bytes=2) + training_state_bytes(lora, lora, weight_bytes=2,
                                                                                     master_bytes=4)) / gb,
        "QLoRA": (n * NF4_BYTES + training_state_bytes(lora, lora, weight_bytes=2, master_bytes=4)) / gb,
    }
