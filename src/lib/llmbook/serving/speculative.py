"""Speculative decoding: a cheap draft proposes k tokens, the target checks them all in one forward.

Leviathan et al. 2023 (arXiv:2211.17192) and Chen et al. 2023 (arXiv:2302.01318). With target
distributions ``p_0 .. p_k`` (one per position, from a single forward over the k drafts) and draft
distributions ``q_1 .. q_k``:

    accept x_i with probability min(1, p_i(x_i) / q_i(x_i)), in order;
    at the first rejection sample from  norm(max(0, p_i - q_i))  and stop;
    if all k are accepted, sample a bonus token from p_k.

Every emitted token is then distributed exactly as under ``p`` (the accepted part contributes
``min(p, q)``, the residual the rest), so the output follows the target whatever the draft; a good
draft only makes it faster: each target forward yields between 1 and k + 1 tokens. A deterministic
draft (prompt lookup) is ``q = one-hot``. Greedy verification (temperature 0) accepts while the draft
token is the target's argmax and then appends the target's argmax: the output is token-identical to
greedy decoding of the target alone.

Drafts: :class:`PromptLookupDraft` (n-gram lookup in the context, no model; Saxena 2023, as
``transformers``' ``prompt_lookup_num_tokens``), :class:`ModelDraft` (a smaller model with the same
tokenizer) and :func:`layer_skip_draft` (the target's first N blocks with its own norm and head, as in
LayerSkip, Elhoushi et al. 2024, arXiv:2404.16710, without the early-exit training).

Both loops keep a ``transformers.DynamicCache``: the target holds the KV of every token except the
last emitted one ("pending"), each round feeds ``pending + drafts`` and crops the rejected drafts'
entries afterwards with ``DynamicCache.crop``.
"""

from __future__ import annotations

import copy
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn
from transformers import DynamicCache

from llmbook.decoding import SamplingConfig, process_logits
from llmbook.model.modes import eval_mode

PROMPT_LOOKUP_MATCHES = ("latest", "first")

# --------------------------------------------------------------------------- verification (pure math)


def rejection_sample(
    target_probs: torch.Tensor,
    draft_probs: torch.Tensor | None,
    draft_tokens: torch.Tensor | list[int],
    generator: torch.Generator | None = None,
) -> tuple[list[int], int]:
    """Speculative sampling of one round: ``(emitted tokens, number of drafts accepted)``.

    ``target_probs (k+1, V)``: ``p_i`` for the position of draft ``i`` (row k: after the last draft);
    ``draft_probs (k, V)``: the ``q_i`` the drafts were sampled from, ``None`` for a deterministic
    draft (one-hot ``q``); ``draft_tokens (k,)``. Accept ``x_i`` with probability
    ``min(1, p_i(x_i) / q_i(x_i))``; at the first rejection sample from ``norm(max(0, p_i - q_i))``;
    after k acceptances sample a bonus token from ``p_k``. The emitted list is the accepted drafts plus
    that one extra token (arXiv:2211.17192, Algorithm 1).
    """
    tokens = [int(t) for t in draft_tokens]
    k = len(tokens)
    if target_probs.dim() != 2 or target_probs.shape[0] != k + 1:
        raise ValueError(f"target_probs must have shape (k+1, V) = ({k + 1}, V), got {tuple(target_probs.shape)}")
    if draft_probs is not None and tuple(draft_probs.shape) != (k, target_probs.shape[1]):
        raise ValueError(f"draft_probs must have shape (k, V) = ({k}, {target_probs.shape[1]}), "
                         f"got {tuple(draft_probs.shape)}")
    p = target_probs.float()
    for i, x in enumerate(tokens):
        q_row = _one_hot(x, p.shape[1]) if draft_probs is None else draft_probs[i].float()
        p_x, q_x = float(p[i, x]), float(q_row[x])
        if float(torch.rand((), generator=generator)) * q_x < p_x:  # u < p/q, without dividing by q = 0
            continue
        residual = (p[i] - q_row).clamp_min(0.0)  # (V,) the mass p has and q lacks
        if residual.sum() <= 0:  # p == q up to rounding: the residual is empty, p itself is the answer
            residual = p[i]
        y = int(torch.multinomial(residual / residual.sum(), 1, generator=generator))
        return tokens[:i] + [y], i
    bonus = int(torch.multinomial(p[k], 1, generator=generator))
    return tokens + [bonus], k


