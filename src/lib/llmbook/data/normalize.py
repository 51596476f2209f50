"""Text normalisation, the first pipeline stage: bytes -> clean Unicode text.

Steps (each a pure function, composed by :func:`normalize_text`):

1. :func:`decode_bytes` - UTF-8 with per-line fallback encodings (mixed-encoding dumps), then
   replacement (U+FFFD) for what still fails; the number of replacements is counted, never raised.
2. :func:`normalize_unicode` - NFC (canonical: keeps full-width CJK punctuation and ligatures)
   or NFKC (compatibility: folds full-width ASCII, ligatures, superscripts; what most LLM
   pipelines and tokenizers use, e.g. SentencePiece's default ``nmt_nfkc``).
3. :func:`remove_control_chars` - C0/C1 controls except ``\\t``/``\\n``, zero-width and BOM
   characters, lone surrogates.
4. :func:`normalize_whitespace` - CRLF -> LF, Unicode spaces -> ASCII space, runs collapsed,
   trailing spaces stripped, at most one blank line in a row.
5. :func:`remove_boilerplate_lines` - line-level rules in the style of C4 (arXiv:1910.10683):
   lines mentioning javascript/cookies/terms of use/"all rights reserved"/... are removed.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any

from llmbook.data.pipeline import Doc, Stage

REPLACEMENT = "\ufffd"

# C4 (arXiv:1910.10683, Sec. 2.2) drops lines with "javascript" and pages with "lorem ipsum";
# the rest are common web-page furniture phrases. Matched case-insensitively on short lines.
BOILERPLATE_PATTERNS: tuple[str, ...] = (
    r"javascript",
    r"lorem ipsum",
    r"cookie(s)? (policy|settings|preferences)|(we|this site) uses? cookies",
    r"terms of (use|service)|privacy policy",
    r"all rights reserved|©|\(c\) ?\d{4}",
    r"click here|read more|subscribe (now|to our newsletter)|sign up for",
    r"share (this|on) (facebook|twitter)|follow us on",
    r"skip to (main )?content|back to top",
    r"project gutenberg",
    r"版权所有|隐私政策|点击这里|关注我们",
)
BOILERPLATE_MAX_WORDS = 30  # longer lines that merely mention a phrase are real content

_CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b-\u200f\u2028\u2029\u2060\ufeff]")
_SURROGATE_RE = re.compile(r"[\ud800-\udfff]")
_SPACES_RE = re.compile(r"[ \t\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]+")
_BLANKS_RE = re.compile(r"\n{3,}")


def decode_bytes(data: bytes | str, fallbacks: tuple[str, ...] = ("gb18030", "cp1252")) -> tuple[str, int]:
    """Decode ``data`` to text; return ``(text, n_replacement_chars_added)``; never raises.

    Whole-document UTF-8 first; on failure each line is tried as UTF-8, then each ``fallbacks``
    encoding (strict), then UTF-8 with replacement. ``str`` input passes through (lone
    surrogates are replaced and counted).
    """
    if isinstance(data, str):
        n = len(_SURROGATE_RE.findall(data))
        return (_SURROGATE_RE.sub(REPLACEMENT, data), n) if n else (data, 0)
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes or str, got {type(data).__name__}")
    data = bytes(data)
    try:
        return data.decode("utf-8"), 0
    except UnicodeDecodeError:
        pass
    out, added = [], 0
    for line in data.split(b"\n"):
        for enc in ("utf-8", *fallbacks):
            try:
                out.append(line.decode(enc))
                break
            except UnicodeDecodeError:
                continue
        else:
            text = line.decode("utf-8", errors="replace")
            added += text.count(REPLACEMENT) - line.count(REPLACEMENT.encode("utf-8"))
            out.append(text)
    return "\n".join(out), added


def normalize_unicode(text: str, form: str = "NFKC") -> str:
    """Unicode normalisation form ``form`` in {"NFC", "NFKC", "none"}."""
    if form == "none":
        return text
    if form not in ("NFC", "NFKC"):
        raise ValueError(f"form must be one of 'NFC', 'NFKC', 'none', got {form!r}")
    return unicodedata.normalize(form, text)


def remove_control_chars(text: str) -> tuple[str, int]:
    """Remove control, zero-width and BOM characters (keeping ``\\t``, ``\\n``, ``\\r``).

    Returns ``(text, n_removed)``.
    """
    text, n_sur = _SURROGATE_RE.subn(REPLACEMENT, text)
    text, n = _CONTROL_RE.subn("", text)
    return text, n


def normalize_whitespace(text: str) -> str:
    """CRLF/CR -> LF; Unicode spaces and tabs -> one space; strip each line; <= 1 blank line in a row."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = [_SPACES_RE.sub(" ", ln).strip() for ln in text.split("\n")]
    return _BLANKS_RE.sub("\n\n", "\n".join(lines)).strip("\n")


