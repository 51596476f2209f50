"""Rollouts: sampling completions of a batch of chat prompts from a Hugging Face causal LM.

Post-training samples constantly: preference pairs are built from the SFT model's own answers, GRPO
scores a group of answers per prompt at every step, and evaluation decodes the held-out split. This is
the decoding chapter's loop (``llmbook.decoding``: the same logit filters, applied in ``generate``'s
order) driven through a Hugging Face model's KV cache:

- prompts of different lengths are **left-padded**, so every row's next token sits in the last
  column; ``position_ids`` count real tokens only, so padding does not shift RoPE positions;
- the prompt is prefilled once, then each step feeds one token per row against the cache;
- a row that emitted the end-of-turn token is done; it is padded until every row is done.

With ``do_sample=False`` the tokens equal ``model.generate(do_sample=False)`` on the same left-padded
batch (tests/test_alignment_training.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from llmbook.decoding import SamplingConfig, process_logits
from llmbook.model.modes import eval_mode
from llmbook.progress import ProgressBar


@dataclass(frozen=True, kw_only=True)
class Rollouts:
    prompt_ids: list[list[int]]  # each prompt's tokens, unpadded
    completion_ids: list[list[int]]  # each completion's tokens, up to and including the end token if emitted
    texts: list[str]  # completions decoded without special tokens
    finished: list[bool]  # emitted the end token within max_new_tokens (False: cut off)


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` of shape (B, T), real tokens flush right."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(list(r), dtype=torch.long)
        mask[i, width - len(r):] = 1
    return ids, mask


def render_prompts(tokenizer: Any, prompts: Sequence[str], *, system: str | None = None) -> list[list[int]]:
    """Token ids of each user message rendered with the tokenizer's chat template, ready for the reply."""
    head = [{"role": "system", "content": system}] if system is not None else []
    out = []
    for prompt in prompts:
        text = tokenizer.apply_chat_template([*head, {"role": "user", "content": prompt}],
                                             add_generation_prompt=True, tokenize=False)
        out.append(tokenizer(text, add_special_tokens=False)["input_ids"])
    return out


@torch.no_grad()
def generate(model: Any, tokenizer: Any, prompt_ids: Sequence[Sequence[int]], *, max_new_tokens: int,
             do_sample: bool = True, cfg: SamplingConfig | None = None, batch_size: int = 16,
             generator: torch.Generator | None = None, progress: str | None = None) -> Rollouts:
    """One completion per prompt (repeat a prompt in ``prompt_ids`` to sample a group of answers);
    ``progress`` names a bar over the prompts (None: no bar)."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if any(len(p) == 0 for p in prompt_ids):
        raise ValueError("a prompt has no tokens")
    cfg = cfg or SamplingConfig()
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    device = next(model.parameters()).device
    completions: list[list[int]] = []
    finished: list[bool] = []
    with eval_mode(model), ProgressBar(total=len(prompt_ids), desc=progress, disable=progress is None) as bar:
        for start in range(0, len(prompt_ids), batch_size):
            rows = prompt_ids[start:start + batch_size]
            ids, mask = (t.to(device) for t in left_pad(rows, pad))
            out = _decode_batch(model, ids, mask, max_new_tokens, do_sample, cfg, eos, pad, generator)
            for row in out.tolist():
                cut = row.index(eos) + 1 if eos in row else len(row)
                completions.append(row[:cut])
                finished.append(eos in row)
            bar.update(len(rows))
    texts = tokenizer.batch_decode(completions, skip_special_tokens=True)
    return Rollouts(prompt_ids=[list(p) for p in prompt_ids], completion_ids=completions, texts=texts,
                    finished=finished)


def _decode_batch(model: Any, ids: torch.Tensor, mask: torch.Tensor, max_new_tokens: int, do_sample: bool,
                  cfg: SamplingConfig, eos: int, pad: int, generator: torch.Generator | None) -> torch.Tensor:
    """New tokens (B, n) of one left-padded batch, with the KV cache."""
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
    cache, context = out.past_key_values, ids
    unfinished = torch.ones(ids.shape[0], dtype=torch.bool, device=ids.device)
    new: list[torch.Tensor] = []
    logits = out.logits[:, -1].float()
    for step in range(max_new_tokens):
        logits = process_logits(logits, context, cfg)
        if do_sample:
            nxt = torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]
        else:
            nxt = logits.argmax(-1)
        nxt = torch.where(unfinished, nxt, torch.full_like(nxt, pad))
        unfinished &= nxt != eos
        new.append(nxt)
        context = torch.cat((context, nxt[:, None]), dim=1)
        if not bool(unfinished.any()) or step == max_new_tokens - 1:
            break
        mask = torch.cat((mask, torch.ones_like(mask[:, :1])), dim=1)
        positions = positions[:, -1:] + 1
        out = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=positions, past_key_values=cache,
                    use_cache=True)
        cache, logits = out.past_key_values, out.logits[:, -1].float()
    return torch.stack(new, dim=1)
