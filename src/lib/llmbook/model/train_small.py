"""Data and evaluation for the small ablation models of the attention chapter.

Random windows of a token stream to train on (with :func:`llmbook.training.train_on_batches`, so
every variant an architecture chapter compares trains like the book's base model) and a plain
windowed evaluation loss.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn


def random_windows(
    tokens: torch.Tensor, *, batch_size: int, seq_len: int, seed: int = 0
) -> Iterator[torch.Tensor]:
    """Endless ``(B, T)`` batches of windows starting at uniformly random offsets of ``tokens (N,)``."""
    if tokens.dim() != 1:
        raise ValueError(f"tokens must be 1-D (N,), got shape {tuple(tokens.shape)}")
    if batch_size < 1 or seq_len < 2:
        raise ValueError(f"batch_size must be >= 1 and seq_len >= 2, got {batch_size}, {seq_len}")
    if tokens.numel() <= seq_len:
        raise ValueError(f"tokens ({tokens.numel()}) must be longer than seq_len ({seq_len})")
    gen = torch.Generator().manual_seed(seed)
    while True:
        starts = torch.randint(0, tokens.numel() - seq_len + 1, (batch_size,), generator=gen)
        yield torch.stack([tokens[s : s + seq_len] for s in starts.tolist()])  # (B, T)


@torch.no_grad()
def eval_loss(
    model: nn.Module, tokens: torch.Tensor, *, seq_len: int, batch_size: int = 8, max_windows: int | None = None
) -> float:
    """Mean next-token loss over non-overlapping ``seq_len`` windows of ``tokens (N,)`` (nats/token).

    Every window is scored from its own start, so a longer ``seq_len`` measures the model on longer
    contexts; ``exp`` of the result is the perplexity.
    """
    if tokens.dim() != 1:
        raise ValueError(f"tokens must be 1-D (N,), got shape {tuple(tokens.shape)}")
    n = tokens.numel() // seq_len
    if max_windows is not None:
        n = min(n, max_windows)
    if n < 1:
        raise ValueError(f"tokens ({tokens.numel()}) shorter than one window of seq_len={seq_len}")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    windows = tokens[: n * seq_len].view(n, seq_len)  # (N,) -> (n, T)
    total, count = 0.0, 0
    for i in range(0, n, batch_size):
        x = windows[i : i + batch_size].to(device)  # (B, T)
        loss = model(x, labels=x).loss
        tokens_scored = x.shape[0] * (seq_len - 1)
        total += loss.item() * tokens_scored
        count += tokens_scored
    model.train(was_training)
    return total / count
