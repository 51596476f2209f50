"""A minimal training loop for the small ablation models of the attention chapter.

Next-token cross-entropy on random windows of a token stream, AdamW (Loshchilov & Hutter,
arXiv:1711.05101) with linear warm-up then cosine decay, gradient clipping. The full training
library (schedules, checkpoints, mixed precision, distributed) is :mod:`llmbook.training`; this one
exists so that chapters comparing architectures train every variant in exactly the same way.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

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


def lr_at(step: int, *, steps: int, lr: float, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to ``lr / 10`` at ``steps``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def train_steps(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    *,
    steps: int,
    lr: float,
    warmup: int | None = None,
    weight_decay: float = 0.1,
    grad_clip: float = 1.0,
    progress: bool = False,
    desc: str = "train",
) -> list[float]:
    """Train ``model`` (forward(input_ids, labels=...) -> .loss) for ``steps`` batches; return the losses.

    ``warmup`` defaults to 10 % of ``steps``. The model is left in eval mode.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if lr <= 0:
        raise ValueError(f"lr must be positive, got {lr}")
    warmup = max(1, steps // 10) if warmup is None else warmup
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and p.requires_grad]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2 and p.requires_grad]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr, betas=(0.9, 0.95),
    )
    device = next(model.parameters()).device
    iterator = iter(batches)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc=desc, leave=False)
    losses: list[float] = []
    model.train()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps=steps, lr=lr, warmup=warmup)
        x = next(iterator).to(device)
        loss = model(x, labels=x).loss
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at step {step}; lower lr (now {lr})")
        loss.backward()
        if grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
    if bar is not None:
        bar.close()
    model.eval()
    return losses


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
