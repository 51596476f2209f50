"""RLHF's PPO: a policy, a learned value model, a frozen reference and a reward, one loop.

The recipe of Ziegler et al. 2019 (arXiv:1909.08593) and InstructGPT (Ouyang et al. 2022,
arXiv:2203.02155), with PPO's clipped updates (Schulman et al. 2017, arXiv:1707.06347). One step:

1. sample one answer to each of ``P`` prompts from the policy (:mod:`llmbook.alignment.rollouts`);
2. score each answer, ``R(x, y)``, with a :data:`~llmbook.alignment.grpo.Scorer` (checker or reward model);
3. without gradient: each answer token's log-probability under the policy (``log pi_old``) and the
   reference (``log pi_ref``), and the value model's ``V_old`` at every token;
4. KL-shaped rewards ``r_t = -beta (log pi_old - log pi_ref)_t`` plus ``R`` on the last token
   (:func:`~llmbook.alignment.rl.kl_shaped_rewards`), then GAE advantages and returns
   (:func:`~llmbook.alignment.rl.gae`), the advantages whitened over the batch's tokens;
5. ``ppo_epochs`` passes over the batch, each one AdamW step on the clipped surrogate for the policy and
   one on the clipped value loss for the value model (two optimizers, two learning rates);
6. the KL controller sees the batch's mean sequence KL ``sum_t (log pi_old - log pi_ref)_t`` (the k1
   estimate, nats) and adapts ``beta`` (:class:`~llmbook.alignment.rl.AdaptiveKLController`) or not.

Value convention: the value at completion token ``k`` is ``V(s_k)``, the value of the state *before*
token ``k`` is generated (prompt plus tokens ``< k``). It is read from the hidden state at the position
that predicts token ``k``, the same position whose logits give ``log pi(a_k | s_k)`` in
:func:`~llmbook.alignment.grpo.completion_token_logps`, so values and log-probabilities share one
``(B, L)`` layout and ``gae``'s ``delta_k = r_k + gamma V(s_{k+1}) - V(s_k)`` lines up.

Compared with GRPO (:mod:`llmbook.alignment.grpo`), PPO needs one answer per prompt instead of a group,
but trains a second network as large as the policy to provide the baseline.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from llmbook.alignment.grpo import Scorer, completion_batch, completion_token_logps
from llmbook.alignment.reward_model import RewardModel
from llmbook.alignment.rl import (
    AdaptiveKLController,
    FixedKLController,
    gae,
    kl_per_token,
    kl_shaped_rewards,
    masked_mean,
    masked_whiten,
    ppo_policy_loss,
    ppo_value_loss,
)
from llmbook.alignment.rollouts import generate
from llmbook.decoding import SamplingConfig
from llmbook.evaluation.tasks import TaskExample
from llmbook.progress import ProgressBar
from llmbook.training.finetune import step_speed


class ValueModel(RewardModel):
    """A reward model's architecture (copied decoder + linear head) read at every position, not the last.

    ``ValueModel(causal_lm)`` copies that model's decoder; its head starts random (as a reward model's), so
    its first values are noise the critic must unlearn. InstructGPT starts the value model from the reward
    model instead, whose outputs are already on the reward's scale.
    """

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Right-padded ``(B, T)`` -> ``(B, T)`` values, one per position (float32)."""
        hidden = self.decoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.head(hidden).squeeze(-1).float()


def values_of_completion(value_model: ValueModel, prompt_ids: Sequence[Sequence[int]],
                         completion_ids: Sequence[Sequence[int]], *, pad_id: int) -> torch.Tensor:
    """``(B, L)`` values aligned with :func:`completion_token_logps`: column ``k`` holds ``V`` of the state
    before completion token ``k`` (the output at position ``len(prompt) + k - 1``); 0 on padding."""
    device = next(value_model.parameters()).device
    batch = completion_batch(prompt_ids, completion_ids, pad_id=pad_id, device=device)
    values = value_model(batch["input_ids"], batch["attention_mask"])
    width = max(len(c) for c in completion_ids)
    starts = torch.tensor([len(p) - 1 for p in prompt_ids], device=device)  # position predicting token 0
    columns = torch.arange(width, device=device)
    mask = columns[None] < torch.tensor([len(c) for c in completion_ids], device=device)[:, None]
    index = (starts[:, None] + columns[None]).clamp(max=values.shape[1] - 1)  # padding reads any column
    return values.gather(1, index) * mask


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """``1 - Var(R - V) / Var(R)`` over the masked tokens: 1 for a perfect critic, 0 for a constant one,
    negative for one worse than predicting the mean return; NaN when the returns do not vary."""
    def var(x: torch.Tensor) -> torch.Tensor:
        return masked_mean((x - masked_mean(x, mask)) ** 2, mask)

    spread = var(returns)
    return float("nan") if spread == 0 else (1 - var(returns - values) / spread).item()


