"""Search tokens: the terms a sparse (BM25) index stores for English prose, code and CJK text.

A lexical index can only match what its tokeniser produces, so this one is written for the three
kinds of text a technical knowledge base mixes:

* **Words** in any alphabetic script (Latin, Greek, Cyrillic...) and digits, found by a Unicode-aware
  regex after NFKC normalisation, which folds full-width letters and digits (``ＡＢＣ１２３`` ->
  ``ABC123``) and ligatures (``ﬁ`` -> ``fi``) to their plain forms.
* **CJK** (Han, Hiragana/Katakana, Hangul): Chinese and Japanese are written without spaces, so a regex
  cannot find word boundaries and a dictionary segmenter (jieba, MeCab) would be one more model to ship
  and to keep in sync between index and query. Overlapping character bigrams are the classic
  segmenter-free unit instead: ``检索增强`` -> ``检索 索增 增强``. Every real two-character word is among
  them, and bigram indexing performs about as well as word segmentation for Chinese retrieval (Nie et
  al. 2000, "On the use of words and n-grams for Chinese information retrieval"). It is what Lucene's
  ``CJKBigramFilter`` and Elasticsearch's ``cjk`` analyzer do. ``cjk="unigram"`` indexes single
  characters (high recall, poor precision); ``"both"`` emits both. A one-character run stays a unigram.
* **Code identifiers**: ``parse_args``, ``getElementById``, ``os.path.join``, ``HTTPServer`` are emitted
  whole *and* as their parts, so the query "element by id" finds ``getElementById`` while the exact
  identifier still scores highest (it matches the whole token too). The rule, applied to a word made of
  letters, digits, ``_`` and inner ``.``:

  1. split at ``_`` and ``.``;
  2. split each piece before an uppercase letter that follows a lowercase letter or a digit
     (``getElement`` -> ``get Element``, ``utf8Decode`` -> ``utf8 Decode``), and before the last capital of
     an acronym that starts a capitalised word (``HTTPServer`` -> ``HTTP Server``);
  3. if that changes the word, emit the whole word, then the parts in order (``__init__`` -> ``__init__
     init``; ``Hello`` -> ``Hello``).

  Digits never split from letters (``base64``, ``utf8`` stay whole), and ``-`` or ``'`` end a word
  (``state-of-the-art`` is four words).

Lowercasing comes after splitting (case is what reveals camelCase parts). Stopwords are removed from
the final tokens, parts included; :data:`ENGLISH_STOPWORDS` is off by default because BM25's idf already
makes function words nearly weightless, and dropping them breaks phrase-like queries ("to be or not").
"""

from __future__ import annotations

import re
import unicodedata

# Han (CJK unified ideographs + extension A, compatibility ideographs, extensions B-F in plane 2),
# Hiragana, Katakana (+ phonetic extensions), Hangul syllables and jamo.
_CJK_RANGES = (
    "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ffff"
    "\u3040-\u309f\u30a0-\u30ff\u31f0-\u31ff"
    "\uac00-\ud7af\u1100-\u11ff\u3130-\u318f"
)
_WORD_CHAR = f"[^\\W{_CJK_RANGES}]"  # a \w character (letter, digit, "_") that is not CJK
# A CJK run, or a word: word characters joined by single dots between them (os.path.join, 3.14).
_TOKEN_RE = re.compile(f"(?P<cjk>[{_CJK_RANGES}]+)|(?P<word>{_WORD_CHAR}+(?:\\.{_WORD_CHAR}+)*)")
_IDENTIFIER_SEPARATORS = re.compile(r"[._]+")

CJK_MODES = ("bigram", "unigram", "both")

# The usual English function words (articles, pronouns, auxiliaries, prepositions, conjunctions).
ENGLISH_STOPWORDS: frozenset[str] = frozenset(
    """
    a about above after again against all am an and any are as at be because been before being below
    between both but by can could did do does doing down during each few for from further had has have
    having he her here hers herself him himself his how i if in into is it its itself just me more most
    my myself no nor not now of off on once only or other our ours ourselves out over own same she should
    so some such than that the their theirs them themselves then there these they this those through to
    too under until up very was we were what when where which while who whom why will with would you
    your yours yourself yourselves
    """.split()
)


def camel_case_parts(piece: str) -> list[str]:
    """Split one identifier piece at case changes: ``getElementById`` -> ``get Element By Id``.

    Splits before an uppercase letter that follows a lowercase letter or a digit, and before the last
    capital of an acronym followed by a lowercase letter (``HTTPServer`` -> ``HTTP Server``).
    """
    parts, start = [], 0
    for i in range(1, len(piece)):
        prev, cur = piece[i - 1], piece[i]
        after_lower = cur.isupper() and (prev.islower() or prev.isdigit())
        acronym_end = cur.isupper() and prev.isupper() and i + 1 < len(piece) and piece[i + 1].islower()
        if after_lower or acronym_end:
            parts.append(piece[start:i])
            start = i
    parts.append(piece[start:])
    return parts


def identifier_parts(word: str) -> list[str]:
    """The parts of a code identifier (not lowercased): split at ``_``/``.`` then at case changes."""
    return [part for piece in _IDENTIFIER_SEPARATORS.split(word) if piece for part in camel_case_parts(piece)]


def cjk_tokens(run: str, mode: str = "bigram") -> list[str]:
    """Index units for one run of CJK characters: overlapping bigrams, unigrams or both.

    A one-character run has no bigram and stays a unigram in every mode; ``"both"`` emits, at each
    position, the character and then the bigram starting there.
    """
    if mode not in CJK_MODES:
        raise ValueError(f"cjk must be one of {CJK_MODES}, got {mode!r}")
    if len(run) == 1 or mode == "unigram":
        return list(run)
    bigrams = [run[i : i + 2] for i in range(len(run) - 1)]
    if mode == "bigram":
        return bigrams
    return [token for i, char in enumerate(run) for token in (char, *bigrams[i : i + 1])]


def search_tokens(
    text: str,
    *,
    lowercase: bool = True,
    cjk: str = "bigram",
    split_identifiers: bool = True,
    stopwords: frozenset[str] = frozenset(),
) -> list[str]:
    """Tokens of ``text`` for a lexical (BM25) index; index and queries must use the same settings.

    ``search_tokens("检索增强 getElementById")`` -> ``['检索', '索增', '增强', 'getelementbyid', 'get',
    'element', 'by', 'id']``. Punctuation, symbols and emoji are dropped. ``stopwords`` are compared in
    lowercase, so a lowercase list works with ``lowercase=False`` too. See the module docstring for the
    rules.
    """
    if cjk not in CJK_MODES:
        raise ValueError(f"cjk must be one of {CJK_MODES}, got {cjk!r}")
    text = unicodedata.normalize("NFKC", text)
    tokens: list[str] = []
    for match in _TOKEN_RE.finditer(text):
        if match.lastgroup == "cjk":
            tokens.extend(cjk_tokens(match.group(), cjk))
            continue
        word = match.group()
        parts = identifier_parts(word)
        if not parts:  # only underscores: nothing to search for
            continue
        tokens.append(word)
        if split_identifiers and parts != [word]:  # "__init__" -> "init" too
            tokens.extend(parts)
    if lowercase:
        tokens = [token.lower() for token in tokens]
    if stopwords:
        tokens = [token for token in tokens if token.lower() not in stopwords]
    return tokens
