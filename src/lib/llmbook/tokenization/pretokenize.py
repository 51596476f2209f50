"""Pre-tokenization: the regex that cuts text into "words" before BPE, and special-token splitting.

Byte-level BPE never merges across a pre-token boundary, so the regex decides which merges are
possible at all (e.g. GPT-2 keeps a leading space on a word: `" the"`, and never merges letters
with digits or punctuation). Radford et al. 2019 (GPT-2); the cl100k/o200k patterns are the ones
tiktoken ships for GPT-3.5/4 and GPT-4o.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping

import regex

# GPT-2 (r50k_base) pattern, as tiktoken writes it (possessive quantifiers; same splits as the
# original `'s|'t|...| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`).
GPT2_PATTERN = (
    r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
)

# cl100k_base (GPT-3.5/4): case-insensitive contractions, numbers in groups of at most 3 digits.
CL100K_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)

# o200k_base (GPT-4o): splits CamelCase words, keeps contractions attached to the word.
O200K_PATTERN = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"""
        r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"""
        r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)

PATTERNS: dict[str, str] = {"gpt2": GPT2_PATTERN, "cl100k": CL100K_PATTERN, "o200k": O200K_PATTERN}

# BERT-style pre-tokenizer (used by WordPiece): split on whitespace, isolate each punctuation
# character (Unicode P* or ASCII symbol, as HF `BertPreTokenizer` does).
_BERT_PUNCT = r"\p{P}!-/:-@\[-`{-~"
BERT_PATTERN = rf"[^\s{_BERT_PUNCT}]+|[{_BERT_PUNCT}]"

_compiled: dict[str, regex.Pattern] = {}


def compile_pattern(pattern: str) -> regex.Pattern:
    """Compile (and memoise) a pre-tokenization regex; a name from `PATTERNS` is also accepted."""
    pattern = PATTERNS.get(pattern, pattern)
    if pattern not in _compiled:
        _compiled[pattern] = regex.compile(pattern)
    return _compiled[pattern]


def pretokenize(text: str, pattern: str = GPT2_PATTERN) -> list[str]:
    """Cut `text` into pre-tokens with `pattern`; "".join(result) == text for the GPT patterns."""
    return compile_pattern(pattern).findall(text)


def split_special(text: str, special_tokens: Iterable[str]) -> list[tuple[str, bool]]:
    """Split `text` around occurrences of special tokens: [(chunk, is_special), ...].

    Longer special tokens win when two start at the same place, so a special token is never split
    and never merged with its neighbours. Empty chunks are dropped.
    """
    specials = sorted(set(special_tokens), key=len, reverse=True)
    if not specials:
        return [(text, False)] if text else []
    splitter = regex.compile("(" + "|".join(regex.escape(s) for s in specials) + ")")
    out: list[tuple[str, bool]] = []
    for i, chunk in enumerate(splitter.split(text)):
        if chunk:
            out.append((chunk, i % 2 == 1))
    return out


def encode_with_specials(
    text: str,
    special_tokens: Mapping[str, int],
    encode_chunk: Callable[[str], list[int]],
) -> list[int]:
    """Ids of `text`: each special token as its own id, every chunk between them by `encode_chunk`."""
    out: list[int] = []
    for chunk, is_special in split_special(text, special_tokens):
        if is_special:
            out.append(special_tokens[chunk])
        else:
            out.extend(encode_chunk(chunk))
    return out


def iter_texts(texts: str | Iterable[str]) -> Iterator[str]:
    """Accept one string or an iterable of strings (the `train_*` input); reject anything else."""
    if isinstance(texts, str):
        yield texts
        return
    if isinstance(texts, bytes):
        raise TypeError("texts must be a str or an iterable of str, got bytes; decode it first")
    for t in texts:
        if not isinstance(t, str):
            raise TypeError(f"texts must be a str or an iterable of str, got an item of type {type(t).__name__}")
        yield t


def count_words(
    texts: str | Iterable[str], pattern: str, special_tokens: Iterable[str] = ()
) -> dict[str, int]:
    """Count unique pre-tokens over `texts` (special tokens are cut out and never counted).

    Training only ever looks at these unique words and their counts, which is what makes a
    Python BPE trainer fast enough: a few hundred thousand words instead of millions of bytes.
    """
    compiled = compile_pattern(pattern)
    specials = list(special_tokens)
    counts: Counter[str] = Counter()
    for text in iter_texts(texts):
        chunks = split_special(text, specials) if specials else [(text, False)]
        for chunk, is_special in chunks:
            if not is_special:
                counts.update(compiled.findall(chunk))  # one C-level regex pass + C-level counting
    return counts
