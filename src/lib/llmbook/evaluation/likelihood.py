"""Scoring a language model by likelihood: perplexity on held-out text, and multiple choice the way
lm-evaluation-harness scores it.

Both numbers come from one quantity, the log-probability the model gives each token after the tokens
before it, ``log p(x_t | x_<t)`` (:func:`token_log_likelihoods`).

- **Perplexity** (:func:`perplexity`): ``PPL = exp(-(1/N) * sum_t log p(x_t | x_<t))`` over the N scored
  tokens of a long text. A model sees at most ``context`` tokens, so the text is cut into windows with
  the strided sliding-window method of Hugging Face's "Perplexity of fixed-length models" guide: each
  window starts ``stride`` tokens after the previous one and scores only the tokens no earlier window
  scored, so every token after the first is scored exactly once, with at least ``context - stride``
  tokens of left context (from the second window on). ``stride = context`` gives non-overlapping
  windows: fastest, but the first tokens of each window see little context, so the perplexity is higher.
- **Multiple choice** (:func:`score_choices`, :func:`multiple_choice_accuracy`): the model never
  writes an answer; each choice is scored by the summed log-probability of its tokens after the
  context, and the highest wins (``acc``). Longer choices have more tokens and so lower sums; lm-eval's
  ``acc_norm`` divides each sum by the choice's length in characters first (Gao et al., "A framework for
  few-shot language model evaluation", 2021; the HellaSwag convention, arXiv:1905.07830). Tokenisation
  follows lm-eval: the choice is appended to the context with a space (" " + choice), the whole string is
  encoded and the choice's tokens are the ones after the context's own encoding, with any whitespace at
  the end of the context moved to the front of the choice, where BPE tokenizers expect it.

:func:`continuation_task` builds a multiple-choice task from real held-out text that a 135M model can
do: after a passage of a Wikipedia article, which of four sentences really comes next? The three wrong
ones are sentences of similar length from other articles. :func:`heldout_text_split` splits the
articles into calibration, dev and test parts, so the text a compression method calibrates on never
appears in its evaluation.
"""

from __future__ import annotations

import bisect
import hashlib
import inspect
import itertools
import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch

from llmbook.data.faq import load_distractors
from llmbook.evaluation.stats import Interval, accuracy_ci
from llmbook.progress import ProgressBar
from llmbook.rag.documents import Document

# --- token log-likelihoods --------------------------------------------------------------------------------


