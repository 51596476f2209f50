"""Chunking: cut documents into the passages an index scores, keeping exact character offsets.

Three chunkers, from dumbest to smartest:

- :func:`chunk_by_tokens`: fixed windows of ``size`` tokens that overlap by ``overlap`` tokens, so a
  sentence cut by one boundary appears whole in the next window. Tokens are any spans: words by
  default, or a model's tokens (:func:`tokenizer_spans`) when chunks must fit an embedder's context.
- :func:`chunk_recursive`: split at the strongest boundary that makes pieces fit (headings, then
  blank lines, then lines, sentences, words), then merge neighbours back up to ``size``. The
  structure-aware splitter of LangChain's ``RecursiveCharacterTextSplitter``, with offsets kept.
- :func:`chunk_semantic`: embed each sentence and cut where consecutive sentences drift apart
  (cosine distance above a percentile of all distances in the document), so a chunk holds one topic.

Every chunk satisfies ``chunk.text == document.text[chunk.start:chunk.end]``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import numpy as np

from llmbook.rag.documents import Chunk, Document

Spans = list[tuple[int, int]]

# Boundaries from strongest to weakest; a match marks where a new piece starts.
STRUCTURE_SEPARATORS: tuple[str, ...] = (
    r"\n(?=#{1,6} )",  # Markdown heading (also what the HTML extractor writes)
    r"\n[ \t]*\n",  # blank line: paragraph
    r"\n",  # line
    r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])|(?<=[。！？；])",  # sentence end (English, Chinese)
    r"\s+",  # word
)


def word_spans(text: str) -> Spans:
    """Whitespace-separated words as ``(start, end)`` character spans."""
    return [match.span() for match in re.finditer(r"\S+", text)]


def tokenizer_spans(tokenizer) -> Callable[[str], Spans]:
    """The character span of each token of a Hugging Face (fast) tokenizer, special tokens left out.

    Truncation is turned off explicitly: some ``tokenizer.json`` files (all-MiniLM-L6-v2's) truncate
    at 128 tokens, and a chunker counting tokens through them would see every document as one chunk.
    """

    def spans(text: str) -> Spans:
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, truncation=False)
        return [(start, end) for start, end in encoded["offset_mapping"] if end > start]

    return spans


def _chunks(document: Document, spans: Spans) -> list[Chunk]:
    return [Chunk(id=f"{document.id}#{n}", doc_id=document.id, text=document.text[start:end], start=start, end=end,
                  meta=document.meta) for n, (start, end) in enumerate(spans)]


def chunk_by_tokens(document: Document, *, size: int = 256, overlap: int = 32,
                    spans: Callable[[str], Spans] = word_spans) -> list[Chunk]:
    """Windows of ``size`` tokens, each starting ``size - overlap`` tokens after the previous one."""
    if size <= 0 or not 0 <= overlap < size:
        raise ValueError(f"need size > 0 and 0 <= overlap < size, got size={size}, overlap={overlap}")
    tokens = spans(document.text)
    windows = []
    for first in range(0, max(1, len(tokens) - overlap), size - overlap):
        window = tokens[first:first + size]
        if window:
            windows.append((window[0][0], window[-1][1]))
    return _chunks(document, windows)


def _split(text: str, start: int, end: int, separator: str) -> Spans:
    """``[start, end)`` cut at the start of each separator match (the separator stays with the next piece)."""
    cuts = sorted({start, end} | {start + m.start() for m in re.finditer(separator, text[start:end])})
    return [(a, b) for a, b in zip(cuts, cuts[1:], strict=False) if b > a]


def _recursive_spans(text: str, start: int, end: int, size: int, length: Callable[[str], int],
                     separators: Sequence[str]) -> Spans:
    if length(text[start:end]) <= size:
        return [(start, end)]
    level = next((i for i, sep in enumerate(separators) if len(_split(text, start, end, sep)) > 1), None)
    if level is None:  # no boundary at all: cut by characters
        return [(s, min(s + size, end)) for s in range(start, end, size)]
    pieces = _split(text, start, end, separators[level])
    merged: Spans = []
    for piece_start, piece_end in pieces:
        if merged and length(text[merged[-1][0]:piece_end]) <= size:
            merged[-1] = (merged[-1][0], piece_end)
        elif length(text[piece_start:piece_end]) <= size:
            merged.append((piece_start, piece_end))
        else:
            merged.extend(_recursive_spans(text, piece_start, piece_end, size, length, separators[level + 1:]))
    return merged


def _trimmed(text: str, spans: Spans) -> Spans:
    """Spans without leading/trailing whitespace; empty ones dropped."""
    out = []
    for start, end in spans:
        piece = text[start:end]
        lead, trail = len(piece) - len(piece.lstrip()), len(piece) - len(piece.rstrip())
        if end - trail > start + lead:
            out.append((start + lead, end - trail))
    return out


def chunk_recursive(document: Document, *, size: int = 1000, length: Callable[[str], int] = len,
                    separators: Sequence[str] = STRUCTURE_SEPARATORS) -> list[Chunk]:
    """Pieces of at most ``size`` (measured by ``length``: characters, or e.g. ``lambda s: len(tok(s))``).

    Split at the first separator (regex) that divides the text, merge consecutive pieces while they fit,
    and recurse into the pieces that are still too long with the weaker separators.
    """
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    text = document.text
    return _chunks(document, _trimmed(text, _recursive_spans(text, 0, len(text), size, length, separators)))


def sentence_spans(text: str) -> Spans:
    """Sentences (and lines, which end a sentence in lists, headings and code) as character spans."""
    spans = []
    for line_start, line_end in _trimmed(text, _split(text, 0, len(text), r"\n")):
        spans.extend(_trimmed(text, _split(text, line_start, line_end, STRUCTURE_SEPARATORS[3])))
    return spans


def semantic_breaks(embeddings: np.ndarray, percentile: float = 90.0) -> list[int]:
    """Indices ``i`` where a chunk ends after sentence ``i``: cosine distance to sentence ``i + 1`` above
    the ``percentile`` of the document's consecutive distances (the "percentile" rule of semantic chunking)."""
    if len(embeddings) < 2:
        return []
    unit = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)  # (N, D)
    distance = 1.0 - np.sum(unit[:-1] * unit[1:], axis=1)  # (N-1,)
    return [int(i) for i in np.flatnonzero(distance > np.percentile(distance, percentile))]


