"""Grounded answers: a chat model answers from retrieved passages and cites them, or says it does not know.

The passages are numbered in the prompt (``[1] ...``, ``[2] ...``) and the model is asked to cite the
numbers it used; :func:`parse_citations` maps them back to chunk ids. When the best retrieval score is
below a threshold (tuned on dev questions whose answers are absent from the index) the question is
refused without calling the model: a small model asked to answer from irrelevant text invents.

Two checks of an answer, both computable without a judge model:

- citation precision: the share of cited passages that belong to a relevant document;
- support: the share of the answer's content tokens that occur in the passages it cites
  (a lexical proxy for "every claim is backed by a citation").
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from llmbook.alignment.rollouts import generate, render_prompts
from llmbook.rag.index import Hit
from llmbook.rag.tokens import ENGLISH_STOPWORDS, search_tokens

REFUSAL = "I don't know: none of the retrieved passages answers this question."
SYSTEM = ("You answer questions using only the numbered passages you are given. After each sentence, cite the "
          "passage numbers that support it in square brackets, like [1]. If the passages do not contain the "
          "answer, reply exactly: I don't know.")


@dataclass(frozen=True, kw_only=True)
class GroundedAnswer:
    question: str
    text: str
    citations: list[str]  # chunk ids the answer cites, in order of first citation
    passages: list[Hit]  # what the model was shown, numbered from 1
    refused: bool  # True when retrieval found nothing above the threshold, or the model said it does not know


def passages_prompt(question: str, passages: Sequence[Hit], *, max_chars: int = 800) -> str:
    """The user message: numbered passages (each cut to ``max_chars``), then the question."""
    numbered = "\n\n".join(f"[{n}] {hit.text[:max_chars]}" for n, hit in enumerate(passages, start=1))
    return f"Passages:\n\n{numbered}\n\nQuestion: {question}"


def parse_citations(text: str, passages: Sequence[Hit]) -> list[str]:
    """Chunk ids of the passages cited as ``[n]`` or ``[n, m]`` in ``text`` (out-of-range numbers ignored)."""
    cited: list[str] = []
    for group in re.findall(r"\[(\d+(?:\s*,\s*\d+)*)\]", text):
        for number in map(int, group.split(",")):
            if 1 <= number <= len(passages) and passages[number - 1].chunk_id not in cited:
                cited.append(passages[number - 1].chunk_id)
    return cited


def is_refusal(text: str) -> bool:
    return bool(re.search(r"\b(i don'?t know|i do not know|cannot answer|can't answer)\b", text.lower()))


def answer_questions(questions: Sequence[str], retrieved: Sequence[Sequence[Hit]], model: Any, tokenizer: Any, *,
                     min_score: float | None = None, max_new_tokens: int = 96, max_chars: int = 800,
                     progress: str | None = None) -> list[GroundedAnswer]:
    """Greedy grounded answers; a question whose best hit scores below ``min_score`` is refused unasked."""
    if len(questions) != len(retrieved):
        raise ValueError(f"{len(questions)} questions but {len(retrieved)} retrieval results")
    asked = [i for i, hits in enumerate(retrieved) if hits and (min_score is None or hits[0].score >= min_score)]
    prompts = render_prompts(tokenizer, [passages_prompt(questions[i], retrieved[i], max_chars=max_chars)
                                         for i in asked], system=SYSTEM)
    texts = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, do_sample=False, batch_size=4,
                     progress=progress).texts if prompts else []
    replies = dict(zip(asked, texts, strict=True))
    answers = []
    for i, question in enumerate(questions):
        text = replies.get(i)
        if text is None:
            answers.append(GroundedAnswer(question=question, text=REFUSAL, citations=[], passages=list(retrieved[i]),
                                          refused=True))
        else:
            answers.append(GroundedAnswer(question=question, text=text.strip(), citations=parse_citations(
                text, retrieved[i]), passages=list(retrieved[i]), refused=is_refusal(text)))
    return answers


def _content_tokens(text: str) -> list[str]:
    return [t for t in search_tokens(re.sub(r"\[\d+(?:\s*,\s*\d+)*\]", " ", text), stopwords=ENGLISH_STOPWORDS)
            if len(t) > 1 or not t.isascii()]


def citation_precision(answer: GroundedAnswer, relevant_docs: set[str]) -> float | None:
    """Share of cited passages from a relevant document (None when nothing is cited)."""
    if not answer.citations:
        return None
    by_id = {hit.chunk_id: hit for hit in answer.passages}
    return sum(by_id[c].doc_id in relevant_docs for c in answer.citations) / len(answer.citations)


def answer_support(answer: GroundedAnswer) -> float | None:
    """Share of the answer's content tokens found in the passages it cites (None without citations or content)."""
    tokens = _content_tokens(answer.text)
    if not answer.citations or not tokens:
        return None
    by_id = {hit.chunk_id: hit for hit in answer.passages}
    cited = set(_content_tokens(" ".join(by_id[c].text for c in answer.citations)))
    return sum(t in cited for t in tokens) / len(tokens)
