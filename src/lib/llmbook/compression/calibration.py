"""Calibration: what a linear layer's inputs look like, gathered block by block from a real model.

Post-training compression methods need more than the weights. GPTQ and SparseGPT use the layer-wise
Hessian ``H = 2 X^T X / N`` of the reconstruction loss ``||W X - W_hat X||^2``; Wanda scales each
weight by the input norm ``||X_j||_2``; AWQ by the mean magnitude ``mean |X_j|``; SmoothQuant and
LLM.int8() look at the largest magnitude ``max |X_j|``. :class:`LinearStats` accumulates all of them
in one pass over ``N`` calibration rows (tokens).

:func:`compress_sequentially` runs the standard pipeline of GPTQ (arXiv:2210.17323) and its
successors on a Hugging Face decoder: capture the inputs of the first block, then for each block in
turn gather its linears' statistics, compress the block, and feed the *compressed* block's outputs to
the next one, so later layers are calibrated on the activations they will really see.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from llmbook.progress import ProgressBar

MAX_SAMPLE_ROWS = 4096  # rows kept verbatim for searches that need real inputs (AWQ): 4096 x 576 floats is 9 MB


@dataclass(kw_only=True)
class LinearStats:
    """Running statistics of one linear layer's input ``x`` (rows = tokens, columns = in features)."""

    in_features: int
    max_sample_rows: int = MAX_SAMPLE_ROWS
    rows: int = 0  # N, tokens seen
    xtx: torch.Tensor = field(init=False)  # (in, in) float64: sum of x^T x, exact enough for a Cholesky
    abs_max: torch.Tensor = field(init=False)  # (in,) max |x_j|
    abs_sum: torch.Tensor = field(init=False)  # (in,) sum |x_j|
    sample: torch.Tensor = field(init=False)  # (S, in) float32: the first S <= max_sample_rows rows

    def __post_init__(self) -> None:
        self.xtx = torch.zeros(self.in_features, self.in_features, dtype=torch.float64)
        self.abs_max = torch.zeros(self.in_features)
        self.abs_sum = torch.zeros(self.in_features, dtype=torch.float64)
        self.sample = torch.zeros(0, self.in_features)

    def update(self, x: torch.Tensor) -> None:
        """Add a batch of inputs of any leading shape (..., in)."""
        x = x.detach().reshape(-1, self.in_features).float().cpu()  # (N_batch, in)
        x64 = x.double()
        self.xtx += x64.T @ x64
        self.abs_max = torch.maximum(self.abs_max, x.abs().amax(dim=0))
        self.abs_sum += x64.abs().sum(dim=0)
        room = self.max_sample_rows - self.sample.shape[0]
        if room > 0:
            self.sample = torch.cat([self.sample, x[:room]])
        self.rows += x.shape[0]

    @property
    def hessian(self) -> torch.Tensor:
        """``H = 2 X^T X / N`` (float64), the Hessian of the squared output error in the weights of one row."""
        return 2 * self.xtx / max(self.rows, 1)

    @property
    def abs_mean(self) -> torch.Tensor:
        """``mean |x_j|`` per input channel (float32)."""
        return (self.abs_sum / max(self.rows, 1)).float()

    @property
    def l2_norm(self) -> torch.Tensor:
        """``||X_j||_2`` per input channel over all N rows (float32): Wanda's activation norm."""
        return self.xtx.diagonal().clamp_min(0).sqrt().float()


def linear_layers(module: nn.Module) -> dict[str, nn.Linear]:
    """The ``nn.Linear`` submodules of ``module`` by qualified name, in registration order."""
    return {name: m for name, m in module.named_modules() if isinstance(m, nn.Linear)}


