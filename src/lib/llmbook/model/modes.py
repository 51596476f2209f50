"""Train/eval mode switching that restores the caller's mode.

``nn.Module.eval()`` turns off dropout (and MoE capacity noise, batch-norm statistics updates) for
scoring and generation; a helper that flips a model to eval must hand it back in the mode it got
it, or a training loop that calls it silently continues without dropout.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``with eval_mode(model): ...`` runs the body in eval mode, then restores ``model.training``.

    The previous mode comes back even when the body raises. Gradients are not touched: combine with
    ``torch.no_grad()`` for inference.
    """
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
