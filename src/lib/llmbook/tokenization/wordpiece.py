"""WordPiece: likelihood-scored merges, greedy longest-match-first encoding with `##` continuations.

Training (Schuster & Nakajima 2012; Wu et al. 2016, arXiv:1609.08144) starts from characters, a
word-initial character as itself and an inner one as "##c", and repeatedly merges the adjacent pair
with the highest

    score(a, b) = count(ab) / (count(a) * count(b)),

i.e. the merge that most increases the likelihood of the training words under a unigram model of
units, rather than the most frequent pair (BPE). Scores rise when a unit's count falls, so after
each merge every pair touching the merged units gets a fresh heap entry; stale entries are
discarded when popped (their score no longer matches). Tie-break: higher score, then the smaller
(a, b) strings. Note that HF `tokenizers`' WordPieceTrainer actually learns BPE merges
(frequency-scored); only the encoding is WordPiece there.

Encoding (BERT): per pre-token word, take the longest vocabulary prefix, then the longest "##"
suffix piece, and so on; a word that cannot be covered becomes a single [UNK].
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

from llmbook.progress import ProgressBar

from .bpe import merge_pair
from .pretokenize import BERT_PATTERN, compile_pattern, count_words, encode_with_specials
from .serialization import read_tokenizer_json, write_tokenizer_json

PREFIX = "##"  # marks a piece that continues a word


class WordPieceTokenizer:
    """Greedy longest-match-first WordPiece over BERT-style pre-tokens (whitespace/punctuation)."""

    def __init__(
        self,
        vocab: list[str],
        unk_token: str = "[UNK]",
        special_tokens: Sequence[str] = (),
        pattern: str = BERT_PATTERN,
        max_input_chars_per_word: int = 100,
    ) -> None:
        if unk_token not in vocab:
            raise ValueError(f"unk_token {unk_token!r} must be in vocab")
        self.tokens = list(vocab)
        self.vocab = {t: i for i, t in enumerate(self.tokens)}
        self.unk_token = unk_token
        self.special_tokens = {s: self.vocab[s] for s in special_tokens}
        self.pattern = pattern
        self.max_input_chars_per_word = max_input_chars_per_word  # longer words -> [UNK] (BERT)
        self._regex = compile_pattern(pattern)
        self._cache: dict[str, list[int]] = {}

    @property
    def vocab_size(self) -> int:
        """Number of ids."""
        return len(self.tokens)

    def encode_word(self, word: str) -> list[int]:
        """Greedy longest-match-first pieces of one word; [UNK] if some position has no piece."""
        ids = self._cache.get(word)
        if ids is not None:
            return ids
        vocab, out, start, n = self.vocab, [], 0, len(word)
        if n > self.max_input_chars_per_word:
            return [vocab[self.unk_token]]
        while start < n:
            end, found = n, None
            while end > start:
                piece = word[start:end] if start == 0 else PREFIX + word[start:end]
                if piece in vocab:
                    found = vocab[piece]
                    break
                end -= 1
            if found is None:
                out = [vocab[self.unk_token]]
                break
            out.append(found)
            start = end
        self._cache[word] = out
        return out

    def encode(self, text: str) -> list[int]:
        """Encode `text`: specials kept whole, then pre-tokens, then greedy pieces."""
        def encode_chunk(chunk: str) -> list[int]:
            return [i for w in self._regex.findall(chunk) for i in self.encode_word(w)]

        return encode_with_specials(text, self.special_tokens, encode_chunk)

    def decode(self, ids: Iterable[int]) -> str:
        """Join pieces with spaces and glue "##" continuations (BERT's lossy decode)."""
        return " ".join(self.tokens[i] for i in ids).replace(" " + PREFIX, "")

    def save(self, path: str | Path) -> None:
        """Write JSON (vocab in id order, unk, specials, pattern)."""
        payload = {
            "vocab": self.tokens,
            "unk_token": self.unk_token,
            "special_tokens": list(self.special_tokens),
            "pattern": self.pattern,
            "max_input_chars_per_word": self.max_input_chars_per_word,
        }
        write_tokenizer_json(path, "wordpiece", payload)

    @classmethod
    def load(cls, path: str | Path) -> WordPieceTokenizer:
        """Read a file written by `save` (a wrong or malformed file raises `TokenizerFileError`)."""
        doc = read_tokenizer_json(path, "wordpiece")
        fields = ("vocab", "unk_token", "special_tokens", "pattern", "max_input_chars_per_word")
        return cls(*(doc[f] for f in fields))


def train_wordpiece(
    texts: str | Iterable[str],
    vocab_size: int,
    special_tokens: Sequence[str] = ("[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"),
    unk_token: str = "[UNK]",
    pattern: str = BERT_PATTERN,
    progress: bool = False,
) -> WordPieceTokenizer:
    """Train WordPiece to `vocab_size` ids: specials, then the alphabet, then scored merges."""
    specials = list(special_tokens)
    if unk_token not in specials:
        specials.insert(0, unk_token)
    counts = count_words(texts, pattern, specials)
    words = [[c if i == 0 else PREFIX + c for i, c in enumerate(w)] for w in counts]
    freqs = list(counts.values())
    alphabet = sorted({u for w in words for u in w})
    vocab = specials + [u for u in alphabet if u not in specials]
    if not isinstance(vocab_size, int) or vocab_size < len(vocab):
        raise ValueError(f"vocab_size must be an int >= {len(vocab)} (specials + alphabet), got {vocab_size!r}")

    unit_count: dict[str, int] = defaultdict(int)
    pair_count: dict[tuple[str, str], int] = defaultdict(int)
    where: dict[tuple[str, str], set[int]] = defaultdict(set)
    pairs_of: dict[str, set[tuple[str, str]]] = defaultdict(set)  # unit -> pairs it is part of
    for wi, (w, f) in enumerate(zip(words, freqs)):
        for u in w:
            unit_count[u] += f
        for p in zip(w, w[1:]):
            pair_count[p] += f
            where[p].add(wi)
            pairs_of[p[0]].add(p)
            pairs_of[p[1]].add(p)

    def score(p: tuple[str, str]) -> float:
        return pair_count[p] / (unit_count[p[0]] * unit_count[p[1]])

    heap = [(-score(p), p) for p in pair_count]
    heapq.heapify(heap)
    known = set(vocab)
    bar = ProgressBar(total=vocab_size - len(vocab), desc="WordPiece merges", disable=not progress)
    while len(vocab) < vocab_size and heap:
        neg, pair = heapq.heappop(heap)
        if pair_count.get(pair, 0) <= 0 or -neg != score(pair):
            continue  # stale
        a, b = pair
        new = a + b[len(PREFIX) :] if b.startswith(PREFIX) else a + b
        touched: set[tuple[str, str]] = set()
        for wi in where.pop(pair):
            w, f = words[wi], freqs[wi]
            nw = merge_pair(w, a, b, new)
            for u in w:
                unit_count[u] -= f
            for u in nw:
                unit_count[u] += f
            for p in zip(w, w[1:]):
                pair_count[p] -= f
                touched.add(p)
                if p != pair:
                    where[p].discard(wi)
            for p in zip(nw, nw[1:]):
                pair_count[p] += f
                touched.add(p)
                where[p].add(wi)
                pairs_of[p[0]].add(p)
                pairs_of[p[1]].add(p)
            words[wi] = nw
        pair_count.pop(pair, None)
        if new not in known:
            known.add(new)
            vocab.append(new)
            bar.update(1)
        # unit counts of a and b fell: all their pairs' scores rose
        for p in touched | pairs_of[a] | pairs_of[b] | pairs_of[new]:
            if pair_count.get(p, 0) > 0:
                heapq.heappush(heap, (-score(p), p))
    bar.close()
    return WordPieceTokenizer(vocab, unk_token, specials, pattern)