def decoder_blocks(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks of a Hugging Face causal LM (``model.model.layers`` for LLaMA-style models)."""
    inner = getattr(model, "model", None)
    blocks = getattr(inner, "layers", None)
    if not isinstance(blocks, nn.ModuleList):
        raise TypeError(f"{type(model).__name__}: expected a decoder with .model.layers (LLaMA-style)")
    return blocks


def decoder_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """The linear layers inside the decoder blocks, named ``"<block>.<path>"`` (e.g. ``"0.mlp.up_proj"``)."""
    return {f"{index}.{name}": module for index, block in enumerate(decoder_blocks(model))
            for name, module in linear_layers(block).items()}


class _Captured(Exception):
    """Raised by the hook on the first block: its inputs are all the pipeline needs from the model's stem."""


def first_block_inputs(model: nn.Module, batches: list[torch.Tensor]) -> list[tuple[tuple, dict[str, Any]]]:
    """``(args, kwargs)`` of the first decoder block for each batch of token ids (B, T): the embedded
    tokens plus whatever the model passes along (rotary ``position_embeddings``, attention mask)."""
    captured: list[tuple[tuple, dict[str, Any]]] = []

    def hook(_module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        captured.append((args, kwargs))
        raise _Captured

    handle = decoder_blocks(model)[0].register_forward_pre_hook(hook, with_kwargs=True)
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            for ids in batches:
                try:
                    model(ids.to(device), use_cache=False)  # a KV cache would grow each time a block is re-run
                except _Captured:
                    pass
    finally:
        handle.remove()
    return captured


def _block_output(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def block_stats(block: nn.Module, inputs: list[tuple[tuple, dict[str, Any]]]) -> dict[str, LinearStats]:
    """Run ``block`` on each recorded ``(args, kwargs)`` and return the input statistics of its linears by name."""
    layers = linear_layers(block)
    stats = {name: LinearStats(in_features=layer.in_features) for name, layer in layers.items()}
    previous: dict[str, Any] = {"input": None, "name": None}

    def record(name: str, x: torch.Tensor) -> None:
        if x is previous["input"]:  # the same tensor as the layer before (q, k, v; gate, up): same statistics
            stats[name] = stats[previous["name"]]
            return
        previous.update(input=x, name=name)
        stats[name].update(x)

    handles = [
        layer.register_forward_pre_hook(lambda _module, args, name=name: record(name, args[0]))
        for name, layer in layers.items()
    ]
    try:
        with torch.no_grad():
            for args, kwargs in inputs:
                block(*args, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    return stats  # layers that read the same input share one LinearStats object


def _refresh(stats: dict[str, LinearStats], block: nn.Module, inputs: list[tuple[tuple, dict[str, Any]]]) -> None:
    stats.clear()
    stats.update(block_stats(block, inputs))


def iterate_blocks(
    model: nn.Module, batches: list[torch.Tensor], *, progress: bool = False, desc: str = "blocks"
) -> Iterator[tuple[int, nn.Module, dict[str, LinearStats], Callable[[], None]]]:
    """Yield ``(index, block, stats, refresh)`` per decoder block, in order.

    ``stats`` holds the :class:`LinearStats` of every linear in the block, gathered on the block's inputs
    (the outputs of the blocks before it, as they stand when it is reached). After the caller has
    compressed the block in place, the generator runs it again to produce the next block's inputs.
    ``refresh()`` recomputes ``stats`` in place from the current block weights (for methods that compress a
    block in several stages, e.g. attention then MLP).
    """
    inputs = first_block_inputs(model, batches)
    blocks = decoder_blocks(model)
    bar = ProgressBar(total=len(blocks), desc=desc, disable=not progress)
    for index, block in enumerate(blocks):
        stats = block_stats(block, inputs)
        yield index, block, stats, functools.partial(_refresh, stats, block, inputs)
        with torch.no_grad():
            inputs = [((_block_output(block(*args, **kwargs)),) + args[1:], kwargs) for args, kwargs in inputs]
        bar.update(1)
    bar.close()


def compress_sequentially(
    model: nn.Module,
    batches: list[torch.Tensor],
    compress_linear: Callable[[str, nn.Linear, LinearStats], None],
    *,
    progress: bool = False,
    desc: str = "blocks",
) -> None:
    """Compress every linear inside the decoder blocks, block by block, with ``compress_linear(name,
    layer, stats)`` (it edits ``layer`` in place; ``name`` is qualified, e.g. ``"3.self_attn.q_proj"``).
    Embeddings and the output head are left alone."""
    for index, block, stats, _refresh in iterate_blocks(model, batches, progress=progress, desc=desc):
        for name, layer in linear_layers(block).items():
            compress_linear(f"{index}.{name}", layer, stats[name])


def sample_windows(
    token_ids: torch.Tensor, n: int, length: int, *, batch_size: int = 4, seed: int = 0
) -> list[torch.Tensor]:
    """``n`` random windows of ``length`` tokens from a 1-D token stream, as batches (B, T) for
    :func:`iterate_blocks` (GPTQ's recipe: random segments of the calibration text)."""
    if token_ids.dim() != 1 or token_ids.numel() < length + 1:
        raise ValueError(
            f"calibration text has {token_ids.numel()} tokens: windows of {length} need at least {length + 1}"
        )
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, token_ids.numel() - length, (n,), generator=generator)
    windows = torch.stack([token_ids[s : s + length] for s in starts.tolist()])  # (n, T)
    return list(windows.split(batch_size))
