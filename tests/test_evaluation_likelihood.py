"""Perplexity and log-likelihood multiple choice against Hugging Face's own loss and slow references."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from llmbook.evaluation.likelihood import (
    ChoiceScore,
    MultipleChoiceItem,
    accuracy_from_scores,
    continuation_task,
    encode_pair,
    heldout_text_split,
    perplexity,
    score_choices,
    sliding_windows,
    split_sentences,
    token_log_likelihoods,
    wikipedia_documents,
)

TEXT = (
    "the cat sat on the mat. a dog ran in the park and the cat ran after it. the bird sang on a tree "
    "while the dog slept. a man read a book in the park. the sun was warm and the day was long. "
)


@pytest.fixture(scope="module")
def model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        vocab_size=100,
        initializer_range=0.5,
    )  # large init: peaked logits
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    """A GPT-2-style byte-level BPE (" cat" is one token with its space) with a vocabulary under 100."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        [TEXT] * 4, trainers.BpeTrainer(vocab_size=100, special_tokens=["<eos>"], show_progress=False)
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")
    assert len(fast) <= 100
    return fast


def _ids(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 100, (n,), generator=torch.Generator().manual_seed(seed))


# --- perplexity ---------------------------------------------------------------------------------------------


def test_token_log_likelihoods_match_log_softmax(model) -> None:
    ids = torch.stack([_ids(12, 1), _ids(12, 2), _ids(12, 3)])
    got = token_log_likelihoods(model, ids, batch_size=2)
    with torch.no_grad():
        ref = torch.log_softmax(model(ids).logits[:, :-1].float(), -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    diff = (got - ref).abs().max().item()
    assert got.shape == (3, 11) and diff < 1e-5, f"max_abs_diff={diff}"


def test_perplexity_of_one_window_is_exp_of_hf_loss(model) -> None:
    ids = _ids(40)
    result = perplexity(model, ids, context=64)
    with torch.no_grad():
        ref = math.exp(model(ids[None], labels=ids[None]).loss.item())
    assert result.tokens == 39
    assert math.isclose(result.ppl, ref, rel_tol=1e-5), f"ppl {result.ppl} vs HF {ref}, diff {abs(result.ppl - ref)}"


def _reference_nll(model, ids: torch.Tensor, context: int, stride: int) -> tuple[float, int]:
    """One HF forward per window, targets outside the window's new tokens set to -100 (the HF guide)."""
    total, count, start, scored_to = 0.0, 0, 0, 1
    while scored_to < len(ids):
        stop = min(start + context + 1, len(ids))
        window = ids[start:stop][None]
        labels = window.clone()
        labels[:, : scored_to - start] = -100  # already scored, or pure context
        with torch.no_grad():
            loss = model(window, labels=labels).loss.item()
        total += loss * (stop - scored_to)
        count += stop - scored_to
        scored_to, start = stop, start + stride
    return total, count


@pytest.mark.parametrize(("context", "stride"), [(16, 4), (16, None), (10, 7)])
def test_strided_perplexity_matches_per_window_reference(model, context, stride) -> None:
    ids = _ids(75, 4)
    result = perplexity(model, ids, context=context, stride=stride, batch_size=3)
    total, count = _reference_nll(model, ids, context, stride or context)
    diff = abs(result.nll_per_token - total / count)
    assert result.tokens == count == 74 and diff < 1e-5, f"max_abs_diff={diff}"
    one_by_one = perplexity(model, ids, context=context, stride=stride, batch_size=1)
    assert abs(one_by_one.nll_per_token - result.nll_per_token) < 1e-6


def test_stride_changes_the_context_and_so_the_score(model) -> None:
    ids = _ids(60, 5)
    disjoint = perplexity(model, ids, context=8)
    strided = perplexity(model, ids, context=8, stride=2)
    assert disjoint.nll_per_token != pytest.approx(strided.nll_per_token, abs=1e-4)


def test_sliding_windows_score_every_token_once() -> None:
    assert sliding_windows(10, context=4, stride=2) == [(0, 5, 1), (2, 7, 5), (4, 9, 7), (6, 10, 9)]
    assert sliding_windows(10, context=4) == [(0, 5, 1), (4, 9, 5), (8, 10, 9)]
    for n, context, stride in [(2, 2, 1), (100, 16, 5), (33, 8, 8), (17, 32, 3)]:
        windows = sliding_windows(n, context=context, stride=stride)
        targets = [t for _, stop, first in windows for t in range(first, stop)]
        assert targets == list(range(1, n))
        assert all(stop - start - 1 <= context for start, stop, _ in windows)  # the model reads <= context
        assert all(first - start >= min(context - stride + 1, first) for start, _, first in windows)


def test_perplexity_errors(model) -> None:
    with pytest.raises(ValueError, match="empty"):
        perplexity(model, torch.tensor([], dtype=torch.long))
    with pytest.raises(ValueError, match="at least 2 tokens"):
        perplexity(model, torch.tensor([3]))
    with pytest.raises(ValueError, match="context must be at least 2"):
        perplexity(model, _ids(10), context=1)
    with pytest.raises(ValueError, match="stride"):
        perplexity(model, _ids(10), context=4, stride=5)
    with pytest.raises(TypeError, match="1-D LongTensor"):
        perplexity(model, _ids(10)[None])


# --- multiple choice ----------------------------------------------------------------------------------------


def test_encode_pair_follows_lm_eval(tokenizer) -> None:
    context_ids, choice_ids = encode_pair(tokenizer, "the cat", " sat on the mat.")
    assert context_ids == tokenizer("the cat").input_ids
    assert context_ids + choice_ids == tokenizer("the cat sat on the mat.").input_ids
    assert choice_ids[0] == tokenizer(" sat").input_ids[0]  # the space travels with the choice's first word
    assert encode_pair(tokenizer, "the cat ", "sat") == encode_pair(tokenizer, "the cat", " sat")
    assert encode_pair(tokenizer, "", " sat")[0] == [tokenizer.eos_token_id]  # no BOS: lm-eval's EOS prefix


def _slow_scores(model, tokenizer, item: MultipleChoiceItem) -> list[float]:
    """One unpadded forward per choice, read off HF's log-softmax."""
    out = []
    context = tokenizer(item.context).input_ids
    for choice in item.choices:
        whole = tokenizer(item.context + " " + choice).input_ids
        n = len(whole) - len(context)
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([whole])).logits[0].float(), -1)
        out.append(sum(logp[t - 1, whole[t]].item() for t in range(len(whole) - n, len(whole))))
    return out


