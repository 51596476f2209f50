"""Bundled public-domain corpora: listing, streaming documents, plain text, train/held-out split.

The repository's ``data/`` directory holds small gzipped JSON Lines corpora, one document per
line::

    {"id": "austen-emma-ch001", "text": "...", "meta": {"source": ..., "licence": ..., "lang": "en", ...}}

and a manifest ``data/corpora.json`` that names each corpus with its file, source, licence,
language and uncompressed text size. ``data/build_corpora.py`` rebuilds both from the package
registries (Debian, npm, PyPI); ``data/README.md`` records provenance and licences.

A document is a plain ``dict`` with keys ``id``, ``text`` and ``meta``: that is what the data
pipeline streams (filters, PII scrubbing, dedup all take and return such dicts). ``Document`` is
a typed view of the same record for code that prefers attributes; ``Document.as_dict()`` and
``Document.from_dict()`` convert.

The data directory is ``<repo root>/data`` (found from this file for an editable install) unless
the environment variable ``LLMBOOK_DATA_DIR`` names another one.
"""

from __future__ import annotations

import gzip
import json
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "DATA_DIR_ENV",
    "Document",
    "data_dir",
    "list_corpora",
    "corpus_info",
    "load_documents",
    "corpus_text",
    "split_text",
    "truncate_utf8",
    "hub_text",
]

DATA_DIR_ENV = "LLMBOOK_DATA_DIR"  # environment variable that overrides the data directory
MANIFEST = "corpora.json"  # manifest file name inside the data directory
DOC_SEPARATOR = "\n\n"  # joins documents in corpus_text and split_text


