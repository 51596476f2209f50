"""Byte-pair encoding: a byte-level trainer and encoder (GPT-2 style) and a character-level variant.

BPE (Sennrich et al. 2016, arXiv:1508.07909) starts from an alphabet and repeatedly merges the
most frequent adjacent pair; byte-level BPE (GPT-2, Radford et al. 2019) uses the 256 byte values
as the alphabet, so every string, in any script, encodes without an unknown token.

Training works on unique pre-token words with counts and updates pair counts incrementally:
`where[pair]` lists the words that may contain the pair, and a max-heap of (count, pair) entries
with lazy invalidation gives the next merge without recounting. Only the words that contain the
merged pair are touched, and only the pairs next to each merge change. `train_bpe_naive` is the
same trainer written to be read: it recounts every pair after every merge and learns exactly the
same merges. Tie-break (documented, deterministic): highest count first, then the smallest
(left id, right id) pair — the older (lower-id) tokens win. A merge whose surface already is a
token is skipped, so token surfaces stay unique and the rank table is a valid `tiktoken`
vocabulary. From single bytes this never happens (every word is merged left to right alike, so a
byte string has one split), but the character variant's alphabet holds `<unk>`, which text can spell.

Encoding follows tiktoken: ids are ranks, and within one pre-token the adjacent pair whose
concatenation has the lowest rank is merged first, until no concatenation is in the vocabulary;
encoded words are cached, so common words cost one dict lookup, and each distinct new word in a
text is encoded once.

Streaming (`encode_iterable`, `encode_file`) gives the ids of `encode` on the whole text with
memory bounded by the chunk size; it lives in :mod:`llmbook.tokenization.streaming`.
"""

from __future__ import annotations

import heapq
import os
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import chain
from pathlib import Path
from typing import TypeVar

from llmbook.progress import ProgressBar

from . import streaming
from .pretokenize import GPT2_PATTERN, compile_pattern, count_words, encode_with_specials
from .serialization import read_tokenizer_json, write_tokenizer_json

T = TypeVar("T", bytes, str)
U = TypeVar("U", int, str)
_CACHE_WORDS = 500_000  # word cache size limit of the byte-level encoder


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (used by HF `ByteLevel` and our JSON)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


BYTE_TO_CHAR = bytes_to_unicode()
CHAR_TO_BYTE = {c: b for b, c in BYTE_TO_CHAR.items()}


def bytes_to_visible(b: bytes) -> str:
    """Token bytes as GPT-2 printable text, e.g. b" the" -> "Ġthe"."""
    return "".join(BYTE_TO_CHAR[x] for x in b)


def visible_to_bytes(s: str) -> bytes:
    """Inverse of `bytes_to_visible`."""
    return bytes(CHAR_TO_BYTE[c] for c in s)


def apply_ranks(parts: list[T], ranks: Mapping[T, int], max_rank: int | None = None) -> list[T]:
    """Merge adjacent parts, lowest-rank concatenation first, until none is in `ranks` (tiktoken).

    `pair_ranks[i]` is the rank of parts[i] + parts[i+1]; after a merge only its two neighbours
    are looked up again. The leftmost of equal ranks merges first. `max_rank` (exclusive)
    restricts merges to older tokens; used to recover a token's merge pair.
    """
    get = ranks.get
    if max_rank is not None:
        whole = parts[0][:0].join(parts)  # only substrings of the text can ever be looked up
        subs = (whole[i:j] for i in range(len(whole)) for j in range(i + 1, len(whole) + 1))
        get = {t: r for t in subs if (r := ranks.get(t, _NO_RANK)) < max_rank}.get
    pair_ranks = [get(parts[i] + parts[i + 1], _NO_RANK) for i in range(len(parts) - 1)]
    while pair_ranks:
        best = min(pair_ranks)
        if best == _NO_RANK:
            break
        i = pair_ranks.index(best)
        parts[i : i + 2] = [parts[i] + parts[i + 1]]
        del pair_ranks[i]
        if i < len(pair_ranks):
            pair_ranks[i] = get(parts[i] + parts[i + 1], _NO_RANK)
        if i > 0:
            pair_ranks[i - 1] = get(parts[i - 1] + parts[i], _NO_RANK)
    return parts


_NO_RANK = 1 << 62


