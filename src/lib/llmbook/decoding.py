"""Decoding: greedy, beam search and sampling with temperature, top-k, top-p, min-p, repetition penalty.

Logit filters (each a pure function ``(B, V) -> (B, V)``; removed tokens get ``-inf``):

- temperature:  ``z / tau`` (tau < 1 sharpens, > 1 flattens)
- top-k:        keep the k largest logits (Fan et al. 2018, arXiv:1805.04833)
- top-p:        keep the smallest set of most likely tokens whose probability sums to >= p
                (nucleus sampling; Holtzman et al. 2020, arXiv:1904.09751)
- min-p:        keep tokens with ``p_i >= min_p * max_j p_j`` (Nguyen et al. 2024, arXiv:2407.01082)
- repetition penalty: for tokens already in the context, ``z / theta`` if ``z > 0`` else ``z * theta``
                (Keskar et al. 2019, CTRL, arXiv:1909.05858)

They reproduce ``transformers``' ``TemperatureLogitsWarper``, ``TopKLogitsWarper``,
``TopPLogitsWarper``, ``MinPLogitsWarper`` and ``RepetitionPenaltyLogitsProcessor`` (ties and
``min_tokens_to_keep`` included), applied in the same order as ``generate``.

Beam search keeps the ``K`` best partial sequences by summed log-probability; a finished
hypothesis is scored ``sum log p / len^alpha`` (``alpha = length_penalty``; len counts generated
tokens). The bookkeeping follows ``transformers``' beam search exactly — 2K candidates per step so
K beams stay alive after some hit EOS, and its default stopping heuristic (``early_stopping=False``:
stop once the best running beam, scored at its current length, cannot beat the worst finished
one) — so the output tokens are the same (tests/test_decoding.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from llmbook.attention.core import KVCache
from llmbook.model.modes import eval_mode

# --------------------------------------------------------------------------- logit filters


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``logits / temperature``."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 (use greedy for 0), got {temperature}")
    return logits / temperature


def top_k_filter(logits: torch.Tensor, k: int, min_tokens_to_keep: int = 1) -> torch.Tensor:
    """Set every logit below the k-th largest to -inf (ties at the k-th value are kept)."""
    if k < 1:
        raise ValueError(f"top_k must be >= 1, got {k}")
    k = min(max(k, min_tokens_to_keep), logits.shape[-1])
    kth = torch.topk(logits, k).values[..., -1:]  # (B, 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float, min_tokens_to_keep: int = 1) -> torch.Tensor:
    """Nucleus: drop the least likely tokens whose cumulative probability (ascending) is <= 1 - p."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"top_p must be in [0, 1], got {p}")
    sorted_logits, sorted_idx = torch.sort(logits, descending=False)  # (B, V), least likely first
    cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove_sorted = cum <= (1 - p)
    remove_sorted[..., -min_tokens_to_keep:] = False  # always keep the most likely
    remove = remove_sorted.scatter(1, sorted_idx, remove_sorted)  # back to vocabulary order
    return logits.masked_fill(remove, float("-inf"))


def min_p_filter(logits: torch.Tensor, min_p: float, min_tokens_to_keep: int = 1) -> torch.Tensor:
    """Drop tokens whose probability is below ``min_p`` times the top token's probability."""
    if not 0.0 <= min_p <= 1.0:
        raise ValueError(f"min_p must be in [0, 1], got {min_p}")
    probs = logits.softmax(dim=-1)
    remove = probs < min_p * probs.amax(dim=-1, keepdim=True)
    keep = torch.topk(probs, min(min_tokens_to_keep, probs.shape[-1]), dim=-1).indices
    remove = remove.scatter(-1, keep, False)
    return logits.masked_fill(remove, float("-inf"))


def repetition_penalty(logits: torch.Tensor, context: torch.Tensor, penalty: float) -> torch.Tensor:
    """Penalise tokens present in ``context (B, T)``: positive logits / penalty, negative * penalty."""
    if penalty <= 0:
        raise ValueError(f"repetition_penalty must be > 0, got {penalty}")
    seen = logits.gather(1, context)  # (B, T) logits of the context tokens
    seen = torch.where(seen < 0, seen * penalty, seen / penalty)
    return logits.scatter(1, context, seen)


@dataclass(kw_only=True)
class SamplingConfig:
    """Sampling knobs; ``None`` or 1.0 switches a filter off (HF's defaults)."""

    temperature: float = 1.0  # tau
    top_k: int | None = None  # keep the k most likely tokens
    top_p: float | None = None  # nucleus mass
    min_p: float | None = None  # probability floor relative to the top token
    repetition_penalty: float = 1.0  # CTRL's theta; 1.0 = off
    min_tokens_to_keep: int = 1  # never filter below this many tokens


