"""Documents and chunks: what a retrieval index stores and returns.

A :class:`Document` is one file or JSONL row; a :class:`Chunk` is a span of it that the index
embeds and scores. Every chunk keeps its document id and character offsets, so a search hit can
always be traced back to the exact text in the source (``doc.text[chunk.start:chunk.end]``).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmbook.data.extract import html_to_text
from llmbook.data.normalize import decode_bytes


@dataclass(frozen=True, kw_only=True)
class Document:
    id: str  # unique within an index; a file's path relative to the indexed folder, or the JSONL "id"
    text: str
    meta: dict[str, Any] = field(default_factory=dict)  # source, language, title...: carried to every hit


@dataclass(frozen=True, kw_only=True)
class Chunk:
    id: str  # "<doc_id>#<n>", n counting the document's chunks from 0
    doc_id: str
    text: str  # == document.text[start:end]
    start: int  # character offsets into the document's text
    end: int
    meta: dict[str, Any] = field(default_factory=dict)


# Loading a user's files ------------------------------------------------------------------------------

TEXT_SUFFIXES = frozenset({".txt", ".md", ".markdown", ".rst", ".text", ""})
HTML_SUFFIXES = frozenset({".html", ".htm", ".xhtml"})
JSONL_SUFFIXES = frozenset({".jsonl", ".ndjson"})
SUPPORTED = TEXT_SUFFIXES | HTML_SUFFIXES | JSONL_SUFFIXES


@dataclass(kw_only=True)
class LoadReport:
    documents: list[Document]
    skipped: list[tuple[str, str]]  # (path or "path:line", why): empty, binary, unsupported, malformed row
    replaced_chars: int = 0  # undecodable bytes replaced by U+FFFD (documents kept)


def _looks_binary(data: bytes) -> bool:
    """NUL bytes, or many control bytes, in the first 8 KiB: how `grep` and git decide."""
    head = data[:8192]
    if b"\x00" in head:
        return True
    controls = sum(byte < 9 or 13 < byte < 32 for byte in head)
    return controls > 0.1 * max(1, len(head))


def _files(paths: Sequence[str | Path]) -> list[tuple[Path, str]]:
    """Every file under ``paths`` (folders recursed, hidden entries skipped) with the id it gets."""
    found = []
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_dir():
            for file in sorted(p for p in path.rglob("*") if p.is_file()):
                relative = file.relative_to(path)
                if not any(part.startswith(".") for part in relative.parts):
                    found.append((file, relative.as_posix()))
        elif path.is_file():
            found.append((path, path.name))
        else:
            raise FileNotFoundError(f"no such file or folder: {path}")
    return found


def load_documents(paths: Sequence[str | Path]) -> LoadReport:
    """Documents from files and folders: text/Markdown/reST, HTML (main text extracted) and JSONL.

    JSONL rows need ``"text"`` (and take ``"id"``, else ``<file>:<line>``); other keys go to ``meta``.
    Bytes are decoded as UTF-8 with per-line fallbacks (GB18030, CP1252); what cannot be read, or is
    empty, is skipped and listed in the report with the reason, never raised.
    """
    documents: list[Document] = []
    report = LoadReport(documents=documents, skipped=[])
    for file, doc_id in _files(paths):
        suffix = file.suffix.lower()
        if suffix not in SUPPORTED:
            report.skipped.append((str(file), f"unsupported file type {suffix!r}"))
            continue
        data = file.read_bytes()
        if _looks_binary(data):
            report.skipped.append((str(file), "binary content"))
            continue
        text, replaced = decode_bytes(data)
        report.replaced_chars += replaced
        if suffix in JSONL_SUFFIXES:
            documents.extend(_jsonl_documents(text, file, doc_id, report))
            continue
        meta: dict[str, Any] = {"path": doc_id, "format": suffix.lstrip(".") or "txt"}
        if suffix in HTML_SUFFIXES:
            text, title = html_to_text(text)
            if title:
                meta["title"] = title
        text = text.replace("\r\n", "\n").strip()
        if not text:
            report.skipped.append((str(file), "empty"))
            continue
        documents.append(Document(id=doc_id, text=text, meta=meta))
    counts = Counter(d.id for d in documents)
    duplicated = [doc_id for doc_id, n in counts.items() if n > 1]
    if duplicated:
        raise ValueError(f"document ids must be unique; repeated: {sorted(duplicated)[:5]}")
    return report


def _jsonl_documents(text: str, file: Path, name: str, report: LoadReport) -> list[Document]:
    documents = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{file}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            report.skipped.append((where, f"malformed JSON ({error.msg})"))
            continue
        if not isinstance(row, dict) or not isinstance(row.get("text"), str) or not row["text"].strip():
            report.skipped.append((where, 'no non-empty "text" field'))
            continue
        meta = {key: value for key, value in row.items() if key not in ("id", "text")}
        meta = {**meta.pop("meta", {}), **meta} if isinstance(meta.get("meta"), dict) else meta
        documents.append(Document(id=str(row.get("id", f"{name}:{number}")), text=row["text"].strip(), meta=meta))
    return documents