def encode_bytes(word: bytes, ranks: Mapping[bytes, int]) -> list[int]:
    """`apply_ranks` on the single bytes of `word`, returning ids: the encoder's hot loop.

    Same merges as `apply_ranks`, but parts are kept as start offsets into `word` (a merge deletes
    one offset) and each candidate is a slice of `word`, as tiktoken does it.
    """
    get = ranks.get
    starts = list(range(len(word) + 1))  # part k is word[starts[k]:starts[k + 1]]
    pair_ranks = [get(word[i : i + 2], _NO_RANK) for i in range(len(word) - 1)]
    while pair_ranks:
        best = min(pair_ranks)
        if best == _NO_RANK:
            break
        i = pair_ranks.index(best)
        del starts[i + 1], pair_ranks[i]
        if i < len(pair_ranks):
            pair_ranks[i] = get(word[starts[i] : starts[i + 2]], _NO_RANK)
        if i:
            pair_ranks[i - 1] = get(word[starts[i - 1] : starts[i + 1]], _NO_RANK)
    return [ranks[word[s:e]] for s, e in zip(starts, starts[1:])]


def merge_pair(word: Sequence[U], a: U, b: U, new: U) -> list[U]:
    """Replace every non-overlapping (a, b) in `word`, left to right, with `new` (ids or strings)."""
    out: list[U] = []
    i, n = 0, len(word)
    while i < n:
        if i < n - 1 and word[i] == a and word[i + 1] == b:
            out.append(new)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out


def train_merges(
    words: list[list[int]],
    freqs: list[int],
    pieces: list[T],
    num_merges: int,
    progress: bool = False,
) -> list[tuple[int, int]]:
    """Learn up to `num_merges` BPE merges over `words` (lists of ids into `pieces`).

    `pieces[i]` is token i's surface (bytes or str); each merge appends the new token to `pieces`
    and returns the merge list [(left id, right id), ...] in rank order. `words` is not modified.

    Inside, a word is a str with one character per token id (`chr(id)`), so finding a pair in a
    word is `str.find` and merging it everywhere is `str.replace` (left to right, non-overlapping,
    exactly `merge_pair`), both in C. A pair is its 2-character string; comparing two of them
    compares (left id, right id), so the heap's tie-break is the documented one.
    """
    if len(pieces) + num_merges > sys.maxunicode + 1:
        raise ValueError(f"num_merges must keep ids <= {sys.maxunicode}, got {num_merges!r}")
    ws = ["".join(map(chr, w)) for w in words]
    freq = freqs.__getitem__
    # where[pair]: the words that may hold the pair, once per occurrence (stale entries are fine).
    where: dict[str, list[int]] = defaultdict(list)
    for wi, w in enumerate(ws):
        for p in map(str.__add__, w, w[1:]):
            where[p].append(wi)
    counts = {p: sum(map(freq, wis)) for p, wis in where.items()}
    # Max-heap of (-count, pair). A count only falls after its pair was pushed, except for pairs
    # with the new token, which are pushed when made; so an entry whose count fell is pushed again
    # at its true count when it reaches the top (lazy decrease-key), and the top is the true max.
    heap = [(-c, p) for p, c in counts.items()]
    heapq.heapify(heap)
    known = set(pieces)
    merges: list[tuple[int, int]] = []
    bar = ProgressBar(total=num_merges, desc="BPE merges", disable=not progress)
    while len(merges) < num_merges and heap:
        neg, pair = heapq.heappop(heap)
        c = counts.get(pair, 0)
        if c != -neg:
            if c > 0:
                heapq.heappush(heap, (-c, pair))
            continue
        ca, cb = pair
        a, b = ord(ca), ord(cb)
        surface = pieces[a] + pieces[b]
        if surface in known:
            continue  # same bytes reachable by another split: keep tokens unique
        new = chr(len(pieces))
        pieces.append(surface)
        known.add(surface)
        merges.append((a, b))
        bar.update(1)
        fresh: dict[str, int] = defaultdict(int)  # counts of the pairs with the new token
        # One occurrence in a word (the common case): x a b y -> x new y, so only (x, a) and
        # (b, y) go and (x, new) and (new, y) come. Group the words by x and by y, and do the
        # counting once per neighbour, not once per word.
        lefts: dict[str, list[int]] = defaultdict(list)
        rights: dict[str, list[int]] = defaultdict(list)
        for wi in where.pop(pair):
            w = ws[wi]
            i = w.find(pair)
            if i < 0:
                continue  # stale or repeated index: this word no longer has the pair
            ws[wi] = out = w.replace(pair, new)
            n = len(out)
            if n == len(w) - 1:
                if i:
                    lefts[w[i - 1]].append(wi)
                if i + 1 < n:
                    rights[out[i + 1]].append(wi)
            else:  # several (maybe touching) occurrences: recount this word's pairs
                f = freqs[wi]
                for p in map(str.__add__, w, w[1:]):
                    counts[p] -= f
                for p in map(str.__add__, out, out[1:]):
                    if new in p:
                        fresh[p] += f
                        where[p].append(wi)
                    else:
                        counts[p] += f  # a pair away from the merge: back to its old count
        for x, wis in lefts.items():
            f = sum(map(freq, wis))
            counts[x + ca] -= f
            fresh[x + new] += f
            where[x + new] += wis
        for y, wis in rights.items():
            f = sum(map(freq, wis))
            counts[cb + y] -= f
            fresh[new + y] += f
            where[new + y] += wis
        del counts[pair]
        for p, c in fresh.items():
            counts[p] = c
            heapq.heappush(heap, (-c, p))
    bar.close()
    return merges