def process_logits(logits: torch.Tensor, context: torch.Tensor, cfg: SamplingConfig) -> torch.Tensor:
    """Apply ``cfg``'s filters in ``generate``'s order: repetition penalty, temperature, top-k, top-p, min-p."""
    if cfg.repetition_penalty != 1.0:
        logits = repetition_penalty(logits, context, cfg.repetition_penalty)
    if cfg.temperature != 1.0:
        logits = apply_temperature(logits, cfg.temperature)
    if cfg.top_k is not None and cfg.top_k != 0:
        logits = top_k_filter(logits, cfg.top_k, cfg.min_tokens_to_keep)
    if cfg.top_p is not None and cfg.top_p < 1.0:
        logits = top_p_filter(logits, cfg.top_p, cfg.min_tokens_to_keep)
    if cfg.min_p is not None:
        logits = min_p_filter(logits, cfg.min_p, cfg.min_tokens_to_keep)
    return logits


# --------------------------------------------------------------------------- decoding loops


def _next_logits(model: nn.Module, ids: torch.Tensor, cache: KVCache | None) -> torch.Tensor:
    return model(ids, kv_cache=cache).logits[:, -1].float()  # (B, V)


def _check(input_ids: torch.Tensor, max_new_tokens: int) -> None:
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must have shape (B, T), got {tuple(input_ids.shape)}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")


