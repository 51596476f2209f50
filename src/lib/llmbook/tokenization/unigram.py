"""Unigram language-model tokenizer (Kudo 2018, arXiv:1804.10959), as in SentencePiece.

A word x is segmented into pieces s_1..s_k with probability prod_i p(s_i); the tokenizer keeps
the Viterbi (most probable) segmentation. Training:

1. seed vocabulary: every character plus the most frequent substrings (score = freq * length);
2. EM: the E-step runs forward-backward over each word's lattice to get expected piece counts,
   the M-step sets p(s) = E[count(s)] / sum E[count];
3. prune: for every piece, the loss in corpus log-likelihood if it were removed and its Viterbi
   occurrences re-segmented into the best alternative; keep the best `shrink` fraction (all
   single characters are always kept), repeat 2-3 until the vocabulary is ~10% above the target,
   then keep the most probable pieces.

Whitespace is the piece "▁" (U+2581) attached to the following word, with a dummy "▁" at the
start of each text, as SentencePiece does. Characters not in the vocabulary fall back to byte
tokens <0xNN> (SentencePiece's `byte_fallback`), so decode(encode(x)) == x for any x without "▁".
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from llmbook.progress import ProgressBar

from .pretokenize import compile_pattern, count_words, iter_texts, split_special
from .serialization import read_tokenizer_json, write_tokenizer_json

SPACE = "▁"
# words: "▁" + a run of Han characters, or "▁" + a run of other non-space characters; runs of
# spaces keep their last "▁" for the following word; other whitespace characters stand alone.
UNIGRAM_PATTERN = r"▁?\p{Han}+|▁?[^\s▁\p{Han}]+|▁+(?![^\s▁])|\s"
NEG_INF = float("-inf")


@dataclass(kw_only=True)
class UnigramTrainConfig:
    """Knobs of Unigram training (defaults follow SentencePiece)."""

    max_piece_length: int = 16  # longest piece in characters
    seed_size_factor: int = 10  # seed vocabulary = this times the target number of pieces
    shrinking_factor: float = 0.75  # keep this fraction of pieces per pruning round
    em_iterations: int = 2  # EM steps between pruning rounds
    character_coverage: float = 0.9995  # rarer characters are left to byte fallback
    final_slack: float = 1.1  # stop pruning at this times the target, then keep the most probable


def _logaddexp(a: float, b: float) -> float:
    if a < b:
        a, b = b, a
    return a if b == NEG_INF else a + math.log1p(math.exp(b - a))


def _lattice(
    word: str, logp: dict[str, float], max_len: int, unk_logp: float, exclude: str | None = None
) -> list[list[tuple[int, str, float]]]:
    """edges[i] = [(end, piece, log p)] for pieces starting at i; an uncovered character gets an
    "unknown" edge (piece "") with penalty `unk_logp` so every word has a path."""
    n = len(word)
    edges: list[list[tuple[int, str, float]]] = []
    for i in range(n):
        row = []
        for j in range(i + 1, min(n, i + max_len) + 1):
            lp = logp.get(word[i:j])
            if lp is not None and word[i:j] != exclude:
                row.append((j, word[i:j], lp))
        if not row or row[0][0] != i + 1:
            row.insert(0, (i + 1, "", unk_logp))
        edges.append(row)
    return edges


def viterbi(word: str, logp: dict[str, float], max_len: int, unk_logp: float, exclude: str | None = None) -> list[str]:
    """Most probable segmentation of `word` (without piece `exclude`); "" marks an unknown character."""
    n = len(word)
    best = [NEG_INF] * (n + 1)
    back: list[tuple[int, str]] = [(0, "")] * (n + 1)
    best[0] = 0.0
    for i, row in enumerate(_lattice(word, logp, max_len, unk_logp, exclude)):
        if best[i] == NEG_INF:
            continue
        for j, piece, lp in row:
            s = best[i] + lp
            if s > best[j]:
                best[j], back[j] = s, (i, piece)
    out, j = [], n
    while j > 0:
        i, piece = back[j]
        out.append(piece if piece else word[i:j])
        j = i
    return out[::-1]


def expected_counts(
    words: Sequence[str], freqs: Sequence[int], logp: dict[str, float], max_len: int, unk_logp: float
) -> tuple[dict[str, float], float]:
    """E-step: forward-backward expected piece counts and the corpus log-likelihood."""
    counts: dict[str, float] = defaultdict(float)
    loglik = 0.0
    for word, f in zip(words, freqs):
        edges = _lattice(word, logp, max_len, unk_logp)
        n = len(word)
        alpha = [NEG_INF] * (n + 1)
        alpha[0] = 0.0
        for i, row in enumerate(edges):
            if alpha[i] != NEG_INF:
                for j, _, lp in row:
                    alpha[j] = _logaddexp(alpha[j], alpha[i] + lp)
        beta = [NEG_INF] * (n + 1)
        beta[n] = 0.0
        for i in range(n - 1, -1, -1):
            for j, _, lp in edges[i]:
                beta[i] = _logaddexp(beta[i], lp + beta[j])
        z = alpha[n]
        loglik += f * z
        for i, row in enumerate(edges):
            for j, piece, lp in row:
                if piece:
                    counts[piece] += f * math.exp(alpha[i] + lp + beta[j] - z)
    return counts, loglik


class UnigramTokenizer:
    """Viterbi segmentation under piece log-probabilities, with byte fallback for unknown chars."""

    def __init__(
        self, pieces: dict[str, float], special_tokens: Sequence[str] = (), max_piece_length: int = 16
    ) -> None:
        self.special_tokens = {s: i for i, s in enumerate(special_tokens)}
        n_sp = len(self.special_tokens)
        self.byte_ids = [n_sp + b for b in range(256)]  # <0x00> .. <0xFF>
        ordered = sorted(pieces.items(), key=lambda kv: (-kv[1], kv[0]))
        self.logp = dict(ordered)
        self.tokens = list(special_tokens) + [f"<0x{b:02X}>" for b in range(256)] + [p for p, _ in ordered]
        self.piece_ids = {p: n_sp + 256 + i for i, (p, _) in enumerate(ordered)}
        self.max_piece_length = max_piece_length
        self.unk_logp = min(pieces.values(), default=0.0) - 10.0  # SentencePiece's unknown penalty
        self._regex = compile_pattern(UNIGRAM_PATTERN)
        self._cache: dict[str, list[int]] = {}

    @property
    def vocab_size(self) -> int:
        """Number of ids (specials + 256 byte tokens + pieces)."""
        return len(self.tokens)

    def _encode_word(self, word: str) -> list[int]:
        ids = self._cache.get(word)
        if ids is None:
            ids = []
            for piece in viterbi(word, self.logp, self.max_piece_length, self.unk_logp):
                pid = self.piece_ids.get(piece)
                if pid is not None:
                    ids.append(pid)
                else:  # byte fallback
                    ids.extend(self.byte_ids[b] for b in piece.encode("utf-8"))
            self._cache[word] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        """Encode `text`: " " -> "▁", a dummy "▁" in front, then Viterbi per word."""
        out: list[int] = []
        for k, (chunk, is_special) in enumerate(split_special(text, self.special_tokens)):
            if is_special:
                out.append(self.special_tokens[chunk])
                continue
            chunk = chunk.replace(" ", SPACE)
            if k == 0:
                chunk = SPACE + chunk
            for w in self._regex.findall(chunk):
                out.extend(self._encode_word(w))
        return out

    def decode(self, ids: Iterable[int]) -> str:
        """Concatenate pieces (byte tokens as bytes), "▁" -> " ", drop the dummy leading space."""
        buf, n_sp = bytearray(), len(self.special_tokens)
        for i in ids:
            if n_sp <= i < n_sp + 256:
                buf.append(i - n_sp)
            else:
                buf.extend(self.tokens[i].encode("utf-8"))
        text = buf.decode("utf-8", errors="replace").replace(SPACE, " ")
        return text[1:] if text.startswith(" ") else text

    def save(self, path: str | Path) -> None:
        """Write JSON (pieces with log-probabilities, specials)."""
        payload = {
            "pieces": [[p, lp] for p, lp in self.logp.items()],
            "special_tokens": list(self.special_tokens),
            "max_piece_length": self.max_piece_length,
        }
        write_tokenizer_json(path, "unigram", payload)

    @classmethod
    def load(cls, path: str | Path) -> UnigramTokenizer:
        """Read a file written by `save` (a wrong or malformed file raises `TokenizerFileError`)."""
        doc = read_tokenizer_json(path, "unigram")
        return cls({p: lp for p, lp in doc["pieces"]}, doc["special_tokens"], doc["max_piece_length"])


def _normalize(logp_counts: dict[str, float]) -> dict[str, float]:
    total = math.log(sum(logp_counts.values()))
    return {p: math.log(c) - total for p, c in logp_counts.items()}


def train_unigram(
    texts: str | Iterable[str],
    vocab_size: int,
    special_tokens: Sequence[str] = (),
    config: UnigramTrainConfig | None = None,
    progress: bool = False,
) -> UnigramTokenizer:
    """Train a Unigram LM tokenizer with `vocab_size` ids (specials + 256 bytes + pieces)."""
    cfg = config or UnigramTrainConfig()
    specials = list(special_tokens)
    target = vocab_size - len(specials) - 256 if isinstance(vocab_size, int) else -1
    if target < 1:
        raise ValueError(f"vocab_size must be an int > 256 + len(special_tokens), got {vocab_size!r}")
    prepared = (SPACE + t.replace(" ", SPACE) for t in iter_texts(texts))
    wc = count_words(prepared, UNIGRAM_PATTERN, specials)
    words, freqs = list(wc), list(wc.values())
    L = cfg.max_piece_length

    # required characters: the most frequent ones covering `character_coverage` of all characters
    char_count: dict[str, int] = defaultdict(int)
    for w, f in wc.items():
        for c in w:
            char_count[c] += f
    total_chars, covered, required = sum(char_count.values()), 0, {}
    for c, n in sorted(char_count.items(), key=lambda kv: (-kv[1], kv[0])):
        if covered / total_chars >= cfg.character_coverage:
            break
        required[c] = n
        covered += n
    if len(required) > target:
        raise ValueError(
            f"vocab_size={vocab_size} leaves {target} pieces but the text needs {len(required)} characters; "
            "raise vocab_size or lower character_coverage"
        )

    # 1. seed: characters + the most frequent substrings by freq * length
    sub: dict[str, int] = defaultdict(int)
    for w, f in wc.items():
        for i in range(len(w)):
            for j in range(i + 2, min(len(w), i + L) + 1):
                sub[w[i:j]] += f
    seed_n = cfg.seed_size_factor * target
    top = sorted(sub.items(), key=lambda kv: (-kv[1] * len(kv[0]), kv[0]))[:seed_n]
    counts: dict[str, float] = {**{c: float(n) for c, n in required.items()}, **{s: float(n) for s, n in top}}
    logp = _normalize(counts)
    del sub, top

    bar = ProgressBar(desc="Unigram pruning", disable=not progress)
    while True:
        # 2. EM
        for _ in range(cfg.em_iterations):
            unk = min(logp.values()) - 10.0
            expected, _ = expected_counts(words, freqs, logp, L, unk)
            kept = {p: c for p, c in expected.items() if c >= 0.5 or p in required}
            for c in required:  # characters stay, with at least a tiny count
                kept[c] = max(kept.get(c, 0.0), 0.5)
            logp = _normalize(kept)
        if len(logp) <= cfg.final_slack * target:
            break
        # 3. prune by the likelihood loss of removing each piece
        unk = min(logp.values()) - 10.0
        vfreq: dict[str, int] = defaultdict(int)
        for w, f in zip(words, freqs):
            for piece in viterbi(w, logp, L, unk):
                vfreq[piece] += f
        vsum = sum(vfreq.values())
        candidates = []
        for piece in logp:
            if piece in required or vfreq.get(piece, 0) == 0:
                continue
            alt = viterbi(piece, logp, L, unk, exclude=piece)
            fr = vfreq[piece]
            logprob_sp = math.log(fr) - math.log(vsum)
            logsum_alt = math.log(vsum + fr * (len(alt) - 1))
            logprob_alt = sum(math.log(vfreq.get(a, 0) + fr) - logsum_alt for a in alt)
            candidates.append((fr * (logprob_sp - logprob_alt), piece))
        keep_n = max(int(cfg.shrinking_factor * len(logp)), int(cfg.final_slack * target)) - len(required)
        candidates.sort(key=lambda t: (-t[0], t[1]))
        survivors = {p: math.exp(logp[p]) for _, p in candidates[:keep_n]}
        survivors.update({c: math.exp(logp[c]) for c in required})
        logp = _normalize(survivors)
        bar.update(1)
    bar.close()
    # finalize: required characters + the most probable other pieces
    others = sorted((p for p in logp if p not in required), key=lambda p: (-logp[p], p))
    final = {p: logp[p] for p in [*required, *others[: target - len(required)]]}
    return UnigramTokenizer(final, specials, L)