class ByteBPETokenizer:
    """Byte-level BPE tokenizer: `ranks` maps token bytes -> id (= merge rank), tiktoken-style.

    `special_tokens` (text -> id) are matched in `encode` before pre-tokenization and never split.
    `merges` (optional) is the list of (left id, right id) that built each token; it is recovered
    from the ranks when missing (published vocabularies ship ranks only). `extra_tokens` (id ->
    bytes) are decode-only entries of a loaded vocabulary that no merge makes and that are not
    special (GPT-2's `vocab.json` lists `<|endoftext|>`); encoding never produces them.
    """

    def __init__(
        self,
        ranks: dict[bytes, int],
        special_tokens: Mapping[str, int] | None = None,
        pattern: str = GPT2_PATTERN,
        merges: list[tuple[int, int]] | None = None,
        extra_tokens: Mapping[int, bytes] | None = None,
    ) -> None:
        self.ranks = dict(ranks)
        self.special_tokens = dict(special_tokens or {})
        self.pattern = pattern
        self._regex = compile_pattern(pattern)
        self._id_to_bytes = {i: b for b, i in self.ranks.items()}
        self._id_to_bytes.update({i: s.encode("utf-8") for s, i in self.special_tokens.items()})
        self._extra = dict(extra_tokens or {})
        self._id_to_bytes.update(self._extra)
        if len(self._id_to_bytes) != len(self.ranks) + len(self.special_tokens) + len(self._extra):
            raise ValueError("ranks, special_tokens and extra_tokens must use distinct ids")
        self._merges = merges
        self._cache: dict[str, list[int]] = {}

    # -- properties -----------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        """Number of ids (ordinary tokens + special tokens); ids run 0 .. vocab_size - 1."""
        return max(self._id_to_bytes) + 1

    @property
    def merges(self) -> list[tuple[int, int]]:
        """(left id, right id) for every multi-byte token, in rank order."""
        if self._merges is None:
            self._merges = recover_merges(self.ranks)
        return self._merges

    @property
    def vocab(self) -> dict[int, bytes]:
        """{id: token bytes} for every id (special tokens: their UTF-8 text), as CS336's `Tokenizer` takes it."""
        return dict(self._id_to_bytes)

    @property
    def byte_merges(self) -> list[tuple[bytes, bytes]]:
        """`merges` as (left bytes, right bytes), in rank order (the lines of a GPT-2 `merges.txt`)."""
        tb = self._id_to_bytes
        return [(tb[a], tb[b]) for a, b in self.merges]

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes of one token (special tokens: their UTF-8 text)."""
        return self._id_to_bytes[token_id]

    # -- encoding -------------------------------------------------------------------------
    def encode_ordinary(self, text: str) -> list[int]:
        """Encode `text`, treating special-token strings as plain text."""
        return self._encode_words(self._regex.findall(text))

    def _encode_words(self, words: list[str]) -> list[int]:
        """Ids of a list of pre-tokens."""
        cache = self._cache
        new = set(words).difference(cache)  # each distinct unseen word is encoded once
        if len(cache) + len(new) > _CACHE_WORDS:
            cache.clear()  # bound memory on endless streams; this call's words are added back
            new = set(words)
        ranks = self.ranks
        for w in new:
            b = w.encode("utf-8")
            r = ranks.get(b)
            cache[w] = [r] if r is not None else encode_bytes(b, ranks)
        return list(chain.from_iterable(map(cache.__getitem__, words)))

    def encode(self, text: str) -> list[int]:
        """Encode `text`; special tokens in it become their single id and are never split."""
        if not isinstance(text, str):
            raise TypeError(f"text must be str, got {type(text).__name__}")
        if not self.special_tokens:
            return self.encode_ordinary(text)
        return encode_with_specials(text, self.special_tokens, self.encode_ordinary)

    def encode_iterable(self, texts: Iterable[str], chunk_chars: int = 1 << 18) -> Iterator[int]:
        """Ids of the concatenation of `texts`, one at a time, in memory near `chunk_chars` characters:
        `encode("".join(texts))` (:func:`llmbook.tokenization.streaming.encode_iterable`)."""
        return streaming.encode_iterable(self, texts, chunk_chars)

    def encode_file(
        self, path: str | os.PathLike, chunk_chars: int = 1 << 18, encoding: str = "utf-8", errors: str = "strict"
    ) -> Iterator[int]:
        """Ids of a text file as stored, streamed (:func:`llmbook.tokenization.streaming.encode_file`)."""
        return streaming.encode_file(self, path, chunk_chars, encoding, errors)

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """Concatenate the bytes of `ids` (may end inside a multi-byte character)."""
        try:
            return b"".join(self._id_to_bytes[i] for i in ids)
        except KeyError as e:
            raise ValueError(f"ids contains {e.args[0]}, outside 0..{self.vocab_size - 1}") from None

    def decode(self, ids: Iterable[int], errors: str = "replace") -> str:
        """Decode ids to text; bytes that are not valid UTF-8 on their own become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors=errors)

    def truncated(self, vocab_size: int) -> ByteBPETokenizer:
        """This tokenizer cut to `vocab_size` ids, special tokens kept at the end (vocabularies nest).

        Training with fewer merges stops earlier on the same merge sequence, so this equals a
        tokenizer trained at `vocab_size` with the same special tokens.
        """
        n_special = len(self.special_tokens)
        n_ordinary = vocab_size - n_special
        if not 256 <= n_ordinary <= len(self.ranks):
            raise ValueError(
                f"vocab_size must be in [{256 + n_special}, {len(self.ranks) + n_special}], got {vocab_size!r}"
            )
        ranks = {b: i for b, i in self.ranks.items() if i < n_ordinary}
        specials = {s: n_ordinary + k for k, s in enumerate(sorted(self.special_tokens, key=self.special_tokens.get))}
        merges = self._merges[: n_ordinary - 256] if self._merges is not None else None
        return ByteBPETokenizer(ranks, specials, self.pattern, merges)  # decode-only extra tokens are dropped

    # -- interop --------------------------------------------------------------------------
    def to_tiktoken(self, name: str = "llmbook"):
        """The same vocabulary as a `tiktoken.Encoding` (the Rust reference encoder)."""
        import tiktoken

        return tiktoken.Encoding(
            name=name,
            pat_str=self.pattern,
            mergeable_ranks=self.ranks,
            special_tokens=self.special_tokens,
        )

    def save(self, path: str | Path) -> None:
        """Write JSON: tokens in rank order as GPT-2 printable text, merges, specials, pattern."""
        n = len(self.ranks)
        if sorted(self.ranks.values()) != list(range(n)):
            raise ValueError("save needs ranks 0..n-1 without gaps")
        if self._extra:
            raise ValueError("save cannot store decode-only extra_tokens; write GPT-2 files (gpt2_files) instead")
        tokens = [""] * n
        for b, r in self.ranks.items():
            tokens[r] = bytes_to_visible(b)
        payload = {
            "pattern": self.pattern,
            "tokens": tokens,
            "merges": [list(m) for m in self._merges] if self._merges is not None else None,
            "special_tokens": self.special_tokens,
        }
        write_tokenizer_json(path, "byte_bpe", payload)

    @classmethod
    def load(cls, path: str | Path) -> ByteBPETokenizer:
        """Read a file written by `save` (a wrong or malformed file raises `TokenizerFileError`)."""
        doc = read_tokenizer_json(path, "byte_bpe")
        ranks = {visible_to_bytes(t): i for i, t in enumerate(doc["tokens"])}
        merges = [tuple(m) for m in doc["merges"]] if doc["merges"] is not None else None
        return cls(ranks, doc["special_tokens"], doc["pattern"], merges)


