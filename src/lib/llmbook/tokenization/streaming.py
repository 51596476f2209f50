"""Streaming encoders: the ids of `encode(whole text)` for text that arrives in pieces (a file, a corpus).

Why the ids are the same. BPE merges never cross a pre-token boundary, so the ids of a text are
the concatenation of the ids of its pre-tokens. If the text is cut only where the pre-tokenizer
itself would put a boundary, and the boundary does not depend on what comes after the cut, then
encoding the pieces one by one yields exactly the ids of the whole. Text is cut only where no
pre-token can cross:

* after a non-space character and before a space that is not a line break: no GPT-2, cl100k or
  o200k pre-token holds a non-space followed by such a space (the space starts the next word,
  " world"), so the cut is a boundary whatever follows;
* in a long run without such spaces (CJK, minified text), after a non-space character between two
  pre-tokens, at least `_STREAM_MARGIN` characters and two pre-tokens before the end of what has
  arrived, so text still to come cannot change where the pre-tokens before the cut end;
* never inside or across a special token: a tail that could still grow into one (`<|endof`) is
  held back until the next piece decides it.

Either way the text before the cut ends in a non-space character and no pre-token crosses the
cut, so its pre-tokens are those of the whole text.

Memory bound. Text is buffered until at least `chunk_chars` characters have arrived, then encoded
up to the last safe cut, and the rest stays buffered. The buffer therefore holds about
`chunk_chars` characters plus the longest run that cannot be cut (in practice one line or one
pre-token margin), whatever the total length; ids are yielded one at a time, never collected.
The tokenizer's word cache (bounded separately) is the only other state that grows.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from itertools import chain
from typing import Protocol

import regex

from .pretokenize import compile_pattern

_STREAM_MARGIN = 64  # characters a fallback cut stays away from the end of the text seen so far
_SAFE_CUT = regex.compile(r"\S(?=[^\S\r\n])", flags=regex.REVERSE)  # last non-space before a space (not \r \n)
_SPACE = regex.compile(r"\s")


class OrdinaryEncoder(Protocol):
    """What streaming needs of a tokenizer: its pre-tokenizer pattern, special tokens, ordinary encode."""

    pattern: str
    special_tokens: Mapping[str, int]

    def encode_ordinary(self, text: str) -> list[int]: ...


def encode_iterable(tok: OrdinaryEncoder, texts: Iterable[str], chunk_chars: int = 1 << 18) -> Iterator[int]:
    """Ids of the concatenation of `texts` (e.g. a file's lines), one at a time: `tok.encode("".join(texts))`.

    Memory stays near `chunk_chars` characters whatever the total length (plus the longest
    run of text that cannot be cut, and the word cache): text is encoded once at least
    `chunk_chars` have arrived, up to the last safe cut (see the module docstring).
    """
    if not isinstance(chunk_chars, int) or chunk_chars < 1:
        raise ValueError(f"chunk_chars must be a positive int, got {chunk_chars!r}")
    if isinstance(texts, (bytes, bytearray)):
        raise TypeError("texts must be an iterable of str, got bytes; decode it first")
    # checked above, when called; the ids come from a generator, as they are read
    return _encode_pieces(tok, [texts] if isinstance(texts, str) else texts, chunk_chars)


def _encode_pieces(tok: OrdinaryEncoder, pieces: Iterable[str], chunk_chars: int) -> Iterator[int]:
    stream = _OrdinaryStream(tok.encode_ordinary, compile_pattern(tok.pattern), chunk_chars)
    if not tok.special_tokens:
        for piece in pieces:
            yield from stream.add(_check_str(piece))
        yield from stream.flush()
        return
    for piece, is_special in _split_special_stream(map(_check_str, pieces), tok.special_tokens):
        if is_special:
            yield from stream.flush()
            yield tok.special_tokens[piece]
        else:
            yield from stream.add(piece)
    yield from stream.flush()


def encode_file(
    tok: OrdinaryEncoder,
    path: str | os.PathLike,
    chunk_chars: int = 1 << 18,
    encoding: str = "utf-8",
    errors: str = "strict",
) -> Iterator[int]:
    """Ids of a text file, streamed (:func:`encode_iterable` over reads of `chunk_chars` characters).

    The text is taken as stored: line ends are not translated (CR LF stays two characters).
    """
    if not isinstance(chunk_chars, int) or chunk_chars < 1:
        raise ValueError(f"chunk_chars must be a positive int, got {chunk_chars!r}")

    def reads() -> Iterator[str]:
        with open(path, encoding=encoding, errors=errors, newline="") as f:
            while piece := f.read(chunk_chars):
                yield piece

    return encode_iterable(tok, reads(), chunk_chars)


def _check_str(piece: object) -> str:
    if not isinstance(piece, str):
        raise TypeError(f"texts must hold str, got an item of type {type(piece).__name__}")
    return piece


def _split_special_stream(pieces: Iterable[str], specials: Mapping[str, int]) -> Iterator[tuple[str, bool]]:
    """(text, is_special) as `split_special` gives for the whole concatenation, but streamed.

    A tail that could still grow into a special token (a proper prefix of one, e.g. `<|endof`
    or a whole `<|endoftext|>` when `<|endoftext|><|endoftext|>` is also special) is held back;
    any match starting before that tail is final, since a longer one there would have to reach
    past the text seen so far. Ordinary text may come out in several pieces.
    """
    matcher = regex.compile("|".join(regex.escape(t) for t in sorted(specials, key=len, reverse=True)))
    prefixes = {t[:k] for t in specials for k in range(1, len(t))}
    longest = max(map(len, prefixes), default=0)
    hold = ""
    for piece in chain(pieces, [None]):
        buf = hold + (piece or "")
        tail = next((k for k in range(min(longest, len(buf)), 0, -1) if buf[-k:] in prefixes), 0)
        limit = len(buf) if piece is None else len(buf) - tail  # at the end nothing can grow any more
        pos = 0
        for m in matcher.finditer(buf):
            if m.start() >= limit:
                break
            if m.start() > pos:
                yield buf[pos : m.start()], False
            yield m.group(), True
            pos = m.end()
        cut = max(pos, limit)
        if cut > pos:
            yield buf[pos:cut], False
        hold = buf[cut:]


class _OrdinaryStream:
    """Buffers text between special tokens and encodes it up to safe cuts (see the module docstring)."""

    def __init__(self, encode: Callable[[str], list[int]], pretokenizer: regex.Pattern, chunk_chars: int) -> None:
        self.encode, self.pretokenizer, self.chunk = encode, pretokenizer, chunk_chars
        self.parts: list[str] = []
        self.size = 0
        self.next_try = chunk_chars  # buffer size at which to look for a cut again

    def add(self, text: str) -> list[int]:
        self.parts.append(text)
        self.size += len(text)
        if self.size < self.next_try:
            return []
        buf = "".join(self.parts)
        m = _SAFE_CUT.search(buf)
        cut = m.end() if m else 0
        if len(buf) - cut > self.chunk:  # a long run without a space: cut between pre-tokens
            limit = len(buf) - _STREAM_MARGIN
            last_two: deque[int] = deque(maxlen=2)  # starts of the last two pre-tokens: they stay buffered
            ends_word: deque[int] = deque(maxlen=3)  # recent starts right after a non-space character
            for w in self.pretokenizer.finditer(buf, cut):
                st = w.start()
                last_two.append(st)
                if cut < st <= limit and not _SPACE.match(buf, st - 1):
                    ends_word.append(st)
            if len(last_two) == 2:
                cut = max([cut] + [st for st in ends_word if st <= last_two[0]])
        self.parts, self.size = [buf[cut:]], len(buf) - cut
        self.next_try = self.size + self.chunk  # retry once another chunk has arrived
        return self.encode(buf[:cut]) if cut else []

    def flush(self) -> list[int]:
        buf = "".join(self.parts)
        self.parts, self.size, self.next_try = [], 0, self.chunk
        return self.encode(buf) if buf else []