def remove_boilerplate_lines(
    text: str, patterns: tuple[str, ...] = BOILERPLATE_PATTERNS, max_words: int = BOILERPLATE_MAX_WORDS
) -> tuple[str, int]:
    """Drop lines of at most ``max_words`` words that match any of ``patterns``; return ``(text, n_removed)``."""
    rx = re.compile("|".join(f"(?:{p})" for p in patterns), re.IGNORECASE)
    kept, removed = [], 0
    for line in text.split("\n"):
        if line and len(line.split()) <= max_words and rx.search(line):
            removed += 1
        else:
            kept.append(line)
    return "\n".join(kept), removed


@dataclass(kw_only=True)
class NormalizeConfig:
    """Options of :func:`normalize_text`."""

    form: str = "NFKC"  # "NFC" keeps compatibility characters; "NFKC" folds them (most LLM data)
    fallbacks: tuple[str, ...] = ("gb18030", "cp1252")  # per-line encodings tried when UTF-8 fails
    boilerplate: bool = True  # remove C4-style furniture lines
    boilerplate_patterns: tuple[str, ...] = field(default=BOILERPLATE_PATTERNS)  # regexes, case-insensitive
    max_bad_char_frac: float = 0.1  # replacement+control chars per char above this -> "binary" drop

    def __post_init__(self) -> None:
        if self.form not in ("NFC", "NFKC", "none"):
            raise ValueError(f"form must be one of 'NFC', 'NFKC', 'none', got {self.form!r}")
        if not 0.0 <= self.max_bad_char_frac <= 1.0:
            raise ValueError(f"max_bad_char_frac must be in [0, 1], got {self.max_bad_char_frac}")


def normalize_text(data: bytes | str, cfg: NormalizeConfig | None = None) -> tuple[str, dict[str, Any]]:
    """Apply the normalisation steps in order; return ``(text, stats)``.

    ``stats`` holds ``replacements`` (U+FFFD added by decoding), ``control_removed``,
    ``boilerplate_lines`` and ``bad_char_frac`` ((U+FFFD + control chars) / chars).
    """
    cfg = cfg or NormalizeConfig()
    text, n_rep = decode_bytes(data, cfg.fallbacks)
    n_chars = max(len(text), 1)
    n_fffd = text.count(REPLACEMENT)
    text, n_ctrl = remove_control_chars(text)
    text = normalize_unicode(text, cfg.form)
    text = normalize_whitespace(text)
    n_bp = 0
    if cfg.boilerplate:
        text, n_bp = remove_boilerplate_lines(text, cfg.boilerplate_patterns)
        text = text.strip("\n")
    stats = {
        "replacements": n_rep,
        "control_removed": n_ctrl,
        "boilerplate_lines": n_bp,
        "bad_char_frac": (n_fffd + n_ctrl) / n_chars,
    }
    return text, stats


def normalize_stage(cfg: NormalizeConfig | None = None, name: str = "normalize") -> Stage:
    """A pipeline :class:`~llmbook.data.pipeline.Stage`: normalise, record stats in ``meta["normalize"]``.

    Drop reasons: ``"binary"`` (too many undecodable/control characters), ``"empty"``.
    """
    cfg = cfg or NormalizeConfig()

    def fn(doc: Doc) -> Doc | str:
        text, stats = normalize_text(doc["text"], cfg)
        if stats["bad_char_frac"] > cfg.max_bad_char_frac:
            return "binary"
        if not text.strip():
            return "empty"
        return {**doc, "text": text, "meta": {**doc.get("meta", {}), "normalize": stats}}

    return Stage(name=name, fn=fn)
