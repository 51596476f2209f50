"""A reward model: a language model's decoder with a scalar head, trained on preference pairs.

RLHF's second model (Ouyang et al. 2022, arXiv:2203.02155) reads a prompt and an answer and returns
one number. The head reads the decoder's hidden state at the sequence's last real token, where the
whole answer has been seen. It is trained with the Bradley–Terry model of pairwise preference:

    P(chosen > rejected) = σ(r(x, y_c) - r(x, y_r)),   loss = -log σ(r_c - r_r)

Only differences of rewards are defined, so the scale drifts; held-out pairwise accuracy (the share
of test pairs ranked the right way) is the number that says whether it learned anything. This is the
architecture of ``AutoModelForSequenceClassification(num_labels=1)`` that trl's RewardTrainer trains.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from llmbook.alignment.preference import EncodedPair, pair_batch
from llmbook.alignment.preference_losses import bradley_terry_loss
from llmbook.model.modes import eval_mode
from llmbook.progress import ProgressBar
from llmbook.training.finetune import index_batches


class RewardModel(nn.Module):
    """``decoder`` (a causal LM's body, copied) + a linear head to one scalar per sequence."""

    def __init__(self, causal_lm: nn.Module):
        super().__init__()
        self.decoder = copy.deepcopy(causal_lm.get_decoder())
        hidden = causal_lm.config.hidden_size
        self.head = nn.Linear(hidden, 1, bias=False, dtype=next(causal_lm.parameters()).dtype)
        nn.init.normal_(self.head.weight, std=1 / (hidden + 1) ** 0.5)  # as transformers' score head

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Right-padded ``(B, T)`` -> ``(B,)`` rewards."""
        hidden = self.decoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        last = attention_mask.sum(1) - 1  # index of each row's last real token
        return self.head(hidden[torch.arange(len(last), device=last.device), last]).squeeze(-1).float()


def score_pairs(model: RewardModel, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards of the chosen and of the rejected rows of a :func:`pair_batch`."""
    scores = model(batch["input_ids"], batch["attention_mask"])
    return scores.chunk(2)


@torch.no_grad()
def pairwise_accuracy(model: RewardModel, pairs: Sequence[EncodedPair], *, pad_id: int, batch_size: int = 8
                      ) -> list[bool]:
    """Per pair: whether the chosen answer gets the higher reward."""
    device = next(model.parameters()).device
    out: list[bool] = []
    with eval_mode(model):
        for start in range(0, len(pairs), batch_size):
            batch = {k: v.to(device) for k, v in pair_batch(pairs[start:start + batch_size], pad_id).items()}
            chosen, rejected = score_pairs(model, batch)
            out += (chosen > rejected).tolist()
    return out


@torch.no_grad()
def score_sequences(model: RewardModel, rows: Sequence[Sequence[int]], *, pad_id: int, batch_size: int = 16
                    ) -> torch.Tensor:
    """Rewards of whole token sequences (prompt + answer), e.g. a policy's rollouts."""
    device = next(model.parameters()).device
    out = []
    with eval_mode(model):
        for start in range(0, len(rows), batch_size):
            part = rows[start:start + batch_size]
            width = max(len(r) for r in part)
            ids = torch.full((len(part), width), pad_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for i, r in enumerate(part):
                ids[i, :len(r)], mask[i, :len(r)] = torch.tensor(list(r)), 1
            out.append(model(ids.to(device), mask.to(device)).cpu())
    return torch.cat(out)


@dataclass(kw_only=True)
class RewardRun:
    losses: list[float] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)  # training-batch pairwise accuracy per step


def train_reward_model(model: RewardModel, pairs: Sequence[EncodedPair], *, pad_id: int, steps: int,
                       batch_size: int, lr: float, seed: int, progress: str | None = None) -> RewardRun:
    """Bradley–Terry training on shuffled batches of ``pairs``."""
    if len(pairs) < batch_size:
        raise ValueError(f"{len(pairs)} pairs cannot fill a batch of {batch_size}")
    device = next(model.parameters()).device
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    stream = index_batches(len(pairs), batch_size, seed=seed)
    run = RewardRun()
    model.train()
    with ProgressBar(total=steps, desc=progress, disable=progress is None) as bar:
        for _ in range(steps):
            index = next(stream)
            batch = {k: v.to(device) for k, v in pair_batch([pairs[i] for i in index], pad_id).items()}
            chosen, rejected = score_pairs(model, batch)
            loss = bradley_terry_loss(chosen, rejected).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            run.losses.append(loss.item())
            run.accuracy.append((chosen > rejected).float().mean().item())
            bar.update(1)
    model.eval()
    return run