@torch.no_grad()
def sample(
    model: nn.Module,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    *,
    cfg: SamplingConfig | None = None,
    do_sample: bool = True,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
) -> torch.Tensor:
    """Autoregressive decoding; ``do_sample=False`` is greedy (argmax of the processed logits).

    Rows that produced ``eos_token_id`` are padded with ``pad_token_id`` (default: EOS) and the loop
    stops when all rows are done, as in ``transformers``. With ``use_cache`` the prompt is prefilled
    once and each step feeds one token against the KV cache; without it every step re-runs the whole
    sequence (same tokens, quadratic cost). Returns ``(B, T + n)``.
    """
    _check(input_ids, max_new_tokens)
    cfg = cfg or SamplingConfig()
    pad = pad_token_id if pad_token_id is not None else eos_token_id
    cache = KVCache() if use_cache else None
    out, step_ids = input_ids, input_ids
    unfinished = torch.ones(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
    with eval_mode(model):
        for _ in range(max_new_tokens):
            logits = process_logits(_next_logits(model, step_ids if use_cache else out, cache), out, cfg)  # (B, V)
            if do_sample:
                nxt = torch.multinomial(logits.softmax(dim=-1), 1, generator=generator)[:, 0]
            else:
                nxt = logits.argmax(dim=-1)
            if eos_token_id is not None:
                nxt = torch.where(unfinished, nxt, torch.full_like(nxt, pad))
                unfinished = unfinished & (nxt != eos_token_id)
            out = torch.cat((out, nxt[:, None]), dim=1)
            step_ids = nxt[:, None]
            if not bool(unfinished.any()):
                break
    return out


def greedy(
    model: nn.Module,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    *,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
    use_cache: bool = True,
) -> torch.Tensor:
    """Argmax decoding; equals ``generate(do_sample=False, num_beams=1)``.

    Rows that emitted ``eos_token_id`` continue with ``pad_token_id`` (default: EOS itself); decoding
    stops once every row is done.
    """
    return sample(
        model,
        input_ids,
        max_new_tokens,
        do_sample=False,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        use_cache=use_cache,
    )


def _gather(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Select beams: ``t (B, K, ...)`` indexed by ``idx (B, K')`` on dim 1."""
    while idx.dim() < t.dim():
        idx = idx.unsqueeze(-1)
    return torch.take_along_dim(t, idx, dim=1)


@torch.no_grad()
def beam_search(
    model: nn.Module,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    *,
    num_beams: int = 3,
    length_penalty: float = 1.0,
    early_stopping: bool | str = False,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
) -> torch.Tensor:
    """Best hypothesis per prompt, ``(B, T + n)`` with ``n <= max_new_tokens`` (shorter ones padded).

    ``early_stopping``: False = HF's heuristic (above), True = stop as soon as K hypotheses are
    finished, "never" = the canonical rule (stop only when no running beam can still win).
    """
    _check(input_ids, max_new_tokens)
    if num_beams < 1:
        raise ValueError(f"num_beams must be >= 1, got {num_beams}")
    if early_stopping not in (True, False, "never"):
        raise ValueError(f"early_stopping must be True, False or 'never', got {early_stopping!r}")
    dev = input_ids.device
    b, t0 = input_ids.shape
    k, max_len = num_beams, input_ids.shape[1] + max_new_tokens
    n_eos = 0 if eos_token_id is None else 1
    k2 = max(2, 1 + n_eos) * k  # candidates per step: enough that K stay alive if K end in EOS
    top_k_mask = torch.arange(k2, device=dev) < k  # only the K best candidates may finish
    fill = pad_token_id if pad_token_id is not None else (eos_token_id if eos_token_id is not None else -1)

    running = torch.full((b, k, max_len), fill, dtype=torch.long, device=dev)  # (B, K, T_max)
    running[:, :, :t0] = input_ids[:, None]
    finished = running.clone()
    running_scores = torch.zeros(b, k, device=dev)
    running_scores[:, 1:] = -1e9  # all beams start equal: let only the first expand at step 1
    finished_scores = torch.full((b, k), -1e9, device=dev)
    is_finished = torch.zeros(b, k, dtype=torch.bool, device=dev)
    improvable = torch.ones(b, 1, dtype=torch.bool, device=dev)
    running_src = torch.full((b, k, max_new_tokens), -1, dtype=torch.long, device=dev)  # beam ancestry
    finished_src = running_src.clone()

    with eval_mode(model):
        cache = KVCache()
        logits = _next_logits(model, input_ids.repeat_interleave(k, dim=0), cache)  # (B*K, V)
        cur = t0
        while True:
            v = logits.shape[-1]
            logp = F.log_softmax(logits, dim=-1).view(b, k, v) + running_scores[:, :, None]
            logp = logp.reshape(b, k * v)  # (B, K*V)
            cand_scores, cand_idx = torch.topk(logp, k2)  # (B, 2K)
            src = cand_idx // v  # which beam each candidate extends
            cand = _gather(running, src)  # (B, 2K, T_max)
            cand[:, :, cur] = cand_idx % v
            cand_src = _gather(running_src, src)
            cand_src[:, :, cur - t0] = src + torch.arange(b, device=dev)[:, None] * k  # flat row in the cache
            hits = torch.full_like(src, cur + 1 >= max_len, dtype=torch.bool)
            if eos_token_id is not None:
                hits = hits | (cand[:, :, cur] == eos_token_id)

            # the K best candidates that did not stop keep running
            alive_scores = cand_scores + hits.to(torch.float32) * -1.0e9
            keep = torch.topk(alive_scores, k).indices
            running, running_scores = _gather(cand, keep), _gather(alive_scores, keep)
            running_src = _gather(cand_src, keep)

            # candidates that stopped (among the top K) compete, length-normalised, for the finished set
            just_finished = hits & top_k_mask[None, :]
            fin = cand_scores / ((cur + 1 - t0) ** length_penalty)
            full_batch = torch.all(is_finished, dim=-1, keepdim=True) & (early_stopping is True)
            fin = fin + full_batch.to(torch.float32) * -1.0e9
            fin = fin + (~improvable).to(torch.float32) * -1.0e9
            fin = fin + (~just_finished) * -1.0e9
            merged_scores = torch.cat((finished_scores, fin), dim=1)
            best = torch.topk(merged_scores, k).indices
            finished = _gather(torch.cat((finished, cand), dim=1), best)
            finished_scores = _gather(merged_scores, best)
            finished_src = _gather(torch.cat((finished_src, cand_src), dim=1), best)
            is_finished = _gather(torch.cat((is_finished, just_finished), dim=1), best)

            rows = running_src[:, :, cur - t0].reshape(-1)  # (B*K,) cache rows the surviving beams came from
            cache.keys = [x.index_select(0, rows) for x in cache.keys]
            cache.values = [x.index_select(0, rows) for x in cache.values]
            cur += 1

            # can a running beam still beat the worst finished hypothesis?
            length = (max_len if early_stopping == "never" and length_penalty > 0.0 else cur) - t0
            best_running = running_scores[:, :1] / (length**length_penalty)
            worst_finished = torch.where(is_finished, finished_scores.min(dim=1, keepdim=True).values, -1.0e9)
            improvable = improvable & torch.any(best_running > worst_finished, dim=-1, keepdim=True)
            go_on = bool(improvable.any()) and not (bool(is_finished.all()) and early_stopping is True)
            if not go_on or bool(hits.all()):
                break
            logits = _next_logits(model, running[:, :, cur - 1].reshape(b * k, 1), cache)

    best_seq, best_src = finished[:, 0], finished_src[:, 0]  # (B, T_max), (B, n)
    n_gen = int((best_src >= 0).sum(dim=1).max())
    return best_seq[:, : t0 + n_gen]
