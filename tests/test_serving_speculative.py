"""llmbook.serving.speculative: speculative decoding on tiny random LLaMAs (and once on SmolLM2).

Greedy: token-identical to ``transformers``' ``generate`` (plain, prompt lookup, assistant model).
Sampled: the first emitted token follows the target's distribution (histogram vs. the target's
softmax within a total-variation bound derived from the sample size), and a wrong rule fails that check.
"""

from __future__ import annotations

import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.generation.candidate_generator import PromptLookupCandidateGenerator

from llmbook.decoding import SamplingConfig, process_logits
from llmbook.serving.speculative import (
    ModelDraft,
    PromptLookupDraft,
    greedy_verify,
    layer_skip_draft,
    plain_generate,
    rejection_sample,
    speculative_generate,
)

VOCAB = 96


def tiny_llama(seed: int, layers: int = 2, vocab: int = VOCAB, hidden: int = 32) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, pad_token_id=0)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def target() -> LlamaForCausalLM:
    return tiny_llama(0)


@pytest.fixture(scope="module")
def small() -> LlamaForCausalLM:
    """A separate, smaller draft model (same vocabulary, different weights)."""
    return tiny_llama(1, layers=1, hidden=16)


@pytest.fixture(scope="module")
def prompt() -> torch.Tensor:
    """Random tokens repeated once, so prompt lookup finds matches. Shape (1, 16)."""
    torch.manual_seed(5)
    half = torch.randint(1, VOCAB, (1, 8))
    return torch.cat((half, half), dim=1)


def tv_bound(vocab: int, n: int, delta: float = 1e-6) -> float:
    """Total-variation distance an n-sample histogram stays under with probability 1 - delta.

    E[TV] <= 1/2 sum_i sqrt(p_i (1 - p_i) / n) <= 1/2 sqrt(V / n) (Cauchy-Schwarz), and one sample moves TV by
    at most 1/n, so McDiarmid adds sqrt(log(1/delta) / (2n)).
    """
    return 0.5 * math.sqrt(vocab / n) + math.sqrt(math.log(1 / delta) / (2 * n))


def tv(counts: torch.Tensor, probs: torch.Tensor) -> float:
    return 0.5 * float((counts / counts.sum() - probs).abs().sum())


def new_tokens(out: torch.Tensor, prompt: torch.Tensor) -> list[int]:
    return out[0, prompt.shape[1] :].tolist()


# --------------------------------------------------------------------------- pure math


def test_greedy_verify_by_hand() -> None:
    logits = torch.full((3, 6), -1.0)
    logits[0, 3] = logits[1, 1] = logits[2, 4] = 2.0  # argmax 3, 1, 4
    assert greedy_verify(logits, [3, 1]) == ([3, 1, 4], 2)  # all accepted, plus the bonus
    assert greedy_verify(logits, [3, 0]) == ([3, 1], 1)  # the target's choice replaces the first miss
    assert greedy_verify(logits, [2, 1]) == ([3], 0)
    assert greedy_verify(logits[:1], []) == ([3], 0)  # no drafts: a plain greedy step
    with pytest.raises(ValueError, match=r"target_logits must have shape \(k\+1, V\)"):
        greedy_verify(logits, [3])


def test_rejection_sample_deterministic_cases() -> None:
    eye = torch.eye(4)
    gen = torch.Generator().manual_seed(0)
    # q == p: every draft is accepted (ratio 1) and the bonus comes from the last row
    assert rejection_sample(eye[[2, 0, 3]], eye[[2, 0]], [2, 0], gen) == ([2, 0, 3], 2)
    # p puts no mass on the draft: rejected; the residual max(0, p - q) is one-hot on token 1
    assert rejection_sample(eye[[1, 0]], eye[[0]], [0], gen) == ([1], 0)
    # a deterministic draft (q = one-hot, draft_probs=None) against p one-hot elsewhere
    assert rejection_sample(eye[[3, 0]], None, [0], gen) == ([3], 0)
    with pytest.raises(ValueError, match=r"target_probs must have shape \(k\+1, V\)"):
        rejection_sample(eye[[1]], eye[[0]], [0], gen)
    with pytest.raises(ValueError, match=r"draft_probs must have shape \(k, V\)"):
        rejection_sample(eye[[1, 0]], torch.ones(1, 3) / 3, [0], gen)


def _first_tokens(p: torch.Tensor, q: torch.Tensor | None, drafts: torch.Tensor, gen: torch.Generator, rule=None):
    """First and (when the draft was accepted) second emitted token for each draft in ``drafts``."""
    first, second = [], []
    for x in drafts.tolist():
        if rule is None:
            emitted, n = rejection_sample(p, q, [x], gen)
        else:
            emitted, n = rule(x)
        first.append(emitted[0])
        if n == 1:
            second.append(emitted[1])
    return torch.bincount(torch.tensor(first), minlength=p.shape[1]).float(), torch.tensor(second)