def greedy_verify(target_logits: torch.Tensor, draft_tokens: torch.Tensor | list[int]) -> tuple[list[int], int]:
    """Greedy verification: accept while draft ``x_i == argmax p_i``, then append the target's argmax.

    ``target_logits (k+1, V)`` (logits or probabilities: only the argmax matters). Returns
    ``(emitted tokens, number accepted)`` like :func:`rejection_sample`.
    """
    tokens = [int(t) for t in draft_tokens]
    if target_logits.dim() != 2 or target_logits.shape[0] != len(tokens) + 1:
        raise ValueError(f"target_logits must have shape (k+1, V) = ({len(tokens) + 1}, V), "
                         f"got {tuple(target_logits.shape)}")
    best = target_logits.argmax(dim=-1).tolist()  # (k+1,)
    n = 0
    while n < len(tokens) and tokens[n] == best[n]:
        n += 1
    return tokens[:n] + [best[n]], n


def _one_hot(token: int, vocab: int) -> torch.Tensor:
    row = torch.zeros(vocab)
    row[token] = 1.0
    return row


def probs_at(logits: torch.Tensor, context: list[int], cfg: SamplingConfig) -> torch.Tensor:
    """``softmax(process_logits(.))`` row by row: row i sees ``context`` plus the first i drafts.

    ``logits (n, V)``; ``context`` ends with the token at row 0's position (the repetition penalty needs
    each row's own history). Returns ``(n, V)``.
    """
    rows = []
    for i in range(logits.shape[0]):
        ctx = torch.tensor([context[: len(context) - logits.shape[0] + 1 + i]])  # (1, T_i)
        rows.append(process_logits(logits[i : i + 1].float(), ctx, cfg).softmax(dim=-1)[0])
    return torch.stack(rows)  # (n, V)


# --------------------------------------------------------------------------- drafts


class Draft(Protocol):
    """What :func:`speculative_generate` needs from a draft."""

    num_tokens: int  # k: tokens proposed per round

    def reset(self) -> None: ...

    def propose(
        self, ids: list[int], k: int, cfg: SamplingConfig | None, generator: torch.Generator | None
    ) -> tuple[list[int], torch.Tensor | None]:
        """Up to ``k`` tokens to follow ``ids`` and their ``q (k', V)`` (``None``: deterministic)."""
        ...


@dataclass(kw_only=True)
class PromptLookupDraft:
    """Prompt lookup (n-gram) drafting: copy what followed an earlier occurrence of the last n tokens.

    For n from ``max_ngram`` down to 1, find an earlier occurrence of ``ids[-n:]`` in ``ids`` and propose
    the (up to) ``num_tokens`` tokens that followed it; no match, no proposal (the round is a plain
    step). ``match="latest"`` takes the most recent occurrence; ``"first"`` the earliest, which is
    ``transformers``' ``PromptLookupCandidateGenerator`` (``generate(prompt_lookup_num_tokens=k)``).
    Free to run, and strong on inputs the output copies from (code edits, summaries, repeated lists).
    """

    max_ngram: int = 3  # longest suffix tried first: longer matches are more specific
    num_tokens: int = 5  # k: tokens proposed per round
    match: str = "latest"  # which occurrence to copy from: "latest" or "first" (transformers' rule)

    def __post_init__(self) -> None:
        if self.max_ngram < 1:
            raise ValueError(f"max_ngram={self.max_ngram}: must be >= 1")
        if self.num_tokens < 1:
            raise ValueError(f"num_tokens={self.num_tokens}: must be >= 1 (k, tokens proposed per round)")
        if self.match not in PROMPT_LOOKUP_MATCHES:
            raise ValueError(f"match={self.match!r}: must be one of {PROMPT_LOOKUP_MATCHES}")

    def reset(self) -> None:
        pass  # stateless

    def lookup(self, ids: list[int], k: int) -> list[int]:
        """The proposal for ``ids`` (possibly empty, at most ``k`` tokens)."""
        t = len(ids)
        for n in range(min(self.max_ngram, t - 1), 0, -1):
            suffix = ids[t - n :]
            starts = range(t - n - 1, -1, -1) if self.match == "latest" else range(t - n)
            for j in starts:  # j + n <= t - 1: the continuation is never empty
                if ids[j : j + n] == suffix:
                    return ids[j + n : j + n + k]
        return []

    def propose(
        self, ids: list[int], k: int, cfg: SamplingConfig | None = None, generator: torch.Generator | None = None
    ) -> tuple[list[int], torch.Tensor | None]:
        return self.lookup(ids, k), None


def _eval(model: nn.Module) -> AbstractContextManager:
    """Eval mode for the call; a no-op for a model already in eval (toggling walks every module)."""
    return eval_mode(model) if model.training else nullcontext(model)


def _rollback(cache: DynamicCache, length: int) -> None:
    """Keep the first ``length`` positions of ``cache`` (``crop(-n)`` drops the last n)."""
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)


