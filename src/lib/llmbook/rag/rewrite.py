"""Query rewriting with a chat model: HyDE and multi-query.

- HyDE (Gao et al., arXiv:2212.10496): let the model write a hypothetical answer and search with its
  embedding (here averaged with the question's), since an answer looks more like the passages than a
  question does. The invented facts do not matter; the vocabulary does.
- Multi-query: ask for several rephrasings, search with each, fuse the rankings with RRF, so one
  badly worded question does not decide recall.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from llmbook.alignment.rollouts import generate, render_prompts
from llmbook.rag.fusion import Ranked, reciprocal_rank_fusion
from llmbook.rag.index import Index

HYDE_SYSTEM = "Write a short passage (two or three sentences) that answers the question, as a FAQ answer would."
REPHRASE_SYSTEM = ("Rewrite the user's question in {n} different ways that keep its meaning. Reply with one question "
                   "per line and nothing else.")


def hypothetical_answers(questions: Sequence[str], model: Any, tokenizer: Any, *, max_new_tokens: int = 64,
                         progress: str | None = None) -> list[str]:
    """One greedy hypothetical answer per question (HyDE's "document")."""
    prompts = render_prompts(tokenizer, questions, system=HYDE_SYSTEM)
    return [t.strip() for t in generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, do_sample=False,
                                        batch_size=8, progress=progress).texts]


def rephrasings(questions: Sequence[str], model: Any, tokenizer: Any, *, n: int = 3, max_new_tokens: int = 80,
                progress: str | None = None) -> list[list[str]]:
    """Up to ``n`` rephrasings per question (lines of the reply; empty and duplicate lines dropped)."""
    prompts = render_prompts(tokenizer, questions, system=REPHRASE_SYSTEM.format(n=n))
    replies = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, do_sample=False, batch_size=8,
                       progress=progress).texts
    out = []
    for question, reply in zip(questions, replies, strict=True):
        lines = [line.strip(" -*0123456789.)\t") for line in reply.splitlines()]
        out.append([line for line in dict.fromkeys(lines) if line and line != question][:n])
    return out


def hyde_ranking(index: Index, question: str, hypothetical: str, k: int) -> Ranked:
    """Dense search with the unit mean of the question's and the hypothetical answer's embeddings."""
    vectors = index.embedder.encode([question, hypothetical])  # (2, D), unit rows
    mean = vectors.mean(axis=0)
    return index.dense_ranking(question, k, vector=mean / max(float(np.linalg.norm(mean)), 1e-12))


def multi_query_ranking(index: Index, question: str, variants: Sequence[str], k: int, *, mode: str | None = None,
                        rrf_k: float = 60.0) -> Ranked:
    """RRF over the rankings of the question and each of its rephrasings."""
    rankings = [[d for d, _ in index.ranking(q, k, mode=mode)] for q in [question, *variants]]
    return reciprocal_rank_fusion(rankings, k=rrf_k, limit=k)