def recover_merges(ranks: Mapping[bytes, int]) -> list[tuple[int, int]]:
    """For each multi-byte token, the pair of older tokens BPE joins to make it (by rank order)."""
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) == 1:
            continue
        parts = apply_ranks([bytes([x]) for x in token], ranks, max_rank=rank)
        if len(parts) != 2:
            raise ValueError(f"token {token!r} (rank {rank}) is not the merge of two older tokens")
        merges.append((ranks[parts[0]], ranks[parts[1]]))
    return merges


def _check_vocab_size(vocab_size: int, minimum: int, what: str) -> None:
    if not isinstance(vocab_size, int) or vocab_size < minimum:
        raise ValueError(f"vocab_size must be an int >= {minimum} ({what}), got {vocab_size!r}")


def train_bpe(
    texts: str | Iterable[str],
    vocab_size: int,
    special_tokens: Sequence[str] = (),
    pattern: str = GPT2_PATTERN,
    progress: bool = False,
) -> ByteBPETokenizer:
    """Train a byte-level BPE tokenizer with `vocab_size` ids (256 bytes + merges + specials).

    Special tokens take the last ids. Fewer merges are learned if the corpus runs out of pairs.
    """
    special_tokens = list(special_tokens)
    _check_vocab_size(vocab_size, 256 + len(special_tokens), "256 bytes + special tokens")
    counts = count_words(texts, pattern, special_tokens)
    words = [list(w.encode("utf-8")) for w in counts]
    freqs = list(counts.values())
    pieces: list[bytes] = [bytes([i]) for i in range(256)]
    merges = train_merges(words, freqs, pieces, vocab_size - 256 - len(special_tokens), progress)
    ranks = {p: i for i, p in enumerate(pieces)}
    specials = {s: len(pieces) + i for i, s in enumerate(special_tokens)}
    return ByteBPETokenizer(ranks, specials, pattern, merges)


