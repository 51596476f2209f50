"""Long context: perplexity against context length, RoPE rescaling, passkey retrieval and its training data.

- Perplexity at ``k x`` the training length shows whether a position scheme *extrapolates*: a
  learned table has no vector for unseen positions; sinusoidal and RoPE meet angles they never
  trained on; ALiBi's linear bias is defined at every distance (Press et al., arXiv:2108.12409).
- :func:`with_rope` swaps a trained RoPE model's frequencies for a context-extension method
  (PI arXiv:2306.15595, NTK-aware, YaRN arXiv:2309.00071) without touching a weight, so the same
  model can be evaluated before and after a short fine-tune.
- Passkey retrieval (Mohtashami & Jaggi 2023, arXiv:2305.16300): a random number hidden in filler
  text must be reproduced at the end; accuracy against total length tests whether attention can
  *use* distant positions, which perplexity on natural text hardly requires. Decoy prompts, whose
  stated key is not the answer, measure what a model scores by guessing digits alone.

Perplexity here is ``exp`` of :func:`llmbook.training.loop.evaluate` over
:func:`llmbook.training.data.disjoint_windows`: every window is scored from its own start, so the
window length is the context length measured.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Iterator, Sequence
from typing import Protocol

import torch
from torch import nn

from llmbook.model import DecoderLM, eval_mode
from llmbook.positional import RopeConfig
from llmbook.training.data import disjoint_windows, random_windows
from llmbook.training.loop import evaluate

FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
KEY_TEMPLATE = "The pass key is {key}. "
QUESTION = "What is the pass key? The pass key is"


class Tokenizer(Protocol):
    def encode(self, text: str) -> list[int]: ...


def with_rope(model: DecoderLM, rope: RopeConfig) -> DecoderLM:
    """A copy of a RoPE ``model`` with other rotary frequencies (scaling method) and the same weights."""
    if model.cfg.pos_encoding != "rope":
        raise ValueError(f"model must use pos_encoding='rope', got {model.cfg.pos_encoding!r}")
    new = DecoderLM(dataclasses.replace(model.cfg, rope=rope)).to(next(model.parameters()).device)
    new.load_state_dict(model.state_dict())  # inv_freq is a non-persistent buffer: it stays the new one
    return new.eval()


def max_context(model: DecoderLM) -> int | None:
    """The longest input the model can represent at all (learned tables), else None (unbounded)."""
    return model.cfg.max_seq_len if model.cfg.pos_encoding == "learned" else None


def perplexity_vs_length(
    model: DecoderLM, tokens: torch.Tensor, lengths: Sequence[int], *, eval_tokens: int, batch_size: int = 8
) -> dict[int, float]:
    """``exp(mean loss)`` over ``eval_tokens`` tokens cut into windows of each length (NaN past a learned table)."""
    out: dict[int, float] = {}
    for t in lengths:
        limit = max_context(model)
        if limit is not None and t > limit:
            out[t] = math.nan  # no position vector exists for positions >= limit
            continue
        windows = max(1, eval_tokens // t)
        out[t] = evaluate(model, disjoint_windows(tokens, t, batch_size, max_windows=windows)).perplexity
    return out


def _answer(tokenizer: Tokenizer, key: str) -> list[int]:
    return tokenizer.encode(" " + key)  # tokenised exactly as after "The pass key is" in the key sentence


def passkey_example(
    tokenizer: Tokenizer, length: int, *, n_digits: int = 4, depth: float | None = None, rng: random.Random,
    decoy: bool = False,
) -> tuple[list[int], int, int]:
    """One passkey prompt of exactly ``length`` tokens: (ids, answer_start, answer_len).

    The key sentence sits at relative ``depth`` (random when None) inside repeated filler; the
    prompt ends with the question and the key's digits, which are the answer tokens. With ``decoy``
    the key sentence states another random key than the answer: the control prompt, which only a
    model that guesses digits (rather than reading the key) scores as well on.
    """
    key = "".join(rng.choice("0123456789") for _ in range(n_digits))
    stated = key
    while decoy and stated == key:  # drawn after the key, so decoy=False prompts are unchanged
        stated = "".join(rng.choice("0123456789") for _ in range(n_digits))
    key_ids = tokenizer.encode(KEY_TEMPLATE.format(key=stated))
    question = tokenizer.encode(QUESTION)
    answer = _answer(tokenizer, key)
    filler_unit = tokenizer.encode(FILLER)
    n_filler = length - len(key_ids) - len(question) - len(answer)
    if n_filler < 0:
        raise ValueError(
            f"length {length} is too short for a passkey prompt (needs at least {length - n_filler} tokens)"
        )
    filler = (filler_unit * (n_filler // len(filler_unit) + 1))[:n_filler]
    depth = rng.random() if depth is None else depth
    cut = int(round(depth * n_filler))
    ids = filler[:cut] + key_ids + filler[cut:] + question + answer
    return ids, len(ids) - len(answer), len(answer)


def passkey_batches(
    tokenizer: Tokenizer, *, batch_size: int, seq_len: int, n_digits: int = 4, seed: int = 0
) -> Iterator[torch.Tensor]:
    """Endless ``(B, T)`` batches of passkey prompts (answers included) to mix into training."""
    rng = random.Random(seed)
    while True:
        rows = [passkey_example(tokenizer, seq_len, n_digits=n_digits, rng=rng)[0] for _ in range(batch_size)]
        yield torch.tensor(rows)  # (B, T)


def mixed_batches(
    text: Iterator[torch.Tensor], extra: Iterator[torch.Tensor], fraction: float
) -> Iterator[torch.Tensor]:
    """Replace the first ``round(fraction * B)`` rows of every text batch with rows of ``extra``."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    for batch in text:
        k = round(fraction * batch.shape[0])
        if k:
            batch = torch.cat((next(extra)[:k], batch[k:]))  # (B, T)
        yield batch