def test_rejection_rule_keeps_the_target_distribution() -> None:
    v, n = 5, 20_000
    gen = torch.Generator().manual_seed(0)
    p = torch.softmax(1.5 * torch.randn(2, v, generator=gen), dim=-1)  # (k+1, V) target rows
    q = torch.softmax(1.5 * torch.randn(1, v, generator=gen), dim=-1)  # (k, V) draft row
    bound = tv_bound(v, n)
    assert 0.5 * float((p[0] - q[0]).abs().sum()) > 3 * bound  # the draft is far from the target

    drafts = torch.multinomial(q[0], n, replacement=True, generator=gen)  # x ~ q
    counts, second = _first_tokens(p, q, drafts, gen)
    assert tv(counts, p[0]) < bound, (tv(counts, p[0]), bound)
    # after an acceptance the bonus token follows the next row, p_1
    bonus = torch.bincount(second, minlength=v).float()
    assert tv(bonus, p[1]) < tv_bound(v, len(second))

    # the check can fail: always accepting reproduces q, not p
    wrong, _ = _first_tokens(p, q, drafts, gen, rule=lambda x: ([x, 0], 1))
    assert tv(wrong, p[0]) > bound

    # a deterministic draft (prompt lookup: q one-hot on token 2) still yields p
    fixed = torch.full((n // 2,), 2)
    counts, _ = _first_tokens(p, None, fixed, gen)
    assert tv(counts, p[0]) < tv_bound(v, n // 2)


# --------------------------------------------------------------------------- drafts


def test_prompt_lookup_by_hand() -> None:
    ids = [1, 2, 3, 4, 9, 1, 2, 3, 5, 7, 1, 2, 3]
    assert PromptLookupDraft(max_ngram=3, num_tokens=2).lookup(ids, 2) == [5, 7]  # latest [1, 2, 3]
    assert PromptLookupDraft(max_ngram=3, num_tokens=2, match="first").lookup(ids, 2) == [4, 9]
    assert PromptLookupDraft(max_ngram=3).lookup([4, 5, 6, 7, 5], 3) == [6, 7, 5]  # falls back to n = 1
    assert PromptLookupDraft(max_ngram=3).lookup([4, 5, 6, 7, 8], 3) == []  # no match: no proposal
    assert PromptLookupDraft().lookup([4], 3) == []
    assert PromptLookupDraft(max_ngram=1).lookup([8, 8, 8], 3) == [8]  # latest match ends next to the suffix


def test_prompt_lookup_first_match_is_transformers_rule() -> None:
    gen = torch.Generator().manual_seed(0)
    found = 0
    for trial in range(300):
        t = 2 + trial % 30
        ids = torch.randint(0, 4, (1, t), generator=gen)
        for ngram, k in ((1, 3), (2, 4), (3, 2)):
            ref = PromptLookupCandidateGenerator(num_output_tokens=k, max_matching_ngram_size=ngram, max_length=10_000)
            expected = ref.get_candidates(ids)[0][0, t:].tolist()
            ours = PromptLookupDraft(max_ngram=ngram, num_tokens=k, match="first").lookup(ids[0].tolist(), k)
            assert ours == expected, (ids.tolist(), ngram, k)
            found += bool(ours)
    assert found > 500  # the comparison is not all empty proposals


def test_layer_skip_draft_shares_weights_and_leaves_target(target, prompt) -> None:
    with torch.no_grad():
        before = target(prompt).logits
        draft = layer_skip_draft(target, 1)
        ref = tiny_llama(99, layers=1)  # a one-block model loaded with the target's first block
        ref.load_state_dict({k: v for k, v in target.state_dict().items() if k in ref.state_dict()})
        diff = (draft(prompt).logits - ref(prompt).logits).abs().max()
        assert diff == 0, f"max_abs_diff={diff}"
        assert torch.equal(target(prompt).logits, before)
    assert len(target.model.layers) == 2 and target.config.num_hidden_layers == 2
    assert len(draft.model.layers) == 1 and draft.config.num_hidden_layers == 1
    shared = {t.data_ptr() for t in target.parameters()}
    assert all(t.data_ptr() in shared for t in draft.parameters())  # no tensor copied
    assert draft.lm_head is target.lm_head and draft.model.norm is target.model.norm
    full = layer_skip_draft(target, 2)
    with torch.no_grad():
        assert torch.equal(full(prompt).logits, before)


def test_model_draft_cache_matches_uncached_forwards(small, prompt) -> None:
    """Proposals over sequences that keep, drop and extend earlier ones equal full forwards without a cache."""
    ids = prompt[0].tolist()
    cfg = SamplingConfig(temperature=1.3, top_k=8)
    draft, gen = ModelDraft(model=small, num_tokens=3), torch.Generator().manual_seed(0)
    out, _ = draft.propose(ids, 3)
    steps = [  # the next context from (previous context, previous proposal)
        lambda ctx, prev: ids + prev[:1] + [7],  # first draft accepted, then a correction
        lambda ctx, prev: ctx + prev + [5],  # all accepted plus a bonus token
        lambda ctx, prev: ctx + prev[:2],  # two drafts accepted, the bonus not yet known
        lambda ctx, prev: ids[:5],  # a cut
        lambda ctx, prev: ids + [3],  # something new
    ]
    ctx, tokens = ids, out
    for i, step in enumerate(steps * 2):
        sampled = i >= len(steps)
        ctx = step(ctx, tokens)
        tokens, q = draft.propose(ctx, 3, cfg if sampled else None, gen)
        with torch.no_grad():
            for j, token in enumerate(tokens):
                seen = torch.tensor([ctx + tokens[:j]])  # (1, T): the full context, no cache
                logits = small(seen).logits[:, -1]  # (1, V)
                if sampled:
                    ref = process_logits(logits, seen, cfg).softmax(dim=-1)[0]
                    assert torch.allclose(q[j], ref, atol=1e-5), f"max_abs_diff={(q[j] - ref).abs().max()}"
                else:
                    assert token == int(logits.argmax())
        assert (q is not None) == sampled and len(tokens) == 3


# --------------------------------------------------------------------------- generation


@pytest.mark.parametrize("k", [1, 3, 5])
def test_greedy_is_token_identical_to_generate(target, small, prompt, k) -> None:
    n = 24
    ref = new_tokens(target.generate(prompt, max_new_tokens=n, do_sample=False), prompt)
    assert plain_generate(target, prompt, max_new_tokens=n).tokens == ref
    lookup = new_tokens(target.generate(prompt, max_new_tokens=n, do_sample=False, prompt_lookup_num_tokens=k), prompt)
    assisted = new_tokens(target.generate(prompt, max_new_tokens=n, do_sample=False, assistant_model=small), prompt)
    assert lookup == assisted == ref
    drafts = [PromptLookupDraft(num_tokens=k), PromptLookupDraft(num_tokens=k, match="first"),
              ModelDraft(model=small, num_tokens=k), ModelDraft(model=layer_skip_draft(target, 1), num_tokens=k)]
    results = [speculative_generate(target, d, prompt, max_new_tokens=n) for d in drafts]
    for draft, result in zip(drafts, results, strict=True):
        assert result.tokens == ref, draft
        assert result.target_forwards == n - result.accepted  # each forward emits its accepted drafts + 1
    skip = results[-1]  # the layer-skip draft both hits and misses: acceptance and rollback both exercised
    assert 0 < skip.accepted < skip.proposed


def test_stops_at_eos_and_max_new_tokens(target, small, prompt) -> None:
    ref = new_tokens(target.generate(prompt, max_new_tokens=12, do_sample=False), prompt)
    eos = ref[5]
    stop = ref.index(eos)
    hf = new_tokens(target.generate(prompt, max_new_tokens=12, do_sample=False, eos_token_id=eos), prompt)
    assert hf == ref[: stop + 1]
    for draft in (ModelDraft(model=target, num_tokens=4), PromptLookupDraft(num_tokens=4)):
        assert speculative_generate(target, draft, prompt, max_new_tokens=12, eos_token_id=eos).tokens == hf
    assert plain_generate(target, prompt, max_new_tokens=12, eos_token_id=eos).tokens == hf
    for n in (1, 2, 7):  # a perfect draft would overshoot without the cap
        assert speculative_generate(target, ModelDraft(model=target, num_tokens=5), prompt, max_new_tokens=n).tokens \
            == ref[:n]


def test_sampled_first_token_follows_the_target(target, prompt) -> None:
    temperature, top_k, n = 1.5, 6, 800
    with torch.no_grad():  # the target's own next-token distribution, filtered by hand (HF's warpers' rule)
        z = target(prompt).logits[0, -1] / temperature
        kth = torch.topk(z, top_k).values[-1]
        p = torch.softmax(z.masked_fill(z < kth, -math.inf), dim=-1)  # (V,)
        draft_model = layer_skip_draft(target, 1)  # overlaps the target's top 6 by ~2/3: hits and misses
        zq = draft_model(prompt).logits[0, -1] / temperature
        q = torch.softmax(zq.masked_fill(zq < torch.topk(zq, top_k).values[-1], -math.inf), dim=-1)
    bound = tv_bound(top_k, n)
    assert 0.5 * float((p - q).abs().sum()) > 2 * bound  # an always-accept rule (first token ~ q) would fail

    draft = ModelDraft(model=draft_model, num_tokens=1)
    first, proposed, accepted = [], 0, 0
    for seed in range(n):
        result = speculative_generate(target, draft, prompt, max_new_tokens=2, temperature=temperature, top_k=top_k,
                                      seed=seed)
        first.append(result.tokens[0])
        proposed, accepted = proposed + result.proposed, accepted + result.accepted
    counts = torch.bincount(torch.tensor(first), minlength=VOCAB).float()
    assert tv(counts, p) < bound, (tv(counts, p), bound)
    assert 0 < accepted < proposed == n  # both branches of the rule were taken

    again = speculative_generate(target, draft, prompt, max_new_tokens=8, temperature=1.0, seed=3)
    assert speculative_generate(target, draft, prompt, max_new_tokens=8, temperature=1.0, seed=3).tokens \
        == again.tokens  # a seed reproduces its sample


def test_acceptance_rates(target, prompt) -> None:
    same = ModelDraft(model=target, num_tokens=4)
    greedy = speculative_generate(target, same, prompt, max_new_tokens=16)
    sampled = speculative_generate(target, same, prompt, max_new_tokens=16, temperature=1.0, top_p=0.9, seed=0)
    assert greedy.acceptance_rate == sampled.acceptance_rate == 1.0  # q == p: min(1, p/q) = 1
    assert greedy.tokens_per_forward == 16 / 4  # 5 tokens per round, the first round's extra token capped
    lookup = speculative_generate(target, PromptLookupDraft(num_tokens=4), prompt, max_new_tokens=16)
    assert lookup.proposed > 0 and lookup.acceptance_rate > 0
    plain = plain_generate(target, prompt, max_new_tokens=16)
    assert plain.acceptance_rate == 0.0 and plain.tokens_per_forward == 1.0


def test_bad_inputs_raise(target, small, prompt) -> None:
    with pytest.raises(ValueError, match="num_tokens=0: must be >= 1"):
        PromptLookupDraft(num_tokens=0)
    with pytest.raises(ValueError, match="num_tokens=0: must be >= 1"):
        ModelDraft(model=small, num_tokens=0)
    with pytest.raises(ValueError, match="max_ngram=0"):
        PromptLookupDraft(max_ngram=0)
    with pytest.raises(ValueError, match="match='middle'"):
        PromptLookupDraft(match="middle")
    draft = PromptLookupDraft(num_tokens=2)
    with pytest.raises(ValueError, match=r"input_ids: must have shape \(1, T\)"):
        speculative_generate(target, draft, prompt.repeat(2, 1), max_new_tokens=4)
    with pytest.raises(ValueError, match=r"input_ids: must have shape \(1, T\)"):
        plain_generate(target, prompt[0], max_new_tokens=4)
    with pytest.raises(ValueError, match="max_new_tokens=0"):
        speculative_generate(target, draft, prompt, max_new_tokens=0)
    with pytest.raises(ValueError, match="temperature=-1"):
        speculative_generate(target, draft, prompt, max_new_tokens=4, temperature=-1)
    other = ModelDraft(model=tiny_llama(2, layers=1, vocab=VOCAB + 1), num_tokens=2)
    with pytest.raises(ValueError, match=f"vocabulary size {VOCAB + 1} differs from the target's {VOCAB}"):
        speculative_generate(target, other, prompt, max_new_tokens=4)
    with pytest.raises(ValueError, match="layers=3: must be between 1 and 2"):
        layer_skip_draft(target, 3)
    with pytest.raises(ValueError, match="layers=0"):
        layer_skip_draft(target, 0)
    with pytest.raises(ValueError, match="model.model.layers"):
        layer_skip_draft(torch.nn.Linear(2, 2), 1)


# --------------------------------------------------------------------------- the real model


@pytest.mark.slow
def test_smollm2_layer_skip_and_prompt_lookup_match_generate() -> None:
    from llmbook.chain.pretrained import load_pretrained

    model, tok = load_pretrained()
    text = "apples, pears, plums, cherries, apples, pears, plums, cherries, apples, pears,"
    ids = tok(text, return_tensors="pt").input_ids  # (1, T)
    ref = new_tokens(model.generate(ids, max_new_tokens=20, do_sample=False), ids)
    skip = speculative_generate(model, ModelDraft(model=layer_skip_draft(model, 8), num_tokens=2), ids,
                                max_new_tokens=20, eos_token_id=tok.eos_token_id)
    lookup = speculative_generate(model, PromptLookupDraft(num_tokens=5), ids, max_new_tokens=20,
                                  eos_token_id=tok.eos_token_id)
    assert skip.tokens == lookup.tokens == ref, tok.decode(ref)
    assert lookup.acceptance_rate > 0.5  # the continuation repeats the prompt
    assert len(model.model.layers) == model.config.num_hidden_layers == 30  # the draft left the target whole