def train_bpe_naive(
    texts: str | Iterable[str],
    vocab_size: int,
    special_tokens: Sequence[str] = (),
    pattern: str = GPT2_PATTERN,
) -> ByteBPETokenizer:
    """The readable reference of `train_bpe`: recount every pair after each merge (minbpe-style).

    Same input, same result: the same merges in the same order, with the same tie-break (highest
    count, then the smallest (left id, right id)). Each merge rescans every word, so V merges over
    W distinct words cost O(V * W); `train_bpe` (via `train_merges`) keeps the pair counts and
    changes only the few next to each merge, which is what makes megabytes of text and 50k merges
    trainable. (`train_merges` also skips a pair whose surface is already a token; from single
    bytes that cannot happen, so this loop leaves the check out.)
    """
    special_tokens = list(special_tokens)
    _check_vocab_size(vocab_size, 256 + len(special_tokens), "256 bytes + special tokens")
    counted = count_words(texts, pattern, special_tokens)
    words = [list(w.encode("utf-8")) for w in counted]  # each distinct pre-token as byte ids
    freqs = list(counted.values())
    pieces = [bytes([i]) for i in range(256)]  # id -> token bytes; a merge appends the next id
    merges: list[tuple[int, int]] = []
    while len(pieces) < vocab_size - len(special_tokens):
        counts: Counter[tuple[int, int]] = Counter()
        for word, f in zip(words, freqs):
            for pair in zip(word, word[1:]):
                counts[pair] += f
        if not counts:
            break  # every word is one token: the corpus ran out of pairs
        a, b = min(counts, key=lambda p: (-counts[p], p))  # most frequent; ties: smallest ids
        new = len(pieces)
        pieces.append(pieces[a] + pieces[b])
        merges.append((a, b))
        words = [merge_pair(word, a, b, new) for word in words]
    ranks = {p: i for i, p in enumerate(pieces)}
    specials = {s: len(pieces) + i for i, s in enumerate(special_tokens)}
    return ByteBPETokenizer(ranks, specials, pattern, merges)