@dataclass(kw_only=True)
class PpoRun:
    scores: list[float] = field(default_factory=list)  # mean scorer reward R of the step's rollouts
    kl: list[float] = field(default_factory=list)  # mean sequence KL to the reference at rollout time (k1, nats)
    betas: list[float] = field(default_factory=list)  # the KL coefficient used for the step's rewards
    policy_losses: list[float] = field(default_factory=list)  # mean over the step's PPO epochs
    value_losses: list[float] = field(default_factory=list)  # mean over the step's PPO epochs
    clip_fractions: list[float] = field(default_factory=list)  # share of tokens with a clipped ratio, epoch mean
    explained_variance: list[float] = field(default_factory=list)  # of the returns by V_old (before the update)
    lengths: list[float] = field(default_factory=list)  # mean completion tokens
    seconds_per_step: float = 0.0  # median, rollouts + update, first step excluded
    tokens_per_second: float = 0.0  # answer tokens sampled and trained on per second


def _checked_scores(scores: Sequence[float]) -> torch.Tensor:
    out = torch.tensor([float(s) for s in scores])
    bad = int((~torch.isfinite(out)).sum())
    if bad:  # a NaN reward would turn every advantage, and then every weight, into NaN
        raise ValueError(f"{bad} of {len(out)} scores are NaN or infinite: wrap the reward with checker()")
    return out


def train_ppo(policy: nn.Module, value_model: ValueModel, reference: nn.Module, tokenizer: Any,
              prompt_ids: Sequence[Sequence[int]], examples: Sequence[TaskExample], scorer: Scorer, *,
              steps: int, prompts_per_step: int, max_new_tokens: int, lr: float, value_lr: float, seed: int,
              kl: FixedKLController | AdaptiveKLController, ppo_epochs: int = 2, clip_eps: float = 0.2,
              value_clip: float = 0.2, gamma: float = 1.0, lam: float = 0.95, temperature: float = 1.0,
              progress: str | None = None) -> PpoRun:
    """``steps`` PPO steps on ``examples`` (``prompt_ids[i]`` is example i's rendered prompt); ``kl`` is
    updated in place after every step."""
    if len(prompt_ids) != len(examples):
        raise ValueError(f"{len(prompt_ids)} prompts for {len(examples)} examples")
    if prompts_per_step > len(examples):
        raise ValueError(f"prompts_per_step={prompts_per_step} > {len(examples)} training examples")
    if ppo_epochs < 1:
        raise ValueError(f"ppo_epochs must be >= 1, got {ppo_epochs}")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    policy_optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=lr,
                                         weight_decay=0.0)
    value_optimizer = torch.optim.AdamW([p for p in value_model.parameters() if p.requires_grad], lr=value_lr,
                                        weight_decay=0.0)
    rng = random.Random(seed)
    generator = torch.Generator(device=next(policy.parameters()).device).manual_seed(seed)
    sampling = SamplingConfig(temperature=temperature)
    run, times, sampled = PpoRun(), [], []
    with ProgressBar(total=steps, desc=progress, disable=progress is None) as bar:
        for _ in range(steps):
            started = time.perf_counter()
            chosen = rng.sample(range(len(examples)), prompts_per_step)
            rollouts = generate(policy, tokenizer, [prompt_ids[i] for i in chosen], max_new_tokens=max_new_tokens,
                                cfg=sampling, generator=generator)
            scores = _checked_scores(scorer(rollouts, [examples[i] for i in chosen]))
            answers = (rollouts.prompt_ids, rollouts.completion_ids)
            with torch.no_grad():  # the rollout-time quantities are constants of this step's updates
                old_logps, mask = completion_token_logps(policy, *answers, pad_id=pad)
                ref_logps, _ = completion_token_logps(reference, *answers, pad_id=pad)
                old_values = values_of_completion(value_model, *answers, pad_id=pad)
            rewards = kl_shaped_rewards(scores.to(old_logps.device), old_logps, ref_logps, mask, beta=kl.beta)
            advantages, returns = gae(rewards, old_values, mask, gamma=gamma, lam=lam)
            advantages = masked_whiten(advantages, mask)
            policy.train()
            value_model.train()
            policy_losses, value_losses, clipped = [], [], []
            for _ in range(ppo_epochs):
                logps, _ = completion_token_logps(policy, *answers, pad_id=pad)
                policy_loss, clip_fraction = ppo_policy_loss(logps, old_logps, advantages, mask, clip_eps=clip_eps)
                values = values_of_completion(value_model, *answers, pad_id=pad)
                value_loss, _ = ppo_value_loss(values, old_values, returns, mask, clip=value_clip)
                for optimizer, loss in ((policy_optimizer, policy_loss), (value_optimizer, value_loss)):
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                policy_losses.append(policy_loss.item())
                value_losses.append(value_loss.item())
                clipped.append(clip_fraction.item())
            policy.eval()
            value_model.eval()
            sequence_kl = (kl_per_token(old_logps, ref_logps) * mask).sum(1).mean().item()
            run.betas.append(kl.beta)
            kl.update(sequence_kl, n_steps=prompts_per_step)
            times.append(time.perf_counter() - started)
            sampled.append(int(mask.sum()))
            run.scores.append(scores.mean().item())
            run.kl.append(sequence_kl)
            run.policy_losses.append(sum(policy_losses) / ppo_epochs)
            run.value_losses.append(sum(value_losses) / ppo_epochs)
            run.clip_fractions.append(sum(clipped) / ppo_epochs)
            run.explained_variance.append(explained_variance(old_values, returns, mask))
            run.lengths.append(mask.sum(1).mean().item())
            bar.update(1)
    run.seconds_per_step, run.tokens_per_second = step_speed(times, sampled)
    return run
