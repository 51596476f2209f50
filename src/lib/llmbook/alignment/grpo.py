"""GRPO: reinforcement learning from a reward that can be checked, with no value model.

Group Relative Policy Optimization (Shao et al. 2024, arXiv:2402.03300) replaces PPO's learned value
baseline with the group: each prompt is answered ``G`` times, and an answer's advantage is its reward
relative to its siblings' (:func:`llmbook.alignment.rl.group_advantages`). One step:

1. sample ``P`` prompts from the training split and ``G`` answers to each from the current policy
   (:mod:`llmbook.alignment.rollouts`, KV-cached, temperature 1);
2. score every answer with the reward function (a checker of the answer, or a reward model);
3. compute each answer token's log-probability under the policy (with gradient) and, when ``beta > 0``,
   under the frozen reference;
4. one gradient step on the clipped surrogate with the KL penalty (:func:`llmbook.alignment.rl.grpo_loss`).

A group whose answers all get the same reward has zero advantage everywhere and teaches nothing: the
share of such groups is logged, because it is what stalls GRPO on tasks a model finds too hard or too
easy (DAPO's "dynamic sampling", arXiv:2503.14476, resamples them).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from llmbook.alignment.logprobs import labelled_token_logps
from llmbook.alignment.rl import group_advantages, grpo_loss
from llmbook.alignment.rollouts import Rollouts, generate
from llmbook.decoding import SamplingConfig
from llmbook.evaluation.rewards import score_completions
from llmbook.evaluation.tasks import TaskExample
from llmbook.progress import ProgressBar
from llmbook.training.finetune import IGNORE, Encoded, collate, step_speed

# rollouts and the examples they answer -> one reward per rollout
Scorer = Callable[[Rollouts, Sequence[TaskExample]], Sequence[float]]


def checker(reward: Callable[[str, TaskExample], float]) -> Scorer:
    """A :data:`Scorer` from a per-answer reward function; a reward that raises or returns NaN scores 0
    and is counted (``checker.skipped``), never a NaN in the loss."""

    def score(rollouts: Rollouts, examples: Sequence[TaskExample]) -> list[float]:
        scores = score_completions(reward, rollouts.texts, examples)
        score.skipped += scores.skipped
        return scores.values

    score.skipped = 0
    return score


def completion_batch(prompt_ids: Sequence[Sequence[int]], completion_ids: Sequence[Sequence[int]], *, pad_id: int,
                     device: torch.device) -> dict[str, torch.Tensor]:
    """Right-padded prompt + completion rows with labels on the completion tokens, on ``device``."""
    rows = [Encoded(input_ids=list(p) + list(c), labels=[IGNORE] * len(p) + list(c))
            for p, c in zip(prompt_ids, completion_ids)]
    return {k: v.to(device) for k, v in collate(rows, pad_id).items()}


def completion_token_logps(model: nn.Module, prompt_ids: Sequence[Sequence[int]],
                           completion_ids: Sequence[Sequence[int]], *, pad_id: int
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logps, mask)``, both (B, L) with L the longest completion: each completion token's
    log-probability given its prompt and the tokens before it; mask 1 on real tokens."""
    device = next(model.parameters()).device
    batch = completion_batch(prompt_ids, completion_ids, pad_id=pad_id, device=device)
    token, scored = labelled_token_logps(model, batch)
    width = max(len(c) for c in completion_ids)
    row, column = scored.nonzero()[:, 0], (scored.cumsum(1) - 1)[scored]  # k-th scored token -> column k
    logps = torch.zeros((len(scored), width), device=device).index_put((row, column), token)
    mask = torch.zeros((len(scored), width), device=device).index_put((row, column), torch.ones_like(token))
    return logps, mask


