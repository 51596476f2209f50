"""Log-probabilities of a labelled sequence under a causal LM: the input every preference loss reads.

A causal LM's logits at position t are the distribution of token t + 1, so the log-probability of a
sequence's scored tokens is

    log π(y | x) = Σ_{t : labels[t+1] ≠ IGNORE} log softmax(logits[t])[labels[t+1]]

with ``log softmax(z)[y] = z_y - logsumexp(z)``. Labels are IGNORE (-100) on the prompt and the
padding, so the sum covers the answer only. DPO and KTO use the sum; SimPO and ORPO use the mean
over the answer's tokens (``average=True``), which removes the pull towards longer answers that the
sum has (Meng et al., arXiv 2405.14734).

The log-softmax is never materialised for the whole batch: ``logsumexp`` runs one sequence at a
time in float32, so the extra memory is one (T, V) row however large the batch (as trl's
``selective_log_softmax``, which these functions equal: tests/test_alignment_preference_losses.py).
"""

from __future__ import annotations

import torch

from llmbook.training.finetune import IGNORE


def token_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B, T, V) logits and (B, T) labels -> (B, T-1) log p(labels[:, t+1] | prefix); 0.0 where that label is IGNORE."""
    if logits.dim() != 3 or labels.dim() != 2 or logits.shape[:2] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} must be (B, T, V) and (B, T)")
    if labels.shape[1] < 2:
        raise ValueError("a sequence needs at least 2 positions: the logits at t score the label at t + 1")
    targets = labels[:, 1:]
    scored = targets != IGNORE
    index = targets.masked_fill(~scored, 0).unsqueeze(-1)  # any valid id: the value is zeroed below
    dtype = torch.promote_types(logits.dtype, torch.float32)  # bf16 logsumexp loses ~3 digits on a 50k vocabulary
    rows = []
    for row, idx in zip(logits[:, :-1], index):  # one (T-1, V) float32 temporary at a time
        row = row.to(dtype)
        rows.append(row.gather(-1, idx).squeeze(-1) - torch.logsumexp(row, dim=-1))
    return torch.stack(rows).masked_fill(~scored, 0.0)


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor, *, average: bool = False) -> torch.Tensor:
    """(B,) sum (``average=True``: mean) of the log-probabilities of each row's non-IGNORE target tokens."""
    per_token = token_logps(logits, labels)
    counts = (labels[:, 1:] != IGNORE).sum(dim=-1)
    empty = (counts == 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"rows {empty} have no target token (every label after the first is IGNORE): "
                         "their log-probability is undefined")
    total = per_token.sum(dim=-1)
    return total / counts if average else total


def labelled_token_logps(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(token (N,), scored (R, T-1))``: the log-probability of each labelled token of a right-padded batch
    (``input_ids``, ``attention_mask``, ``labels``) in row-major order, and where those tokens are.

    The output layer runs on the labelled positions only: with a 49k vocabulary it would otherwise cost more
    than the rest of a small model's forward pass on positions whose logits no loss reads.
    """
    targets = batch["labels"][:, 1:]
    scored = targets != IGNORE
    hidden = model.get_decoder()(input_ids=batch["input_ids"],
                                 attention_mask=batch["attention_mask"]).last_hidden_state[:, :-1]
    logits = model.get_output_embeddings()(hidden[scored]).float()  # (N, V)
    return logits.log_softmax(-1).gather(-1, targets[scored][:, None])[:, 0], scored