def test_batched_scores_match_one_forward_per_choice(model, tokenizer) -> None:
    items = [
        MultipleChoiceItem(
            context="the cat sat on", choices=("the mat.", "a tree while the dog slept.", "it."), answer=0
        ),
        MultipleChoiceItem(
            context="a man read a book in the park and", choices=("the sun was warm.", "ran."), answer=1
        ),
        MultipleChoiceItem(
            context="the bird", choices=("sang", "slept on the mat in the park.", "ran after it", "was long."), answer=0
        ),
        MultipleChoiceItem(context="the bird sang on a tree while the", choices=("dog", "cat", "sun"), answer=0),
    ]
    rows = []  # rows per forward pass: the one-token choices of the last item share one
    hook = model.register_forward_pre_hook(
        lambda _, args, kwargs: rows.append(len(kwargs["input_ids"])), with_kwargs=True
    )
    try:
        scores = score_choices(model, tokenizer, items, batch_size=3)  # mixed lengths: right padding in use
    finally:
        hook.remove()
    assert [s.n_tokens for s in scores[3]] == [1, 1, 1] and sum(rows) == 3 + 2 + 4 + 1
    diffs = []
    for item, row in zip(items, scores, strict=True):
        ref = _slow_scores(model, tokenizer, item)
        diffs += [abs(s.logprob - r) for s, r in zip(row, ref, strict=True)]
        assert [s.n_chars for s in row] == [len(c) for c in item.choices]
        whole = [tokenizer(item.context + " " + c).input_ids for c in item.choices]
        assert [s.n_tokens for s in row] == [len(w) - len(tokenizer(item.context).input_ids) for w in whole]
    assert max(diffs) < 1e-4, f"max_abs_diff={max(diffs)}"
    assert len({round(s.logprob, 3) for row in scores for s in row}) > 5  # the scores really differ