class CharBPETokenizer:
    """Character-level BPE: the alphabet is the characters seen in training, plus `<unk>` (id 0).

    Shows why bytes win: a character never seen in training has no id, becomes `<unk>`, and
    decode(encode(x)) != x.
    """

    UNK = "<unk>"

    def __init__(
        self,
        tokens: list[str],
        special_tokens: Mapping[str, int] | None = None,
        pattern: str = GPT2_PATTERN,
        merges: list[tuple[int, int]] | None = None,
    ) -> None:
        self.tokens = list(tokens)  # id -> surface; tokens[0] is <unk>
        self.vocab = {t: i for i, t in enumerate(self.tokens)}
        self.special_tokens = dict(special_tokens or {})
        self.pattern = pattern
        self.merges = list(merges or [])
        self._regex = compile_pattern(pattern)
        # rank = id (older tokens merge first); <unk> is never the result of a merge
        self._ranks = {t: i for t, i in self.vocab.items() if t != self.UNK}
        self._id_to_text = dict(enumerate(self.tokens))
        self._id_to_text.update({i: s for s, i in self.special_tokens.items()})
        self._cache: dict[str, list[int]] = {}

    @property
    def vocab_size(self) -> int:
        """Number of ids (alphabet + <unk> + merges + specials)."""
        return max(self._id_to_text) + 1

    def _encode_word(self, word: str) -> list[int]:
        ids = self._cache.get(word)
        if ids is None:
            unk = self.vocab[self.UNK]
            parts = apply_ranks([c if c in self.vocab else "\0unk" for c in word], self._ranks)
            ids = [self.vocab.get(p, unk) for p in parts]
            self._cache[word] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        """Encode `text`; unseen characters become the `<unk>` id."""
        def encode_chunk(chunk: str) -> list[int]:
            return [i for w in self._regex.findall(chunk) for i in self._encode_word(w)]

        return encode_with_specials(text, self.special_tokens, encode_chunk)

    def decode(self, ids: Iterable[int]) -> str:
        """Concatenate token texts (`<unk>` stays the literal string "<unk>")."""
        return "".join(self._id_to_text[i] for i in ids)

    def save(self, path: str | Path) -> None:
        """Write JSON (tokens in id order, merges, specials, pattern)."""
        payload = {
            "pattern": self.pattern,
            "tokens": self.tokens,
            "merges": [list(m) for m in self.merges],
            "special_tokens": self.special_tokens,
        }
        write_tokenizer_json(path, "char_bpe", payload)

    @classmethod
    def load(cls, path: str | Path) -> CharBPETokenizer:
        """Read a file written by `save` (a wrong or malformed file raises `TokenizerFileError`)."""
        doc = read_tokenizer_json(path, "char_bpe")
        merges = [tuple(m) for m in doc["merges"]]
        return cls(doc["tokens"], doc["special_tokens"], doc["pattern"], merges)


def train_char_bpe(
    texts: str | Iterable[str],
    vocab_size: int,
    special_tokens: Sequence[str] = (),
    pattern: str = GPT2_PATTERN,
    progress: bool = False,
) -> CharBPETokenizer:
    """Train character-level BPE: alphabet = characters of the training text, then merges."""
    special_tokens = list(special_tokens)
    counts = count_words(texts, pattern, special_tokens)
    alphabet = sorted({c for w in counts for c in w})
    pieces: list[str] = [CharBPETokenizer.UNK, *alphabet]
    _check_vocab_size(vocab_size, len(pieces) + len(special_tokens), "alphabet + <unk> + specials")
    index = {c: i for i, c in enumerate(pieces)}
    words = [[index[c] for c in w] for w in counts]
    freqs = list(counts.values())
    n_merges = vocab_size - len(pieces) - len(special_tokens)
    merges = train_merges(words, freqs, pieces, n_merges, progress)
    specials = {s: len(pieces) + i for i, s in enumerate(special_tokens)}
    return CharBPETokenizer(pieces, specials, pattern, merges)