@dataclass(kw_only=True)
class ModelDraft:
    """A smaller causal LM with the target's tokenizer, sampling its proposals with its own KV cache.

    Each round it feeds the tokens its cache lacks (after rolling back to the longest prefix it shares
    with ``ids``) and then one token per step: k draft forwards per round. With a sampling config it
    samples from ``q = softmax(process_logits(.))`` and returns ``q``; without one it is greedy.
    """

    model: nn.Module  # e.g. a smaller LlamaForCausalLM, or layer_skip_draft(target, n)
    num_tokens: int = 5  # k: tokens proposed per round
    _cache: DynamicCache | None = field(default=None, init=False, repr=False)
    _ids: list[int] = field(default_factory=list, init=False, repr=False)  # tokens whose KV the cache holds

    def __post_init__(self) -> None:
        if self.num_tokens < 1:
            raise ValueError(f"num_tokens={self.num_tokens}: must be >= 1 (k, tokens proposed per round)")

    @property
    def vocab_size(self) -> int:
        return int(self.model.config.vocab_size)

    def reset(self) -> None:
        self._cache, self._ids = None, []

    @torch.no_grad()
    def propose(
        self, ids: list[int], k: int, cfg: SamplingConfig | None = None, generator: torch.Generator | None = None
    ) -> tuple[list[int], torch.Tensor | None]:
        common = 0
        for a, b in zip(self._ids, ids[:-1], strict=False):  # ids[-1] must be fed: its logits are q_1
            if a != b:
                break
            common += 1
        if self._cache is None or common == 0:
            self._cache, common = DynamicCache(config=self.model.config), 0
        _rollback(self._cache, common)
        context, feed, out, probs = list(ids), ids[common:], [], []
        with _eval(self.model):
            for _ in range(k):
                x = torch.tensor([feed])  # (1, T_new)
                logits = self.model(x, past_key_values=self._cache, use_cache=True).logits[:, -1].float()  # (1, V)
                if cfg is None:
                    token = int(logits.argmax(dim=-1))
                else:
                    q = process_logits(logits, torch.tensor([context]), cfg).softmax(dim=-1)[0]  # (V,)
                    token = int(torch.multinomial(q, 1, generator=generator))
                    probs.append(q)
                out.append(token)
                context.append(token)
                feed = [token]
        self._ids = list(ids) + out[:-1]  # the last proposal was never fed
        return out, (torch.stack(probs) if probs else None)


def layer_skip_draft(model: nn.Module, layers: int) -> nn.Module:
    """The target's first ``layers`` decoder blocks, then its final norm and ``lm_head``: a draft for free.

    A shallow copy of the module tree (``model``, ``model.model``) with ``model.model.layers`` truncated
    and a copied config: every tensor is shared with the target (no extra memory), and the target keeps
    all its blocks. Works for ``transformers`` decoder-only models laid out as ``LlamaForCausalLM``.
    """
    base = getattr(model, "model", None)
    blocks = getattr(base, "layers", None)
    if not isinstance(blocks, nn.ModuleList):
        raise ValueError("model: expected a LlamaForCausalLM-style model with decoder blocks at model.model.layers")
    if not 1 <= layers <= len(blocks):
        raise ValueError(f"layers={layers}: must be between 1 and {len(blocks)} (the target's decoder blocks)")
    config = copy.deepcopy(model.config)
    config.num_hidden_layers = layers
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = config.layer_types[:layers]
    draft, inner = _shallow_copy(model), _shallow_copy(base)
    inner.layers = nn.ModuleList(list(blocks)[:layers])
    inner.config = config
    draft.model = inner
    draft.config = config
    return draft


def _shallow_copy(module: nn.Module) -> nn.Module:
    """A new module object whose child/parameter/buffer tables are copies (so edits stay local)."""
    new = copy.copy(module)
    new._modules = dict(module._modules)
    new._parameters = dict(module._parameters)
    new._buffers = dict(module._buffers)
    return new


# --------------------------------------------------------------------------- generation loops


@dataclass(kw_only=True)
class SpeculativeResult:
    tokens: list[int]  # new tokens only (the prompt excluded); ends with EOS if it stopped there
    proposed: int = 0  # draft tokens the target checked
    accepted: int = 0  # of those, how many it kept
    target_forwards: int = 0  # target calls, the prompt's included
    seconds: float = 0.0  # wall time of the loop

    @property
    def acceptance_rate(self) -> float:
        """``accepted / proposed`` (0 when nothing was proposed)."""
        return self.accepted / self.proposed if self.proposed else 0.0

    @property
    def tokens_per_forward(self) -> float:
        """New tokens per target forward: 1 for plain decoding, up to k + 1 speculatively."""
        return len(self.tokens) / self.target_forwards if self.target_forwards else 0.0


def _sampling(temperature: float, top_k: int | None, top_p: float | None) -> SamplingConfig | None:
    if temperature < 0:
        raise ValueError(f"temperature={temperature}: must be >= 0 (0 = greedy)")
    if temperature == 0:
        return None
    return SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p)