class _Bigram(torch.nn.Module):
    """logits[b, t] = table[input_ids[b, t]]: log-probabilities a person can work out."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = torch.nn.Parameter(table)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, use_cache: bool = False
    ) -> SimpleNamespace:
        return SimpleNamespace(logits=self.table[input_ids])


def test_hand_case_scores_and_acc_norm() -> None:
    vocab = {"the": 0, "cat": 1, "sat": 2, "ran": 3, "[UNK]": 4}
    words = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=words, unk_token="[UNK]")
    table = torch.zeros(5, 5)
    table[1, 2] = 2.0  # after "cat", "sat" has logit 2, every other word 0
    item = MultipleChoiceItem(context="the cat", choices=("sat", "ran", "sat the"), answer=0)
    scores = score_choices(_Bigram(table), tokenizer, [item])[0]
    after_cat = 2 - math.log(math.exp(2) + 4)
    expected = [
        ChoiceScore(after_cat, 1, 3),
        ChoiceScore(-math.log(math.exp(2) + 4), 1, 3),
        ChoiceScore(after_cat - math.log(5), 2, 7),
    ]
    for got, want in zip(scores, expected, strict=True):
        assert got.n_tokens == want.n_tokens and got.n_chars == want.n_chars
        assert abs(got.logprob - want.logprob) < 1e-6, f"max_abs_diff={abs(got.logprob - want.logprob)}"

    # acc takes the highest sum (the short wrong choice); acc_norm divides by characters first (the long right one)
    items = [
        MultipleChoiceItem(context="q", choices=("a", "bbbbbbbbbb"), answer=1),
        MultipleChoiceItem(context="q", choices=("cc", "dd"), answer=0),
    ]
    scores = [[ChoiceScore(-2.0, 1, 1), ChoiceScore(-5.0, 3, 10)], [ChoiceScore(-1.0, 1, 2), ChoiceScore(-1.0, 1, 2)]]
    result = accuracy_from_scores(items, scores)
    assert result["predictions"] == [0, 0] and result["predictions_norm"] == [1, 0]  # a tie goes to the first
    assert (result["acc"], result["acc_norm"], result["n"]) == (0.5, 1.0, 2)
    assert result["acc_ci"].low <= 0.5 <= result["acc_ci"].high


def test_multiple_choice_errors(model, tokenizer) -> None:
    with pytest.raises(ValueError, match="out of range"):
        MultipleChoiceItem(context="x", choices=("a", "b"), answer=2)
    with pytest.raises(ValueError, match="out of range"):
        MultipleChoiceItem(context="x", choices=("a", "b"), answer=-1)
    with pytest.raises(ValueError, match="at least 2 choices"):
        MultipleChoiceItem(context="x", choices=("a",), answer=0)
    with pytest.raises(ValueError, match="whitespace"):
        score_choices(model, tokenizer, [MultipleChoiceItem(context="the cat", choices=(" sat", "ran"), answer=0)])
    with pytest.raises(ValueError, match="no items"):
        score_choices(model, tokenizer, [])


# --- held-out text and the continuation task ------------------------------------------------------------------


def test_split_sentences() -> None:
    text = (
        "Title\n\nJ. S. Bach was born c. 1685 in Eisenach. He wrote music! Did he teach? Yes.\n\n"
        "A heading\n\nDr. No is a film. It was cut off mid-sen"
    )
    assert split_sentences(text) == [
        "J. S. Bach was born c. 1685 in Eisenach.",
        "He wrote music!",
        "Did he teach?",
        "Yes.",
        "Dr. No is a film.",
    ]


@pytest.fixture(scope="module")
def documents():
    return wikipedia_documents()[:120]  # the first 20 articles, in chunks: 6 of them dev, 10 test


def test_heldout_split_is_by_article(documents) -> None:
    parts = heldout_text_split(documents, seed=0)
    titles = [{d.meta["title"] for d in part} for part in parts]
    assert all(titles) and not (titles[0] & titles[1] or titles[0] & titles[2] or titles[1] & titles[2])
    assert sorted(d.id for part in parts for d in part) == sorted(d.id for d in documents)
    shuffled = heldout_text_split(list(reversed(documents)), seed=0)
    assert [{d.id for d in p} for p in shuffled] == [{d.id for d in p} for p in parts]  # order does not matter
    assert heldout_text_split(documents, seed=1)[2] != parts[2]


def test_continuation_task(documents) -> None:
    task = continuation_task(documents, n_dev=6, n_test=12, context_words=30, seed=0)
    _, dev_docs, test_docs = heldout_text_split(documents, seed=0)
    assert (len(task["dev"]), len(task["test"])) == (6, 12)
    for split, docs in (("dev", dev_docs), ("test", test_docs)):
        title_of = {s: d.meta["title"] for d in docs for s in split_sentences(d.text)}
        prose = [" ".join(split_sentences(d.text)) for d in docs]
        for item in task[split]:
            right = item.choices[item.answer]
            assert len(item.choices) == 4 and len(item.context.split()) == 30
            assert any(item.context + " " + right in text for text in prose)  # the sentence that really follows
            wrong = [c for k, c in enumerate(item.choices) if k != item.answer]
            assert len({title_of[c] for c in wrong} | {title_of[right]}) == 4  # other, distinct articles
            assert all(abs(len(c) - len(right)) <= 0.2 * len(right) + 1 for c in wrong)
    assert continuation_task(documents, n_dev=6, n_test=12, context_words=30, seed=0) == task  # deterministic
    with pytest.raises(ValueError, match="yield only"):
        continuation_task(documents, n_dev=6, n_test=100_000)