@dataclass(kw_only=True)
class GrpoRun:
    rewards: list[float] = field(default_factory=list)  # mean reward of the step's rollouts
    tracked: dict[str, list[float]] = field(default_factory=dict)  # other scorers' means, not optimised
    losses: list[float] = field(default_factory=list)
    kl: list[float] = field(default_factory=list)  # mean per-token k3 KL to the reference (0 without one)
    flat_groups: list[float] = field(default_factory=list)  # share of groups with equal rewards (no signal)
    lengths: list[float] = field(default_factory=list)  # mean completion tokens
    seconds_per_step: float = 0.0  # median, rollouts + update, first step excluded
    tokens_per_second: float = 0.0  # answer tokens sampled and trained on per second


def train_grpo(policy: nn.Module, tokenizer: Any, prompt_ids: Sequence[Sequence[int]],
               examples: Sequence[TaskExample], scorer: Scorer, *, steps: int, prompts_per_step: int,
               group_size: int, max_new_tokens: int, lr: float, seed: int, beta: float = 0.0,
               reference: nn.Module | None = None, loss_type: str = "dapo", epsilon_low: float = 0.2,
               epsilon_high: float = 0.2, scale_rewards: str = "group", temperature: float = 1.0,
               tracked: dict[str, Scorer] | None = None, progress: str | None = None) -> GrpoRun:
    """``steps`` GRPO steps on ``examples`` (``prompt_ids[i]`` is example i's rendered prompt)."""
    if len(prompt_ids) != len(examples):
        raise ValueError(f"{len(prompt_ids)} prompts for {len(examples)} examples")
    if prompts_per_step > len(examples):
        raise ValueError(f"prompts_per_step={prompts_per_step} > {len(examples)} training examples")
    if beta > 0 and reference is None:
        raise ValueError("beta > 0 needs the reference model")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    rng = random.Random(seed)
    generator = torch.Generator(device=next(policy.parameters()).device).manual_seed(seed)
    sampling = SamplingConfig(temperature=temperature)
    run, times, sampled = GrpoRun(), [], []
    run.tracked = {name: [] for name in tracked or {}}
    with ProgressBar(total=steps, desc=progress, disable=progress is None) as bar:
        for _ in range(steps):
            started = time.perf_counter()
            chosen = rng.sample(range(len(examples)), prompts_per_step)
            group_prompts = [prompt_ids[i] for i in chosen for _ in range(group_size)]
            group_examples = [examples[i] for i in chosen for _ in range(group_size)]
            rollouts = generate(policy, tokenizer, group_prompts, max_new_tokens=max_new_tokens, cfg=sampling,
                                generator=generator)
            rewards = torch.tensor([float(r) for r in scorer(rollouts, group_examples)])
            for name, other in (tracked or {}).items():
                run.tracked[name].append(sum(other(rollouts, group_examples)) / len(rollouts.texts))
            advantages = group_advantages(rewards, group_size, scale_rewards=scale_rewards)
            policy.train()
            logps, mask = completion_token_logps(policy, rollouts.prompt_ids, rollouts.completion_ids, pad_id=pad)
            ref_logps = None
            if beta > 0:
                with torch.no_grad():
                    ref_logps, _ = completion_token_logps(reference, rollouts.prompt_ids, rollouts.completion_ids,
                                                          pad_id=pad)
            loss, stats = grpo_loss(logps, None, ref_logps, advantages.to(logps.device), mask, beta=beta,
                                    epsilon_low=epsilon_low, epsilon_high=epsilon_high, loss_type=loss_type,
                                    max_completion_length=max_new_tokens)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            policy.eval()
            times.append(time.perf_counter() - started)
            sampled.append(int(mask.sum()))
            run.rewards.append(rewards.mean().item())
            run.losses.append(loss.item())
            run.kl.append(float(stats.get("kl", 0.0)))
            run.flat_groups.append((rewards.view(-1, group_size).std(1) == 0).float().mean().item())
            run.lengths.append(mask.sum(1).mean().item())
            bar.update(1)
    run.seconds_per_step, run.tokens_per_second = step_speed(times, sampled)
    return run
