"""Labelled retrieval data: FAQ question -> answer pairs, plus distractor documents.

Two bundled files (built by ``data/build_faq.py`` from Debian and PyPI packages; provenance and
licences in ``data/README.md``):

* ``faq.jsonl.gz``: one question/answer pair per line from the Python FAQ, perlfaq1-9 and the
  Debian FAQ in English and Simplified Chinese. The two Debian versions of a question share a
  ``pair`` key, so the Chinese question can be asked of the English answers (cross-lingual).
* ``rag_distractors.jsonl.gz``: Wikipedia articles, Python library reference sections and
  Debian Reference sections (English and Chinese), 300-6000 characters each.

A retrieval evaluation indexes ``faq_documents(pairs)`` (each answer, id = the pair's id) plus
``load_distractors()``, asks each ``pair.question`` and checks whether ``pair.id`` comes back:
recall@k and MRR. ``split_faq`` gives the dev split to tune on and the test split to report.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from llmbook.data.corpora import DATA_DIR_ENV, data_dir
from llmbook.rag.documents import Document

__all__ = [
    "FAQ_FILE",
    "DISTRACTORS_FILE",
    "FAQ_SOURCES",
    "DISTRACTOR_SOURCES",
    "LANGS",
    "FaqPair",
    "load_faq",
    "split_faq",
    "load_distractors",
    "faq_documents",
]

FAQ_FILE = "faq.jsonl.gz"  # question/answer pairs, in the data directory
DISTRACTORS_FILE = "rag_distractors.jsonl.gz"  # documents the answers are pooled among
FAQ_SOURCES = ("python-faq", "perlfaq", "debian-faq")
DISTRACTOR_SOURCES = ("wikipedia", "python-docs", "debian-reference")
LANGS = ("en", "zh")


@dataclass(frozen=True, kw_only=True)
class FaqPair:
    id: str  # "python-faq-<file>-<slug>", "perlfaq-<n>-<slug>" or "debian-faq-<en|zh>-<section id>"
    source: str  # one of FAQ_SOURCES
    lang: str  # "en" or "zh"
    question: str  # the heading, as the FAQ asks it
    answer: str  # plain text; paragraphs separated by one blank line, code indented by four spaces
    pair: str | None  # shared by the English and Chinese versions of a Debian question; None otherwise
    meta: dict[str, Any]  # file, licence, section, package (Debian package and version)


def _read_jsonl(name: str) -> Iterator[dict[str, Any]]:
    path = data_dir() / name
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: rebuild it with data/build_faq.py, or point {DATA_DIR_ENV} "
            f"to a directory holding {name}"
        )
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def _check_choice(name: str, value: str | None, valid: Sequence[str]) -> None:
    if value is not None and value not in valid:
        raise ValueError(f"{name} must be one of {list(valid)} or None, got {value!r}")


def _check_sources(sources: Sequence[str] | None, valid: Sequence[str]) -> None:
    if sources is None:
        return
    if isinstance(sources, str):
        raise ValueError(f"sources must be a sequence of names (e.g. [{sources!r}]), not a str")
    unknown = [s for s in sources if s not in valid]
    if unknown:
        raise ValueError(f"unknown sources {unknown}; valid sources are {list(valid)}")


def load_faq(*, sources: Sequence[str] | None = None, lang: str | None = None) -> list[FaqPair]:
    """The FAQ pairs in file order (Python FAQ, perlfaq, Debian English, Debian Chinese),
    optionally only those of some ``sources`` and/or one ``lang``."""
    _check_sources(sources, FAQ_SOURCES)
    _check_choice("lang", lang, LANGS)
    keep = set(sources) if sources is not None else set(FAQ_SOURCES)
    return [
        FaqPair(id=r["id"], source=r["source"], lang=r["lang"], question=r["question"], answer=r["answer"],
                pair=r["pair"], meta=r["meta"])
        for r in _read_jsonl(FAQ_FILE)
        if r["source"] in keep and (lang is None or r["lang"] == lang)
    ]


def _rank(key: str, seed: int) -> bytes:
    return hashlib.sha256(f"{seed}\0{key}".encode()).digest()


def split_faq(
    pairs: Sequence[FaqPair], *, dev_fraction: float = 0.5, seed: int = 0
) -> tuple[list[FaqPair], list[FaqPair]]:
    """Deterministic (dev, test) split, stratified per source.

    Each question is keyed by ``pair or id`` (so both languages of a Debian question share a key).
    Within each source the distinct keys are ordered by ``sha256(seed, key)`` and the first
    ``round(dev_fraction * n_keys)`` go to dev. The split depends only on the keys of each source,
    not on list order, and a whole source or one language of it splits the same way as the full
    set (the build keeps a Debian question only when both languages have an answer). Both lists
    keep the input order.
    """
    if not 0.0 < dev_fraction < 1.0:
        raise ValueError(f"dev_fraction must be in (0, 1), got {dev_fraction}")
    if any(not isinstance(p, FaqPair) for p in pairs):
        raise ValueError("pairs must be FaqPair objects (from load_faq)")
    ids = [p.id for p in pairs]
    if len(ids) != len(set(ids)):
        raise ValueError("pairs contain duplicate ids")
    dev_keys: set[str] = set()
    for source in sorted({p.source for p in pairs}):
        keys = sorted({p.pair or p.id for p in pairs if p.source == source}, key=lambda k: _rank(k, seed))
        dev_keys.update(keys[: round(dev_fraction * len(keys))])
    dev = [p for p in pairs if (p.pair or p.id) in dev_keys]
    test = [p for p in pairs if (p.pair or p.id) not in dev_keys]
    return dev, test


def load_distractors(*, lang: str | None = None, sources: Sequence[str] | None = None) -> list[Document]:
    """Distractor documents (``meta``: source, licence, lang, title) in file order: Wikipedia,
    Python library reference, Debian Reference English, then Chinese."""
    _check_sources(sources, DISTRACTOR_SOURCES)
    _check_choice("lang", lang, LANGS)
    keep = set(sources) if sources is not None else set(DISTRACTOR_SOURCES)
    return [
        Document(id=r["id"], text=r["text"], meta=r["meta"])
        for r in _read_jsonl(DISTRACTORS_FILE)
        if r["meta"]["source"] in keep and (lang is None or r["meta"]["lang"] == lang)
    ]


def faq_documents(pairs: Sequence[FaqPair]) -> list[Document]:
    """Each answer as the document a retriever indexes: id = the pair's id, text = the answer.
    The question stays out of the text (it is what gets asked) and is kept in ``meta``."""
    return [
        Document(id=p.id, text=p.answer,
                 meta={"source": p.source, "lang": p.lang, "question": p.question, "pair": p.pair,
                       "licence": p.meta.get("licence")})
        for p in pairs
    ]