def passkey_training_batches(
    tokens: torch.Tensor, tokenizer: Tokenizer, *, seq_len: int, batch_size: int, passkey_fraction: float,
    n_digits: int = 4, seed: int = 0,
) -> Iterator[torch.Tensor]:
    """Endless ``(B, T)`` training batches: random windows of ``tokens`` with a share of passkey prompts.

    The passkey rows teach the small models the retrieval task the chapter measures at longer lengths.
    """
    text = random_windows(tokens, batch_size=batch_size, seq_len=seq_len, seed=seed)
    keys = passkey_batches(tokenizer, batch_size=batch_size, seq_len=seq_len, n_digits=n_digits, seed=seed)
    return mixed_batches(text, keys, passkey_fraction)


@torch.no_grad()
def passkey_accuracy(
    model: nn.Module, tokenizer: Tokenizer, length: int, *, trials: int, n_digits: int = 4, seed: int = 0,
    batch_size: int = 8, decoy: bool = False,
) -> dict[str, float]:
    """Greedy (teacher-forced) retrieval: share of prompts whose every key token is the argmax, and per token.

    Returns ``{"key": exact-key accuracy, "token": accuracy per answer token}``. The model runs in
    eval mode and gets its mode back. ``decoy=True`` scores the control prompts (the stated key is
    not the answer, see :func:`passkey_example`): what a model gets right without reading the key.
    """
    rng = random.Random(seed)
    examples = [passkey_example(tokenizer, length, n_digits=n_digits, depth=(i + 0.5) / trials, rng=rng, decoy=decoy)
                for i in range(trials)]
    device = next(model.parameters()).device
    exact, digits, total = 0, 0, 0
    with eval_mode(model):
        for i in range(0, trials, batch_size):
            chunk = examples[i : i + batch_size]
            ids = torch.tensor([e[0] for e in chunk], device=device)  # (B, T)
            predicted = model(ids).logits.argmax(-1)  # (B, T): position t predicts token t + 1
            for row, (_, start, n) in enumerate(chunk):
                hit = predicted[row, start - 1 : start - 1 + n] == ids[row, start : start + n]  # (n,)
                exact += int(hit.all())
                digits += int(hit.sum())
                total += n
    return {"key": exact / trials, "token": digits / total}