def _device(model: torch.nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def token_log_likelihoods(
    model: torch.nn.Module, input_ids: torch.Tensor, *, attention_mask: torch.Tensor | None = None, batch_size: int = 8
) -> torch.Tensor:
    """``log p(x_t | x_<t)`` for t = 1..T-1 of every row: (B, T) ids -> (B, T-1) float32 on the CPU.

    The model sees ``input_ids[:, :-1]`` (the last token is only a target) in batches of ``batch_size``
    rows. ``attention_mask`` (B, T) marks real tokens with 1; pad on the right, so that a causal model's
    outputs at the real positions do not depend on the padding (the values at padded positions are
    meaningless). Log-probabilities are computed in float32 as ``logit[target] - logsumexp(logits)``,
    without materialising a second (B, T, V) tensor.
    """
    if input_ids.ndim != 2 or input_ids.dtype != torch.long:
        raise TypeError(
            f"input_ids must be a (B, T) LongTensor, got {input_ids.dtype} of shape {tuple(input_ids.shape)}"
        )
    if input_ids.shape[1] < 2:
        raise ValueError(f"need at least 2 tokens per row to score one, got T={input_ids.shape[1]}")
    if attention_mask is not None and attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, input_ids {tuple(input_ids.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    out = []
    for start in range(0, input_ids.shape[0], batch_size):
        ids = input_ids[start : start + batch_size]
        mask = None if attention_mask is None else attention_mask[start : start + batch_size, :-1]
        logits = _logits(model, ids[:, :-1], mask)  # (B, T-1, V)
        target = ids[:, 1:].unsqueeze(-1).to(logits.device)  # (B, T-1, 1)
        picked = logits.gather(-1, target).squeeze(-1)  # (B, T-1)
        out.append((picked - torch.logsumexp(logits, dim=-1)).cpu())
    return torch.cat(out)


def _logits(
    model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor | None, keep: torch.Tensor | None = None
) -> torch.Tensor:
    """float32 next-token logits (B, T, V) for (B, T) ids, on the model's device, without gradients; with
    ``keep`` (positions), only those columns (B, K, V): transformers' ``logits_to_keep`` skips the output head
    elsewhere; a model without that argument computes every column and the rest are dropped."""
    device = _device(model)
    kwargs: dict[str, Any] = {} if mask is None else {"attention_mask": mask.to(device)}
    head_skips = keep is not None and "logits_to_keep" in inspect.signature(model.forward).parameters
    if head_skips:
        kwargs["logits_to_keep"] = keep.to(device)
    with torch.inference_mode():
        logits = model(input_ids=ids.to(device), use_cache=False, **kwargs).logits.float()
    return logits if keep is None or head_skips else logits[:, keep.to(logits.device)]


# --- perplexity -------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class PerplexityResult:
    ppl: float  # exp(nll_per_token)
    nll_per_token: float  # mean negative log-likelihood in nats over the scored tokens
    tokens: int  # tokens scored: all but the first of the text


def sliding_windows(n_tokens: int, *, context: int, stride: int | None = None) -> list[tuple[int, int, int]]:
    """The windows :func:`perplexity` runs, as ``(start, stop, first_target)`` token positions.

    A window holds tokens ``[start, stop)``; the model reads ``[start, stop - 1)`` (at most ``context``
    tokens) and the window scores targets ``[first_target, stop)``, each with ``target - start`` tokens of
    left context. Window k starts at ``k * stride`` and scores what earlier windows did not, so targets
    1..n_tokens-1 are each scored once. These are the windows of Hugging Face's guide with ``max_length =
    context + 1`` and the same stride, except that the guide also feeds the model the last target, whose
    logits score nothing (and it counts one token too few in each window after the first; here the
    count is exact).
    """
    if n_tokens < 2:
        raise ValueError(f"perplexity needs at least 2 tokens (the first is never scored), got {n_tokens}")
    if context < 2:
        raise ValueError(f"context must be at least 2 tokens, got {context}")
    stride = context if stride is None else stride
    if not 1 <= stride <= context:
        raise ValueError(f"stride must be between 1 and context={context}, got {stride}")
    windows, start, scored_to = [], 0, 1
    while scored_to < n_tokens:
        stop = min(start + context + 1, n_tokens)
        windows.append((start, stop, scored_to))
        scored_to, start = stop, start + stride
    return windows


def perplexity(
    model: torch.nn.Module,
    token_ids: torch.Tensor,
    *,
    context: int = 512,
    stride: int | None = None,
    batch_size: int = 4,
    progress: bool = False,
) -> PerplexityResult:
    """Perplexity of ``model`` on one long text (a 1-D LongTensor of token ids), by strided sliding windows.

    ``PPL = exp(-(1/N) * sum_t log p(x_t | x_window(t)))`` over the N = len - 1 tokens after the first,
    windows as in :func:`sliding_windows` (``stride=None``: non-overlapping windows). Windows of equal
    length run ``batch_size`` at a time.
    """
    if not isinstance(token_ids, torch.Tensor) or token_ids.ndim != 1 or token_ids.dtype != torch.long:
        raise TypeError(
            "token_ids must be a 1-D LongTensor: the whole text as one sequence "
            "(e.g. tokenizer(text, return_tensors='pt').input_ids[0])"
        )
    if len(token_ids) == 0:
        raise ValueError("token_ids is empty: tokenize some text first")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    windows = sliding_windows(len(token_ids), context=context, stride=stride)
    nll, scored = 0.0, 0
    batches = [
        group[i : i + batch_size]
        for _, same in itertools.groupby(windows, key=lambda w: w[1] - w[0])  # only the last is shorter
        for group in [list(same)]
        for i in range(0, len(group), batch_size)
    ]
    with ProgressBar(total=len(windows), desc="perplexity", unit="window", disable=not progress) as bar:
        for batch in batches:
            ids = torch.stack([token_ids[start:stop] for start, stop, _ in batch])  # (B, T)
            logp = token_log_likelihoods(model, ids, batch_size=len(batch))  # (B, T-1); column j scores start+j+1
            for row, (start, stop, first) in zip(logp, batch, strict=True):
                nll -= row[first - start - 1 : stop - start - 1].double().sum().item()
                scored += stop - first
            bar.update(len(batch))
    return PerplexityResult(ppl=math.exp(nll / scored), nll_per_token=nll / scored, tokens=scored)


def document_token_ids(
    tokenizer: Any, documents: Sequence[Document], *, max_tokens: int | None = None, separator: str = "\n\n"
) -> torch.Tensor:
    """The documents' texts joined by ``separator`` and tokenized as one text (as Hugging Face's perplexity
    guide does with WikiText), cut to the first ``max_tokens`` tokens: a 1-D LongTensor for :func:`perplexity`."""
    if not documents:
        raise ValueError("no documents to tokenize")
    ids = tokenizer(separator.join(d.text for d in documents), add_special_tokens=False).input_ids
    return torch.tensor(ids[:max_tokens] if max_tokens is not None else ids, dtype=torch.long)


# --- multiple choice --------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class MultipleChoiceItem:
    context: str  # what the model reads; each choice is scored as its continuation
    choices: tuple[str, ...]  # without a leading space: score_choices puts " " between context and choice
    answer: int  # index of the right choice

    def __post_init__(self) -> None:
        if len(self.choices) < 2:
            raise ValueError(f"a multiple-choice item needs at least 2 choices, got {len(self.choices)}")
        if not 0 <= self.answer < len(self.choices):
            raise ValueError(f"answer index {self.answer} is out of range for {len(self.choices)} choices")
        if any(not c for c in self.choices):
            raise ValueError("every choice must be a non-empty string")


class ChoiceScore(NamedTuple):
    logprob: float  # sum of log p(token | context, earlier choice tokens) over the choice's tokens
    n_tokens: int  # how many tokens the choice got (after the context)
    n_chars: int  # len(choice) without the delimiter: the length lm-eval's acc_norm divides by


def encode_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context tokens, continuation tokens) as lm-eval's ``_encode_pair``.

    Trailing whitespace of the context moves to the front of the continuation; the continuation's tokens
    are those of ``encode(context + continuation)`` after the first ``len(encode(context))``, so a token
    that a BPE merge spans across the boundary is not split. No special tokens are added, except that an
    empty context becomes the tokenizer's BOS (else EOS) token, which lm-eval uses as its prefix.
    """
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole = tokenizer(context + continuation, add_special_tokens=False).input_ids
    if context:
        context_ids = tokenizer(context, add_special_tokens=False).input_ids
        return context_ids, whole[len(context_ids) :]
    prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if prefix is None:
        raise ValueError("an empty context needs a prefix token, and this tokenizer has neither BOS nor EOS")
    return [prefix], whole


def _max_length(model: torch.nn.Module) -> int | None:
    config = getattr(model, "config", None)
    return getattr(config, "max_position_embeddings", None)


def score_choices(
    model: torch.nn.Module,
    tokenizer: Any,
    items: Sequence[MultipleChoiceItem],
    *,
    batch_size: int = 8,
    delimiter: str = " ",
) -> list[list[ChoiceScore]]:
    """Per item, per choice: the summed log-probability of ``delimiter + choice`` after ``item.context``.

    All (context, choice) requests are sorted longest first, padded on the right with an attention mask
    and run ``batch_size`` at a time; requests with the same model input share one forward pass. A
    request longer than the model's ``max_position_embeddings`` loses context tokens from the left (as
    lm-eval does).
    """
    if not items:
        raise ValueError("no items to score")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    requests = []  # (item, choice, full token ids, continuation length)
    max_length = _max_length(model)
    for i, item in enumerate(items):
        for j, choice in enumerate(item.choices):
            if delimiter and choice[:1].isspace():
                raise ValueError(
                    f"item {i} choice {j} starts with whitespace; score_choices adds {delimiter!r} "
                    "itself: strip the choice"
                )
            context_ids, choice_ids = encode_pair(tokenizer, item.context, delimiter + choice)
            if not choice_ids:
                raise ValueError(f"item {i} choice {j} ({choice!r}) encodes to no tokens after the context")
            full = context_ids + choice_ids
            if max_length is not None and len(full) > max_length + 1:
                if len(choice_ids) > max_length:
                    raise ValueError(
                        f"item {i} choice {j} has {len(choice_ids)} tokens, more than the model's {max_length}"
                    )
                full = full[-(max_length + 1) :]  # the model reads all but the last: max_length tokens
            requests.append((i, j, full, len(choice_ids)))
    # Requests whose model input (all tokens but the last) is the same share one forward pass: with
    # one-token choices (" A", " B", ...) an item costs one forward instead of one per choice.
    inputs: dict[tuple[int, ...], list[int]] = {}  # model input -> the requests that read it
    for r, (_, _, full, _) in enumerate(requests):
        inputs.setdefault(tuple(full[:-1]), []).append(r)
    unique = sorted(inputs, key=len, reverse=True)  # longest first: similar lengths share a batch
    logprobs = [0.0] * len(requests)
    for b in range(0, len(unique), batch_size):
        batch = unique[b : b + batch_size]
        ids = torch.zeros(len(batch), len(batch[0]), dtype=torch.long)  # (B, T), pad id 0: masked, never read
        mask = torch.zeros_like(ids)
        for row, tokens in enumerate(batch):
            ids[row, : len(tokens)] = torch.tensor(tokens)
            mask[row, : len(tokens)] = 1
        # Only the positions that predict a choice token need the output head, the costliest layer of a
        # small model with a large vocabulary: keep the union of those positions over the batch.
        wanted = {
            r: range(len(requests[r][2]) - 1 - requests[r][3], len(requests[r][2]) - 1)
            for tokens in batch
            for r in inputs[tokens]
        }
        keep = sorted({t for positions in wanted.values() for t in positions})
        column = {t: k for k, t in enumerate(keep)}  # sequence position -> column of the kept logits
        logits = _logits(model, ids, mask, keep=torch.tensor(keep))  # (B, K, V)
        lse = torch.logsumexp(logits, dim=-1)  # (B, K)
        for row, tokens in enumerate(batch):
            for r in inputs[tokens]:
                full, n_choice = requests[r][2], requests[r][3]
                columns = torch.tensor([column[t] for t in wanted[r]], device=logits.device)
                targets = torch.tensor(full[len(full) - n_choice :], device=logits.device)
                picked = logits[row, columns, targets]
                logprobs[r] = (picked - lse[row, columns]).double().sum().item()
    scores: list[list[ChoiceScore]] = [[] for _ in items]
    for r, (i, j, _, n_choice) in enumerate(requests):
        scores[i].append(ChoiceScore(logprobs[r], n_choice, len(items[i].choices[j])))
    return scores


def accuracy_from_scores(
    items: Sequence[MultipleChoiceItem], scores: Sequence[Sequence[ChoiceScore]], *, level: float = 0.95, seed: int = 0
) -> dict[str, Any]:
    """``acc`` (argmax of the summed log-probability) and ``acc_norm`` (argmax of log-probability per
    character of the choice), their bootstrap intervals over items, and the predicted indices.
    Ties go to the first choice, as with lm-eval's ``np.argmax``."""
    if len(items) != len(scores) or not items:
        raise ValueError(f"need one list of choice scores per item, got {len(scores)} for {len(items)} items")
    pred, pred_norm = [], []
    for item, row in zip(items, scores, strict=True):
        if len(row) != len(item.choices):
            raise ValueError(f"an item has {len(item.choices)} choices but {len(row)} scores")
        pred.append(int(np.argmax([s.logprob for s in row])))
        pred_norm.append(int(np.argmax([s.logprob / s.n_chars for s in row])))
    correct = [p == item.answer for p, item in zip(pred, items, strict=True)]
    correct_norm = [p == item.answer for p, item in zip(pred_norm, items, strict=True)]
    acc_ci: Interval = accuracy_ci(correct, level=level, seed=seed)
    acc_norm_ci: Interval = accuracy_ci(correct_norm, level=level, seed=seed)
    return {
        "acc": acc_ci.estimate,
        "acc_norm": acc_norm_ci.estimate,
        "n": len(items),
        "acc_ci": acc_ci,
        "acc_norm_ci": acc_norm_ci,
        "predictions": pred,
        "predictions_norm": pred_norm,
    }


def multiple_choice_accuracy(
    model: torch.nn.Module,
    tokenizer: Any,
    items: Sequence[MultipleChoiceItem],
    *,
    batch_size: int = 8,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """:func:`score_choices` then :func:`accuracy_from_scores`: keys ``acc``, ``acc_norm``, ``n``,
    ``acc_ci`` and ``acc_norm_ci`` (:class:`~llmbook.evaluation.stats.Interval`), ``predictions`` and
    ``predictions_norm``."""
    scores = score_choices(model, tokenizer, items, batch_size=batch_size)
    return accuracy_from_scores(items, scores, level=level, seed=seed)


# --- a continuation task from held-out Wikipedia text ------------------------------------------------------

SPLITS = ("calibration", "dev", "test")
_ABBREVIATIONS = frozenset(  # words whose final "." does not end a sentence
    "mr mrs ms dr st jr sr vs c ca e.g i.e etc no nos vol u.s u.k inc co ltd gen col lt gov rev prof fig approx "
    "est mt ft al pp op".split()
)
_SENTENCE_END = re.compile(r"[.!?][\"')\]]*\s+(?=[\"'(\[]?[A-Z])")
_COMPLETE = re.compile(r"[.!?][\"')\]]*$")  # how a sentence ends (a heading or a cut-off sentence does not)
_MIN_WORDS, _MAX_WORDS = 8, 40  # answer and distractor sentences: long enough to carry meaning, short to score
_LENGTH_TOLERANCE = 0.2  # a distractor's length in characters is within 20 % of the right sentence's


def wikipedia_documents() -> list[Document]:
    """The bundled Wikipedia articles (CC BY-SA 3.0), as chunks of up to 6000 characters; the chunks of
    one article share ``meta["title"]``."""
    return load_distractors(sources=["wikipedia"])


def _group(doc: Document) -> str:
    """The unit a split keeps together: the article (chunks share a title), else the document itself."""
    return str(doc.meta.get("title") or doc.id)


def heldout_text_split(
    documents: Sequence[Document], seed: int = 0, *, shares: tuple[float, float, float] = (0.2, 0.3, 0.5)
) -> tuple[list[Document], list[Document], list[Document]]:
    """(calibration, dev, test) documents, split by article so that no article's text is in two parts.

    Articles are ranked by a hash of (seed, title), which does not depend on the documents' order;
    ``shares`` of the articles go to each part (at least one each).
    """
    if len(shares) != 3 or min(shares) <= 0 or not math.isclose(sum(shares), 1.0):
        raise ValueError(f"shares must be three positive fractions summing to 1, got {shares}")
    groups = sorted({_group(d) for d in documents}, key=lambda g: hashlib.sha256(f"{seed}:{g}".encode()).digest())
    if len(groups) < 3:
        raise ValueError(f"need documents from at least 3 articles to split three ways, got {len(groups)}")
    n_cal = max(1, round(shares[0] * len(groups)))
    n_dev = max(1, min(round(shares[1] * len(groups)), len(groups) - n_cal - 1))
    part = {g: (0 if k < n_cal else 1 if k < n_cal + n_dev else 2) for k, g in enumerate(groups)}
    out: tuple[list[Document], list[Document], list[Document]] = ([], [], [])
    for doc in documents:
        out[part[_group(doc)]].append(doc)
    return out


def split_sentences(text: str) -> list[str]:
    """The complete sentences of ``text``, paragraph by paragraph (paragraphs are separated by blank lines).

    A ".", "!" or "?" followed by a space and a capital ends a sentence unless it closes an initial or a
    common abbreviation ("J. S. Bach", "c. 1800", "Dr. No"). Pieces that do not end like a sentence are
    dropped: headings, and the last sentence of a chunk that was cut off mid-way.
    """
    sentences = []
    for paragraph in text.split("\n\n"):
        paragraph = " ".join(paragraph.split())
        start = 0
        for match in _SENTENCE_END.finditer(paragraph):
            words = paragraph[start : match.start()].split()
            last = words[-1].lstrip("\"'([").lower() if words else ""
            if last in _ABBREVIATIONS or (len(last) == 1 and last.isalpha()):
                continue
            sentences.append(paragraph[start : match.end()].strip())
            start = match.end()
        sentences.append(paragraph[start:].strip())
    return [s for s in sentences if _COMPLETE.search(s)]


def _is_choice(sentence: str) -> bool:
    return sentence[0].isupper() and _MIN_WORDS <= len(sentence.split()) <= _MAX_WORDS


def _items(
    documents: Sequence[Document], n: int, *, context_words: int, choices: int, rng: random.Random, split: str
) -> list[MultipleChoiceItem]:
    per_doc = [split_sentences(d.text) for d in documents]
    groups = [_group(d) for d in documents]
    by_group: dict[str, list[tuple[int, str]]] = {}  # article -> its candidate sentences, sorted by length
    for sents, g in zip(per_doc, groups, strict=True):
        by_group.setdefault(g, []).extend((len(s), s) for s in sents if _is_choice(s))
    for pool in by_group.values():
        pool.sort()
    lengths = {g: [length for length, _ in pool] for g, pool in by_group.items()}

    def distractors(answer: str, group: str) -> list[str] | None:
        """``choices - 1`` length-matched sentences from distinct other articles; None if there are too few."""
        ranges = {}
        for g in sorted(by_group):
            low = bisect.bisect_left(lengths[g], (1 - _LENGTH_TOLERANCE) * len(answer))
            high = bisect.bisect_right(lengths[g], (1 + _LENGTH_TOLERANCE) * len(answer))
            if g != group and high > low:
                ranges[g] = (low, high)
        if len(ranges) < choices - 1:
            return None
        return [by_group[g][rng.randrange(*ranges[g])][1] for g in rng.sample(sorted(ranges), choices - 1)]

    candidates = []  # per document, the sentences with enough text before them to make a context
    for sents in per_doc:
        words_before = np.cumsum([0] + [len(s.split()) for s in sents])
        positions = [k for k, s in enumerate(sents) if words_before[k] >= context_words and _is_choice(s)]
        rng.shuffle(positions)
        candidates.append(positions)
    order = list(range(len(documents)))
    rng.shuffle(order)
    items: list[MultipleChoiceItem] = []
    while len(items) < n and any(candidates):  # round-robin: one item per document per round
        for d in order:
            if len(items) == n or not candidates[d]:
                continue
            k = candidates[d].pop()
            sents = per_doc[d]
            wrong = distractors(sents[k], groups[d])
            if wrong is None:
                continue
            context = " ".join(" ".join(sents[:k]).split()[-context_words:])
            options = [sents[k], *wrong]
            rng.shuffle(options)
            items.append(MultipleChoiceItem(context=context, choices=tuple(options), answer=options.index(sents[k])))
    if len(items) < n:
        raise ValueError(
            f"the {split} documents yield only {len(items)} continuation items; asked for {n} "
            "(pass more documents or a smaller n / context_words)"
        )
    return items


def continuation_task(
    documents: Sequence[Document], *, n_dev: int, n_test: int, context_words: int = 40, choices: int = 4, seed: int = 0
) -> dict[str, list[MultipleChoiceItem]]:
    """Which sentence comes next? ``{"dev": [...], "test": [...]}`` multiple-choice items from real text.

    The context is the last ``context_words`` words before a sentence of an article; the right choice is
    that sentence, the ``choices - 1`` others are sentences of 8-40 words from *other* articles of the
    same split whose length is within 20 % of the right one's, so that length gives nothing away and only
    coherence and topic decide. Dev and test come from the dev and test articles of
    ``heldout_text_split(documents, seed)``: calibrate on its calibration part with the same seed.
    Items are drawn round-robin over the documents (one per document per round) for variety.
    """
    if min(n_dev, n_test) < 1:
        raise ValueError(f"n_dev and n_test must be positive, got {n_dev} and {n_test}")
    if choices < 2:
        raise ValueError(f"need at least 2 choices, got {choices}")
    if context_words < 1:
        raise ValueError(f"context_words must be positive, got {context_words}")
    _, dev_docs, test_docs = heldout_text_split(documents, seed)
    rng = random.Random(seed)
    return {
        split: _items(docs, n, context_words=context_words, choices=choices, rng=rng, split=split)
        for split, docs, n in (("dev", dev_docs, n_dev), ("test", test_docs, n_test))
    }
