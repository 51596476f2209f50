"""Scoring a policy on held-out prompts: greedy answers, their checkable rewards, and drift from the reference.

Accuracy is measured on greedy answers (what a user gets at temperature 0). Drift is the KL divergence
``KL(π || π_ref)`` estimated on the policy's own samples: the mean over sampled answers of
``log π(y|x) - log π_ref(y|x)`` summed over the answer's tokens (an unbiased Monte-Carlo estimate; the
per-token k3 estimator GRPO penalises is logged by the training loop).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from llmbook.alignment.grpo import completion_token_logps
from llmbook.alignment.rollouts import generate
from llmbook.decoding import SamplingConfig
from llmbook.evaluation.rewards import score_completions
from llmbook.evaluation.tasks import TaskExample
from llmbook.model.modes import eval_mode


@dataclass(frozen=True, kw_only=True)
class Answers:
    texts: list[str]
    completion_ids: list[list[int]]  # the answers' tokens, end-of-turn token included when emitted
    rewards: list[float]  # one per example, from the task's checker
    skipped: int  # answers the checker could not score (counted as 0)

    @property
    def lengths(self) -> list[int]:
        """Answer lengths in tokens."""
        return [len(c) for c in self.completion_ids]


def answer_greedily(model: nn.Module, tokenizer: Any, prompt_ids: Sequence[Sequence[int]],
                    examples: Sequence[TaskExample], reward: Callable[[str, TaskExample], float], *,
                    max_new_tokens: int, batch_size: int = 16, progress: str | None = None) -> Answers:
    """Greedy answers to every prompt and their rewards."""
    rollouts = generate(model, tokenizer, prompt_ids, max_new_tokens=max_new_tokens, do_sample=False,
                        batch_size=batch_size, progress=progress)
    scores = score_completions(reward, rollouts.texts, examples)
    return Answers(texts=rollouts.texts, completion_ids=rollouts.completion_ids, rewards=list(scores.values),
                   skipped=scores.skipped)


@torch.no_grad()
def kl_to_reference(policy: nn.Module, reference: nn.Module, tokenizer: Any, prompt_ids: Sequence[Sequence[int]], *,
                    max_new_tokens: int, seed: int, batch_size: int = 16) -> float:
    """Monte-Carlo ``KL(policy || reference)`` per answer, in nats, on one sample per prompt."""
    generator = torch.Generator(device=next(policy.parameters()).device).manual_seed(seed)
    rollouts = generate(policy, tokenizer, prompt_ids, max_new_tokens=max_new_tokens, cfg=SamplingConfig(),
                        generator=generator, batch_size=batch_size)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    total = 0.0
    with eval_mode(policy), eval_mode(reference):
        for start in range(0, len(prompt_ids), batch_size):
            part = slice(start, start + batch_size)
            args = (rollouts.prompt_ids[part], rollouts.completion_ids[part])
            logps, mask = completion_token_logps(policy, *args, pad_id=pad)
            ref_logps, _ = completion_token_logps(reference, *args, pad_id=pad)
            total += ((logps - ref_logps) * mask).sum().item()
    return total / len(prompt_ids)