@dataclass(kw_only=True)
class Document:
    """One document of a corpus; the pipeline itself passes the equivalent plain dict."""

    id: str  # stable identifier, unique across all bundled corpora (e.g. "austen-emma-ch001")
    text: str  # the document text (a chapter, a poem, a collection of short poems)
    meta: dict[str, Any] = field(default_factory=dict)  # source, licence, lang, title, ...

    def as_dict(self) -> dict[str, Any]:
        """The plain-dict form ``{"id", "text", "meta"}`` that the data pipeline streams."""
        return {"id": self.id, "text": self.text, "meta": dict(self.meta)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Document:
        """Build from a ``{"id", "text", "meta"}`` dict (as yielded by ``load_documents``)."""
        return cls(id=d["id"], text=d["text"], meta=dict(d.get("meta", {})))


def data_dir() -> Path:
    """The directory holding the bundled corpora (``$LLMBOOK_DATA_DIR`` or ``<repo>/data``)."""
    env = os.environ.get(DATA_DIR_ENV)
    # src/lib/llmbook/data/corpora.py -> parents[4] is the repository root
    path = Path(env) if env else Path(__file__).resolve().parents[4] / "data"
    if not (path / MANIFEST).is_file():
        raise FileNotFoundError(
            f"bundled data not found: {path / MANIFEST} does not exist. Run from a checkout of the "
            f"llmbook repository (editable install) or set {DATA_DIR_ENV} to a directory holding "
            f"{MANIFEST} and the *.jsonl.gz corpora (rebuild them with data/build_corpora.py)."
        )
    return path


def _manifest() -> dict[str, dict[str, Any]]:
    with open(data_dir() / MANIFEST, encoding="utf-8") as f:
        return json.load(f)["corpora"]


def list_corpora() -> list[str]:
    """Names of the bundled corpora, sorted."""
    return sorted(_manifest())


def _languages(manifest: dict[str, dict[str, Any]]) -> list[str]:
    return sorted({info["lang"] for info in manifest.values()})


def corpus_info(name: str) -> dict[str, Any]:
    """Metadata of one corpus: ``file, source, licence, lang, bytes`` (UTF-8 text bytes),
    ``documents`` (count) and ``description``."""
    manifest = _manifest()
    if name not in manifest:
        raise ValueError(f"name must be one of {sorted(manifest)}, got {name!r}")
    return {"name": name, **manifest[name]}


def _read_corpus(path: Path) -> Iterator[dict[str, Any]]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def load_documents(
    name: str | None = None, *, lang: str | None = None, limit: int | None = None
) -> Iterator[dict[str, Any]]:
    """Stream documents ``{"id", "text", "meta"}`` of one corpus, or of all corpora of ``lang``.

    With neither ``name`` nor ``lang`` every corpus is streamed. Corpora come in sorted name
    order and documents in file order, so the stream is deterministic. ``limit`` caps the
    number of documents yielded in total.
    """
    manifest = _manifest()
    if name is not None and name not in manifest:
        raise ValueError(f"name must be one of {sorted(manifest)} or None, got {name!r}")
    if lang is not None and lang not in _languages(manifest):
        raise ValueError(f"lang must be one of {_languages(manifest)} or None, got {lang!r}")
    if limit is not None and (not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be a non-negative int or None, got {limit!r}")
    names = [name] if name is not None else sorted(manifest)
    if lang is not None:
        names = [n for n in names if manifest[n]["lang"] == lang]
    return _stream(names, manifest, limit)


def _stream(names: list[str], manifest: dict[str, dict[str, Any]], limit: int | None) -> Iterator[dict[str, Any]]:
    root = data_dir()
    count = 0
    for n in names:
        for doc in _read_corpus(root / manifest[n]["file"]):
            if limit is not None and count >= limit:
                return
            yield doc
            count += 1


def truncate_utf8(text: str, max_bytes: int) -> str:
    """The longest prefix of ``text`` whose UTF-8 encoding has at most ``max_bytes`` bytes
    (cut on a character boundary, never inside a multi-byte character)."""
    if max_bytes < 0:
        raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
    data = text.encode("utf-8")
    if len(data) <= max_bytes:
        return text
    # errors="ignore" drops the trailing partial character, if the cut fell inside one
    return data[:max_bytes].decode("utf-8", errors="ignore")


def corpus_text(lang: str, max_bytes: int | None = None) -> str:
    """All bundled text of one language: documents joined by ``"\\n\\n"`` in the deterministic
    ``load_documents(lang=lang)`` order, truncated to at most ``max_bytes`` UTF-8 bytes on a
    character boundary."""
    if max_bytes is not None and (not isinstance(max_bytes, int) or max_bytes < 0):
        raise ValueError(f"max_bytes must be a non-negative int or None, got {max_bytes!r}")
    parts: list[str] = []
    size = 0
    for doc in load_documents(lang=lang):
        parts.append(doc["text"])
        size += len(doc["text"].encode("utf-8")) + len(DOC_SEPARATOR)
        if max_bytes is not None and size > max_bytes:
            break  # enough text read; stop streaming
    text = DOC_SEPARATOR.join(parts)
    return text if max_bytes is None else truncate_utf8(text, max_bytes)


def split_text(text: str, heldout_fraction: float, seed: int = 0) -> tuple[str, str]:
    """Deterministic train / held-out split of ``text`` at document boundaries.

    ``text`` is cut into documents at blank lines (``"\\n\\n"``, as ``corpus_text`` joins them);
    a seeded shuffle of the document indices picks ``round(heldout_fraction * n)`` held-out
    documents (at least one when ``0 < heldout_fraction`` and ``n >= 2``, and never all of them).
    Each part keeps the original document order and is re-joined with ``"\\n\\n"``.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be str, got {type(text).__name__}")
    if not 0.0 <= heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must be in [0, 1), got {heldout_fraction}")
    docs = [d for d in text.split(DOC_SEPARATOR) if d.strip()]
    n = len(docs)
    k = round(heldout_fraction * n)
    if heldout_fraction > 0 and n >= 2:
        k = min(max(k, 1), n - 1)
    else:
        k = min(k, max(n - 1, 0))
    order = list(range(n))
    random.Random(seed).shuffle(order)
    held = set(order[:k])
    train = DOC_SEPARATOR.join(d for i, d in enumerate(docs) if i not in held)
    heldout = DOC_SEPARATOR.join(d for i, d in enumerate(docs) if i in held)
    return train, heldout


def hub_text(dataset: str, max_bytes: int, *, column: str = "text", split: str = "train") -> str:
    """Up to `max_bytes` of text streamed from a Hugging Face hub dataset (gpu profile; needs network).

    Documents are joined like `corpus_text`; needs the `datasets` package (the `gpu` extra).
    """
    try:
        from datasets import load_dataset
    except ImportError as error:
        raise ImportError("hub_text needs the `datasets` package: pip install -e '.[gpu]'") from error
    parts, size = [], 0
    for row in load_dataset(dataset, split=split, streaming=True):
        if column not in row:
            raise ValueError(f"dataset {dataset!r} has no column {column!r}; columns: {sorted(row)}")
        parts.append(row[column])
        size += len(row[column].encode("utf-8")) + len(DOC_SEPARATOR)
        if size >= max_bytes:
            break
    return truncate_utf8(DOC_SEPARATOR.join(parts), max_bytes)
