"""The one JSON file format of the from-scratch tokenizers: a kind, a format version, and fields.

Every tokenizer's `save` / `load` goes through `write_tokenizer_json` / `read_tokenizer_json`, so
the checks a loader needs (is this JSON, is it our kind of tokenizer, is it a version we can read,
are all fields there) are written once and fail with one `TokenizerFileError` that names the file,
instead of a `KeyError` deep inside a constructor. A file is one JSON object:

    {"kind": "byte_bpe", "format_version": 1, <the kind's fields>}

Files written before the version field existed have no "format_version" and read as version 1
(the fields did not change). `TOKENIZER_FIELDS` lists each kind's fields; that is the whole format.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

FORMAT_VERSION = 1  # bump when a kind's fields change meaning; readers refuse newer versions

# kind -> the fields its JSON object holds besides "kind" and "format_version"
TOKENIZER_FIELDS: dict[str, tuple[str, ...]] = {
    "byte_bpe": ("pattern", "tokens", "merges", "special_tokens"),
    "char_bpe": ("pattern", "tokens", "merges", "special_tokens"),
    "wordpiece": ("vocab", "unk_token", "special_tokens", "pattern", "max_input_chars_per_word"),
    "unigram": ("pieces", "special_tokens", "max_piece_length"),
}


class TokenizerFileError(ValueError):
    """A file that is not a readable tokenizer file of the expected kind (bad JSON, kind, version, fields)."""


def _check_kind(kind: str) -> tuple[str, ...]:
    if kind not in TOKENIZER_FIELDS:
        raise ValueError(f"kind must be one of {sorted(TOKENIZER_FIELDS)}, got {kind!r}")
    return TOKENIZER_FIELDS[kind]


def write_tokenizer_json(path: str | Path, kind: str, payload: Mapping[str, Any]) -> Path:
    """Write `payload` (exactly the fields of `kind`) as a tokenizer file at `path`; returns the path.

    The text is UTF-8 with non-ASCII characters kept as they are, so Chinese tokens stay readable.
    """
    fields = _check_kind(kind)
    if set(payload) != set(fields):
        raise ValueError(f"a {kind} payload has the fields {list(fields)}, got {sorted(payload)}")
    doc = {"kind": kind, "format_version": FORMAT_VERSION, **payload}
    path = Path(path)
    path.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    return path


def read_tokenizer_json(path: str | Path, expected_kind: str) -> dict[str, Any]:
    """The fields of the tokenizer file at `path`, after checking it is a `expected_kind` file we can read.

    Raises `TokenizerFileError` (a `ValueError`) if the file is not JSON, not an object, of another
    kind, of a newer format version, or lacks a field; `FileNotFoundError` if it does not exist.
    """
    fields = _check_kind(expected_kind)
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise TokenizerFileError(f"{path} is not a {expected_kind} tokenizer file: not JSON ({error})") from None
    if not isinstance(doc, dict):
        raise TokenizerFileError(f"{path} is not a {expected_kind} tokenizer file: a JSON {type(doc).__name__}")
    if doc.get("kind") != expected_kind:
        raise TokenizerFileError(f"{path} is not a {expected_kind} tokenizer file (kind={doc.get('kind')!r})")
    version = doc.get("format_version", 1)  # files written before the field existed are version 1
    if not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise TokenizerFileError(
            f"{path} has format_version {version!r}; this llmbook reads versions 1..{FORMAT_VERSION}"
        )
    missing = [f for f in fields if f not in doc]
    if missing:
        raise TokenizerFileError(f"{path} is a {expected_kind} tokenizer file without the fields {missing}")
    return {f: doc[f] for f in fields}