def chunk_semantic(document: Document, *, embed: Callable[[list[str]], np.ndarray], percentile: float = 90.0,
                   max_size: int = 2000, length: Callable[[str], int] = len) -> list[Chunk]:
    """Groups of consecutive sentences cut where the topic drifts; groups over ``max_size`` are cut again
    by :func:`chunk_recursive`. ``embed`` maps sentences to vectors (e.g. ``SentenceEmbedder.encode``)."""
    text = document.text
    sentences = sentence_spans(text)
    if not sentences:
        return []
    ends = [*semantic_breaks(np.asarray(embed([text[s:e] for s, e in sentences])), percentile), len(sentences) - 1]
    spans, first = [], 0
    for last in ends:
        start, end = sentences[first][0], sentences[last][1]
        spans.extend(_recursive_spans(text, start, end, max_size, length, STRUCTURE_SEPARATORS))
        first = last + 1
    return _chunks(document, _trimmed(text, spans))


CHUNKERS = ("none", "tokens", "recursive", "semantic")


def chunk_documents(documents: Sequence[Document], method: str = "recursive", **options) -> list[Chunk]:
    """All chunks of ``documents`` by one chunker (``"none"`` keeps each document whole)."""
    if method not in CHUNKERS:
        raise ValueError(f"unknown chunker {method!r}; choose one of {CHUNKERS}")
    if method == "none":
        return [chunk for d in documents for chunk in _chunks(d, [(0, len(d.text))])]
    chunker = {"tokens": chunk_by_tokens, "recursive": chunk_recursive, "semantic": chunk_semantic}[method]
    return [chunk for document in documents for chunk in chunker(document, **options)]
