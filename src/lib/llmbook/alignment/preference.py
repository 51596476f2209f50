"""Training on preference pairs: (prompt, chosen answer, rejected answer) -> a policy that prefers chosen.

Every loss of the DPO family (:mod:`llmbook.alignment.preference_losses`) is a function of four numbers
per pair: the log-probability of the chosen and the rejected answer under the policy being trained and
under a frozen reference (the SFT model). This module turns pairs into those numbers and runs the loop:

- a pair is encoded as two sequences, ``prompt + chosen`` and ``prompt + rejected``, with labels on the
  answer tokens only; a batch stacks the chosen rows above the rejected rows (one forward pass);
- the reference's log-probabilities never change, so they are computed once before training and
  cached (what trl calls ``precompute_ref_log_probs``): the reference model can then be freed;
- the output layer runs on answer positions only (a 49k vocabulary over every prompt position would
  cost more than the rest of a small model's forward pass).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from llmbook.alignment import preference_losses as losses
from llmbook.alignment.logprobs import labelled_token_logps
from llmbook.model.modes import eval_mode
from llmbook.progress import ProgressBar
from llmbook.training.finetune import IGNORE, Encoded, collate, index_batches, step_speed

Method = Literal["dpo", "cdpo", "ipo", "simpo", "orpo", "kto"]
METHODS: tuple[str, ...] = ("dpo", "cdpo", "ipo", "simpo", "orpo", "kto")


@dataclass(frozen=True, kw_only=True)
class EncodedPair:
    prompt_ids: list[int]
    chosen_ids: list[int]  # answer tokens, end-of-turn token included
    rejected_ids: list[int]


def encode_pair(prompt_ids: Sequence[int], chosen_ids: Sequence[int], rejected_ids: Sequence[int], *,
                max_len: int) -> EncodedPair:
    """Check a pair and keep its ids; a pair whose answers are equal teaches nothing -> ValueError."""
    if list(chosen_ids) == list(rejected_ids):
        raise ValueError("chosen and rejected answers are identical: the pair carries no preference")
    if not chosen_ids or not rejected_ids:
        raise ValueError("a preference pair has an empty answer")
    longest = len(prompt_ids) + max(len(chosen_ids), len(rejected_ids))
    if longest > max_len:
        raise ValueError(f"a pair needs {longest} tokens > max_len={max_len}")
    return EncodedPair(prompt_ids=list(prompt_ids), chosen_ids=list(chosen_ids), rejected_ids=list(rejected_ids))


def _sequence(prompt: list[int], answer: list[int]) -> Encoded:
    return Encoded(input_ids=prompt + answer, labels=[IGNORE] * len(prompt) + answer)


def pair_batch(pairs: Sequence[EncodedPair], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded (2B, T) batch: rows 0..B-1 are prompt+chosen, rows B..2B-1 prompt+rejected."""
    rows = [_sequence(p.prompt_ids, p.chosen_ids) for p in pairs]
    rows += [_sequence(p.prompt_ids, p.rejected_ids) for p in pairs]
    return collate(rows, pad_id)