def _check(input_ids: torch.Tensor, max_new_tokens: int) -> list[int]:
    if input_ids.dim() != 2 or input_ids.shape[0] != 1 or input_ids.shape[1] < 1:
        raise ValueError(f"input_ids: must have shape (1, T) with T >= 1 (one sequence), got {tuple(input_ids.shape)}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens}: must be >= 1")
    return [int(t) for t in input_ids[0]]


def _generator(seed: int | None) -> torch.Generator | None:
    return None if seed is None else torch.Generator().manual_seed(seed)


def _finish(tokens: list[int], max_new_tokens: int, eos_token_id: int | None) -> tuple[list[int], bool]:
    """Cut at ``max_new_tokens`` and after the first EOS; True when generation must stop."""
    if eos_token_id is not None and eos_token_id in tokens:
        return tokens[: tokens.index(eos_token_id) + 1][:max_new_tokens], True
    return tokens[:max_new_tokens], len(tokens) >= max_new_tokens


@torch.no_grad()
def speculative_generate(
    target: nn.Module,
    draft: Draft,
    input_ids: torch.Tensor,
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_token_id: int | None = None,
    seed: int | None = None,
) -> SpeculativeResult:
    """Generate with ``draft`` proposing and ``target`` verifying; the output follows the target alone.

    ``input_ids (1, T)``. ``temperature == 0``: greedy verification (identical tokens to the target's
    greedy decoding); otherwise :func:`rejection_sample` over ``process_logits`` of both models (the
    same ``temperature``/``top_k``/``top_p``), with a generator seeded by ``seed``. Each round proposes
    ``min(k, tokens still needed - 1)`` drafts, so the round's extra token never overshoots.
    """
    prompt = _check(input_ids, max_new_tokens)
    cfg = _sampling(temperature, top_k, top_p)
    draft_vocab = getattr(draft, "vocab_size", None)
    if draft_vocab is not None and draft_vocab != target.config.vocab_size:
        raise ValueError(f"draft: vocabulary size {draft_vocab} differs from the target's "
                         f"{target.config.vocab_size}; the draft must share the target's tokenizer")
    generator = _generator(seed)
    draft.reset()
    start = time.perf_counter()
    cache = DynamicCache(config=target.config)
    seq, new, pending = list(prompt), [], list(prompt)  # pending: emitted tokens the target's cache lacks
    proposed = accepted = forwards = 0
    with _eval(target):
        while True:
            k = min(draft.num_tokens, max_new_tokens - len(new) - 1)
            drafts, q = draft.propose(seq, k, cfg, generator) if k > 0 else ([], None)
            drafts = drafts[:k]
            x = torch.tensor([pending + drafts])  # (1, T_pending + k')
            logits = target(x, past_key_values=cache, use_cache=True).logits[0, -(len(drafts) + 1) :]  # (k'+1, V)
            forwards += 1
            if cfg is None:
                emitted, n = greedy_verify(logits, drafts)
            else:
                p = probs_at(logits, seq + drafts, cfg)  # (k'+1, V)
                emitted, n = rejection_sample(p, None if q is None else q[: len(drafts)], drafts, generator)
            proposed, accepted = proposed + len(drafts), accepted + n
            _rollback(cache, len(seq) + n)  # drop the rejected drafts' KV; the new token stays pending
            seq, pending = seq + emitted, emitted[-1:]
            new, done = _finish(new + emitted, max_new_tokens, eos_token_id)
            if done:
                break
    return SpeculativeResult(tokens=new, proposed=proposed, accepted=accepted, target_forwards=forwards,
                             seconds=time.perf_counter() - start)


@torch.no_grad()
def plain_generate(
    target: nn.Module,
    input_ids: torch.Tensor,
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_token_id: int | None = None,
    seed: int | None = None,
) -> SpeculativeResult:
    """One token per target forward with the same cache and sampling code: the speed-up's baseline."""
    prompt = _check(input_ids, max_new_tokens)
    cfg = _sampling(temperature, top_k, top_p)
    generator = _generator(seed)
    start = time.perf_counter()
    cache = DynamicCache(config=target.config)
    seq, new, feed, forwards = list(prompt), [], list(prompt), 0
    with _eval(target):
        while True:
            logits = target(torch.tensor([feed]), past_key_values=cache, use_cache=True).logits[:, -1].float()  # (1, V)
            forwards += 1
            if cfg is None:
                token = int(logits.argmax(dim=-1))
            else:
                probs = process_logits(logits, torch.tensor([seq]), cfg).softmax(dim=-1)[0]  # (V,)
                token = int(torch.multinomial(probs, 1, generator=generator))
            seq, feed = seq + [token], [token]
            new, done = _finish(new + [token], max_new_tokens, eos_token_id)
            if done:
                break
    return SpeculativeResult(tokens=new, target_forwards=forwards, seconds=time.perf_counter() - start)
