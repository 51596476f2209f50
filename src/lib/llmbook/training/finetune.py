"""Supervised fine-tuning of a chat model on (prompt, answer) pairs, with the loss on the answer only.

Each example is rendered with the tokenizer's chat template: the prompt as a user turn, then the
answer and the end-of-turn token as the assistant's reply. Labels are -100 (ignored) everywhere but
on the reply, so the model is trained to answer, not to re-write the question. Accuracy is the share
of held-out examples whose every reply token is the model's top choice given the tokens before it:
exactly the examples that greedy decoding would answer correctly.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from llmbook.progress import ProgressBar

IGNORE = -100  # the label cross-entropy skips


@dataclass(frozen=True, kw_only=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]  # IGNORE outside the reply


def encode_examples(tokenizer: Any, examples: Sequence[Any], *, max_len: int,
                    system: str | None = None) -> list[Encoded]:
    """Token ids and labels of each example (needs ``.prompt`` and ``.answer``); too long -> ValueError.

    ``system`` is a system turn put first (None: whatever the template adds by itself).
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the tokenizer has no chat template: fine-tuning renders examples as chat turns")
    head = [{"role": "system", "content": system}] if system is not None else []
    out = []
    for example in examples:
        prompt = tokenizer.apply_chat_template([*head, {"role": "user", "content": example.prompt}],
                                               add_generation_prompt=True, tokenize=False)
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        reply_ids = tokenizer(example.answer + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
        ids = prompt_ids + reply_ids
        if len(ids) > max_len:
            raise ValueError(f"an example has {len(ids)} tokens > max_len={max_len}: raise max_len or shorten it")
        out.append(Encoded(input_ids=ids, labels=[IGNORE] * len(prompt_ids) + reply_ids))
    return out


def collate(batch: Sequence[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example: (B, T) input_ids, attention_mask and labels."""
    width = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id)
    labels = torch.full((len(batch), width), IGNORE)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, e in enumerate(batch):
        n = len(e.input_ids)
        ids[row, :n], labels[row, :n], mask[row, :n] = torch.tensor(e.input_ids), torch.tensor(e.labels), 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def index_batches(n: int, batch_size: int, *, seed: int) -> Iterator[list[int]]:
    """Endless batches of indices into ``n`` examples: a new shuffled order each epoch, fixed by ``seed``."""
    if n < batch_size:  # no full batch: the loop below would never yield
        raise ValueError(f"{n} examples cannot fill a batch of {batch_size}")
    rng = random.Random(seed)
    order = list(range(n))
    while True:
        rng.shuffle(order)
        for start in range(0, n - batch_size + 1, batch_size):
            yield order[start:start + batch_size]


def batches(encoded: Sequence[Encoded], batch_size: int, pad_id: int, *, seed: int) -> Iterator[dict]:
    """Endless shuffled batches of ``encoded``, collated (see :func:`index_batches`)."""
    for index in index_batches(len(encoded), batch_size, seed=seed):
        yield collate([encoded[i] for i in index], pad_id)


def reply_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy over reply tokens, and per example whether every reply token was the argmax.

    The output layer runs on the reply positions only: with a 49k vocabulary it would otherwise cost a
    fifth of a small model's forward pass on positions whose logits no loss reads.
    """
    targets = batch["labels"][:, 1:]  # position t predicts token t + 1
    scored = targets != IGNORE  # (B, T-1)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    if hasattr(model, "get_decoder") and hasattr(model, "get_output_embeddings"):
        hidden = model.get_decoder()(**inputs).last_hidden_state[:, :-1]  # (B, T-1, C)
        logits = model.get_output_embeddings()(hidden[scored])  # (N, V), N = reply tokens in the batch
    else:
        logits = model(**inputs).logits[:, :-1][scored]
    chosen = targets[scored]
    loss = nn.functional.cross_entropy(logits.float(), chosen)
    correct = torch.ones(targets.shape[0], dtype=torch.bool, device=targets.device)
    correct[scored.nonzero()[:, 0][logits.argmax(-1) != chosen]] = False  # one wrong token fails its example
    return loss, correct


@torch.no_grad()
def evaluate_replies(model: nn.Module, encoded: Sequence[Encoded], *, batch_size: int, pad_id: int
                     ) -> dict[str, float]:
    """Held-out reply loss (token-weighted) and exact-match accuracy."""
    was_training = model.training
    model.eval()
    loss_sum, tokens, correct = 0.0, 0, 0
    device = next(model.parameters()).device
    for start in range(0, len(encoded), batch_size):
        batch = {k: v.to(device) for k, v in collate(encoded[start:start + batch_size], pad_id).items()}
        n = int((batch["labels"][:, 1:] != IGNORE).sum())
        loss, ok = reply_loss(model, batch)
        loss_sum, tokens, correct = loss_sum + loss.item() * n, tokens + n, correct + int(ok.sum())
    model.train(was_training)
    return {"loss": loss_sum / tokens, "accuracy": correct / len(encoded)}


def step_speed(times: Sequence[float], tokens: Sequence[int]) -> tuple[float, float]:
    """Median seconds per step and tokens per second; the first step (warm-up) is left out when there are others."""
    timed = slice(1, None) if len(times) > 1 else slice(None)
    return sorted(times[timed])[len(times[timed]) // 2], sum(tokens[timed]) / sum(times[timed])


@dataclass(kw_only=True)
class FinetuneResult:
    losses: list[float] = field(default_factory=list)  # training reply loss per step
    seconds_per_step: float = 0.0  # median wall time of a step (the first, warm-up, excluded)
    tokens_per_second: float = 0.0  # input tokens (padding included) per second, over the same steps


def finetune(model: nn.Module, encoded: Sequence[Encoded], optimizer: torch.optim.Optimizer, *, steps: int,
             batch_size: int, pad_id: int, seed: int, progress: str | None = None,
             on_step: Callable[[int], None] | None = None) -> FinetuneResult:
    """``steps`` AdamW-style steps on shuffled batches of ``encoded``; returns the loss curve and speed."""
    if len(encoded) < batch_size:
        raise ValueError(f"{len(encoded)} training examples cannot fill a batch of {batch_size}")
    device = next(model.parameters()).device
    model.train()
    result, times, tokens = FinetuneResult(), [], []
    stream = batches(encoded, batch_size, pad_id, seed=seed)
    with ProgressBar(total=steps, desc=progress, disable=progress is None) as bar:
        for step in range(steps):
            batch = {k: v.to(device) for k, v in next(stream).items()}
            started = time.perf_counter()
            loss, _ = reply_loss(model, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - started)
            tokens.append(batch["input_ids"].numel())
            result.losses.append(loss.item())
            if on_step is not None:
                on_step(step)
            bar.update(1)
    result.seconds_per_step, result.tokens_per_second = step_speed(times, tokens)
    model.eval()
    return result