def completion_logps(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: summed and mean log-probability of the labelled tokens, ``(sum (R,), mean (R,))``."""
    token, scored = labelled_token_logps(model, batch)
    rows = scored.nonzero()[:, 0]
    counts = scored.sum(1)
    summed = torch.zeros(scored.shape[0], device=token.device).index_add(0, rows, token)
    return summed, summed / counts


def mismatched_batch(pairs: Sequence[EncodedPair], index: Sequence[int], pad_id: int) -> dict[str, torch.Tensor]:
    """Prompt i with the chosen answer of pair i + 1: KTO's estimate of the policy/reference KL reads
    answers that do not belong to their prompt, so it measures drift, not preference."""
    n = len(pairs)
    return collate([_sequence(pairs[i].prompt_ids, pairs[(i + 1) % n].chosen_ids) for i in index], pad_id)


@torch.no_grad()
def reference_logps(model: nn.Module, pairs: Sequence[EncodedPair], *, pad_id: int, batch_size: int = 8
                    ) -> torch.Tensor:
    """``(N, 3)`` summed log-probabilities of (chosen, rejected, mismatched) under the frozen reference,
    computed once; the third column is only read by KTO."""
    out = []
    device = next(model.parameters()).device
    with eval_mode(model):
        for start in range(0, len(pairs), batch_size):
            index = range(start, min(start + batch_size, len(pairs)))
            batch = {k: v.to(device) for k, v in pair_batch([pairs[i] for i in index], pad_id).items()}
            summed, _ = completion_logps(model, batch)
            kl_batch = {k: v.to(device) for k, v in mismatched_batch(pairs, index, pad_id).items()}
            mismatched, _ = completion_logps(model, kl_batch)
            out.append(torch.stack((*summed.chunk(2), mismatched), dim=1).cpu())
    return torch.cat(out)


def preference_loss(method: str, batch: dict[str, torch.Tensor], policy: nn.Module, ref: torch.Tensor | None, *,
                    beta: float, kl_batch: dict[str, torch.Tensor] | None = None) -> losses.PreferenceLoss:
    """The loss of ``method`` on a pair batch; ``ref`` holds the batch's rows of :func:`reference_logps`;
    KTO also needs ``kl_batch`` (:func:`mismatched_batch` of the same indices)."""
    summed, mean = completion_logps(policy, batch)
    chosen_sum, rejected_sum = summed.chunk(2)
    chosen_mean, rejected_mean = mean.chunk(2)
    if method == "simpo":  # length-normalised and reference-free (SimPO's beta is ~20x DPO's)
        return losses.simpo_loss(chosen_mean, rejected_mean, beta=beta)
    if method == "orpo":  # reference-free: the odds ratio rides on the chosen answer's SFT loss
        return losses.orpo_loss(chosen_mean, rejected_mean, -chosen_mean, beta=beta)
    if ref is None:
        raise ValueError(f"{method} needs the reference model's log-probabilities")
    ref = ref.to(summed.device)
    if method == "kto":
        if kl_batch is None:
            raise ValueError("kto needs kl_batch: the batch's prompts with mismatched answers")
        with torch.no_grad():
            policy_mismatched, _ = completion_logps(policy, kl_batch)
        kl = losses.kto_kl_estimate(policy_mismatched, ref[:, 2])
        return losses.kto_loss(chosen_sum, rejected_sum, ref[:, 0], ref[:, 1], kl, beta=beta)
    if method == "ipo":  # IPO regresses the per-token log-ratio margin to 1/(2 beta), as trl does
        n_chosen, n_rejected = (batch["labels"][:, 1:] != IGNORE).sum(1).chunk(2)
        return losses.dpo_loss(chosen_mean, rejected_mean, ref[:, 0] / n_chosen, ref[:, 1] / n_rejected, beta=beta,
                               loss_type="ipo")
    smoothing = 0.1 if method == "cdpo" else 0.0  # conservative DPO: 10 % of labels assumed flipped
    return losses.dpo_loss(chosen_sum, rejected_sum, ref[:, 0], ref[:, 1], beta=beta, label_smoothing=smoothing)


@dataclass(kw_only=True)
class PreferenceRun:
    method: str
    losses: list[float] = field(default_factory=list)  # per step
    reward_accuracy: list[float] = field(default_factory=list)  # share of pairs with chosen reward > rejected
    margins: list[float] = field(default_factory=list)  # mean chosen - rejected implicit reward
    seconds_per_step: float = 0.0  # median, first step excluded
    tokens_per_second: float = 0.0  # input tokens (padding included) per second


def train_preference(policy: nn.Module, pairs: Sequence[EncodedPair], *, method: str, ref: torch.Tensor | None,
                     pad_id: int, steps: int, batch_size: int, lr: float, beta: float, seed: int,
                     progress: str | None = None, on_step: Callable[[int, PreferenceRun], None] | None = None
                     ) -> PreferenceRun:
    """``steps`` AdamW steps of ``method`` on shuffled batches of ``pairs`` (``ref``: from reference_logps)."""
    if method not in METHODS:
        raise ValueError(f"unknown preference method {method!r}; allowed: {list(METHODS)}")
    if len(pairs) < batch_size:
        raise ValueError(f"{len(pairs)} pairs cannot fill a batch of {batch_size}")
    if ref is not None and len(ref) != len(pairs):
        raise ValueError(f"ref has {len(ref)} rows for {len(pairs)} pairs")
    device = next(policy.parameters()).device
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    stream = index_batches(len(pairs), batch_size, seed=seed)
    run, times, tokens = PreferenceRun(method=method), [], []
    policy.train()
    with ProgressBar(total=steps, desc=progress, disable=progress is None) as bar:
        for step in range(steps):
            index = next(stream)
            batch = {k: v.to(device) for k, v in pair_batch([pairs[i] for i in index], pad_id).items()}
            started = time.perf_counter()
            kl_batch = None
            if method == "kto":
                kl_batch = {k: v.to(device) for k, v in mismatched_batch(pairs, index, pad_id).items()}
            out = preference_loss(method, batch, policy, None if ref is None else ref[index], beta=beta,
                                  kl_batch=kl_batch)
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            optimizer.step()
            times.append(time.perf_counter() - started)
            tokens.append(batch["input_ids"].numel())
            run.losses.append(out.loss.item())
            run.reward_accuracy.append((out.chosen_rewards > out.rejected_rewards).float().mean().item())
            run.margins.append((out.chosen_rewards - out.rejected_rewards).mean().item())
            if on_step is not None:
                on_step(step, run)
            bar.update(1)
    run.seconds_per_step, run.tokens_per_second = step_speed(times, tokens)
    policy.eval()
    return run


def frozen_copy(model: nn.Module) -> nn.Module:
    """A detached, eval-mode copy (the reference model, or a snapshot to compare against)."""
    ref = copy.deepcopy(model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref
