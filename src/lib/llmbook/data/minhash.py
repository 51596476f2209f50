"""Vectorised MinHash over a batch of documents, bit-compatible with ``datasketch``.

MinHash (Broder 1997; Leskovec et al., *Mining of Massive Datasets* ch. 3) estimates the
Jaccard similarity J(A, B) = |A ∩ B| / |A ∪ B| of two shingle sets: with a random
permutation π, P[min π(A) = min π(B)] = J(A, B), so the fraction of equal entries of two
``num_perm``-long signatures is an unbiased estimate of J.

Permutations follow ``datasketch`` exactly (same ``np.random.RandomState(seed)`` draws):

* ``"legacy"`` (datasketch < 2.0, the classic universal hash): π_k(h) = ((a_k h + b_k) mod p) & (2^32 - 1)
  with p = 2^61 - 1 (Mersenne), where ``a_k h + b_k`` wraps modulo 2^64 as numpy uint64 does;
* ``"affine32"`` (datasketch >= 2.0 default): π_k(h) = a_k fmix32(h) + b_k mod 2^32, a_k odd.

So given the same 32-bit shingle hashes, seed and ``num_perm``, :func:`minhash_signatures`
returns *exactly* datasketch's ``MinHash.hashvalues`` (tested). The speed comes from
(1) hashing shingles with numpy instead of one SHA-1 call per shingle (:func:`hash_shingles`;
``hash="sha1"`` reproduces datasketch's default ``sha1_hash32`` for equality checks), and
(2) applying all permutations to a whole batch of shingles at once and reducing per document
with ``np.minimum.reduceat``; the Mersenne modulo uses the shift-and-add identity
x mod (2^61 - 1) = (x & p) + (x >> 61) (then one conditional subtract) instead of a division.
"""

from __future__ import annotations

import hashlib
import re
import struct
from collections.abc import Sequence

import numpy as np

MERSENNE_PRIME = np.uint64((1 << 61) - 1)  # p of the classic universal hash (datasketch "legacy")
MAX_HASH32 = np.uint64((1 << 32) - 1)  # legacy signatures are truncated to 32 bits
SCHEMES = ("legacy", "affine32")

_M1, _M2 = np.uint64(0xFF51AFD7ED558CCD), np.uint64(0xC4CEB9FE1A85EC53)
_K1, _K2, _K3 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_CJK_RANGES = r"\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"  # kana, CJK ideographs, Hangul
CJK_RE = re.compile(f"[{_CJK_RANGES}]")
_WORD_RE = re.compile(rf"[{_CJK_RANGES}]|[^\s{_CJK_RANGES}]+")  # one CJK character, or a run of other non-space


def _char_class_table() -> np.ndarray:
    t = np.zeros(0x10000, np.uint8)
    for lo, hi in ((0x3040, 0x30FF), (0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0xAC00, 0xD7AF)):
        t[lo : hi + 1] = 2
    t[[9, 10, 11, 12, 13, 32, 0x85, 0xA0, 0x3000, 0x2028, 0x2029]] = 1
    t[0x2000:0x200B] = 1
    return t


_CHAR_CLASS = _char_class_table()


def fmix64(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finaliser (an avalanching bijection on uint64)."""
    with np.errstate(over="ignore"):
        h = h ^ (h >> np.uint64(33))
        h = h * _M1
        h = h ^ (h >> np.uint64(33))
        h = h * _M2
        return h ^ (h >> np.uint64(33))


def fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finaliser, as datasketch applies it before the affine32 permutations."""
    h = h.astype(np.uint32, copy=False)
    with np.errstate(over="ignore"):
        h = h ^ (h >> np.uint32(16))
        h = h * np.uint32(0x85EBCA6B)
        h = h ^ (h >> np.uint32(13))
        h = h * np.uint32(0xC2B2AE35)
        return h ^ (h >> np.uint32(16))


def codepoints(text: str) -> np.ndarray:
    """Unicode code points of ``text`` as uint64 (lone surrogates kept)."""
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4").astype(np.uint64)


def word_spans(text: str) -> list[tuple[int, int]]:
    """Word boundaries used everywhere in ``llmbook.data``: whitespace-separated runs, but each
    CJK character is its own word (Chinese has no spaces; a character is the unit)."""
    return [m.span() for m in _WORD_RE.finditer(text)]


def words(text: str) -> list[str]:
    """The words of :func:`word_spans` as strings."""
    return _WORD_RE.findall(text)


def _ngram_combine(h: np.ndarray, n: int, bounds: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Hash windows of ``n`` consecutive uint64 values: fmix64(sum_j h[i+j] * C_j), C_j odd constants.

    ``bounds`` (N+1,) splits ``h`` into documents; windows never cross a boundary, and a document
    shorter than ``n`` (but not empty) gets one window over all its values. Returns
    ``(hashes, lens)`` with lens (N,) the number of windows per document.
    """
    if bounds is None:
        bounds = np.array([0, len(h)], np.int64)
    L = len(h)
    lens_in = np.diff(bounds)
    m = max(L - n + 1, 0)
    acc = np.zeros(m, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(n):
            acc += h[j : j + m] * (np.uint64(2 * j + 1) * _K3)
    starts = np.arange(m)
    doc = np.searchsorted(bounds, starts, side="right") - 1  # document of each window start
    valid = starts + n <= bounds[np.minimum(doc + 1, len(bounds) - 1)] if m else np.zeros(0, bool)
    out_h, out_d = [acc[valid]], [doc[valid]]
    short = np.flatnonzero((lens_in > 0) & (lens_in < n))  # documents with fewer than n values
    if len(short):
        idx = np.repeat(short, lens_in[short])
        pos = np.concatenate([np.arange(bounds[d], bounds[d + 1]) for d in short])
        with np.errstate(over="ignore"):
            part = h[pos] * (((pos - bounds[idx]).astype(np.uint64) * np.uint64(2) + np.uint64(1)) * _K3)
        first = np.flatnonzero(np.concatenate([[True], idx[1:] != idx[:-1]]))
        out_h.append(np.add.reduceat(part, first))
        out_d.append(short)
    hh, dd = np.concatenate(out_h), np.concatenate(out_d)
    order = np.argsort(dd, kind="stable")
    lens = np.bincount(dd, minlength=len(lens_in)).astype(np.int64)
    return fmix64(hh[order]), lens


def _split(flat: np.ndarray, lens: np.ndarray) -> list[np.ndarray]:
    return np.split(flat, np.cumsum(lens)[:-1]) if len(lens) else []


def _join(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Code points of all texts joined by a newline, and (N+1,) code-point offsets of each text."""
    c = codepoints("\n".join(texts))
    starts = np.cumsum([0] + [len(t) + 1 for t in texts])
    return c, starts


def hash_char_ngrams_batch(texts: Sequence[str], n: int) -> tuple[np.ndarray, np.ndarray]:
    """uint64 hashes of every character ``n``-gram of every text: ``(flat_hashes, lens)``."""
    c, starts = _join(texts)
    bounds = np.stack([starts[:-1], starts[:-1] + np.array([len(t) for t in texts], np.int64)], 1)
    keep = np.zeros(len(c), bool)
    for s, e in bounds:
        keep[s:e] = True
    idx = np.flatnonzero(keep)
    with np.errstate(over="ignore"):
        h = fmix64(c[idx] * _K1 + _K2)
    b = np.concatenate([[0], np.cumsum([len(t) for t in texts])]).astype(np.int64)
    return _ngram_combine(h, n, b)


def hash_words_batch(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """One uint64 hash per word (see :func:`word_spans`) of every text: ``(flat_hashes, words_per_text)``."""
    c, starts = _join(texts)
    if len(c) == 0:
        return np.empty(0, np.uint64), np.zeros(len(texts), np.int64)
    cls = _CHAR_CLASS[np.minimum(c, 0xFFFF)]  # 0 other, 1 space, 2 CJK (one table lookup per char)
    space, cjk = cls == 1, cls == 2
    prev_space = np.concatenate([[True], space[:-1]])
    prev_cjk = np.concatenate([[False], cjk[:-1]])
    start = ~space & (prev_space | cjk | prev_cjk)  # a word starts here
    idx = np.flatnonzero(~space)
    if len(idx) == 0:
        return np.empty(0, np.uint64), np.zeros(len(texts), np.int64)
    wid = (np.cumsum(start) - 1)[idx]  # word index of each non-space char
    wstarts = np.flatnonzero(start)
    rel = (idx - wstarts[wid]).astype(np.uint64)  # position inside the word
    with np.errstate(over="ignore"):
        ch = fmix64(c[idx] * _K1 + rel * _K2 + np.uint64(1))
    first = np.flatnonzero(np.concatenate([[True], wid[1:] != wid[:-1]]))
    wh = fmix64(np.add.reduceat(ch, first))
    doc_of_word = np.searchsorted(starts, wstarts, side="right") - 1
    return wh, np.bincount(doc_of_word, minlength=len(texts)).astype(np.int64)


def hash_words(text: str) -> np.ndarray:
    """One uint64 hash per word of :func:`word_spans`, computed without a Python loop per word."""
    return hash_words_batch([text])[0]


def hash_char_ngrams(text: str, n: int) -> np.ndarray:
    """uint64 hashes of every character ``n``-gram of ``text`` (one hash for texts shorter than n)."""
    return hash_char_ngrams_batch([text], n)[0]


def hash_word_ngrams(text: str, n: int) -> np.ndarray:
    """uint64 hashes of every word ``n``-gram (CJK characters count as words)."""
    return _ngram_combine(hash_words(text), n)[0]


def shingle_hashes_batch(texts: Sequence[str], n: int = 5, unit: str = "word") -> list[np.ndarray]:
    """Vectorised 32-bit shingle hashes for a batch of texts (the fast path of :func:`hash_shingles`)."""
    if unit == "word":
        wh, wl = hash_words_batch(texts)
        flat, lens = _ngram_combine(wh, n, np.concatenate([[0], np.cumsum(wl)]).astype(np.int64))
    elif unit == "char":
        flat, lens = hash_char_ngrams_batch(texts, n)
    else:
        raise ValueError(f"unit must be 'word' or 'char', got {unit!r}")
    return _split(flat >> np.uint64(32), lens)


def shingles(text: str, n: int = 5, unit: str = "word") -> list[str]:
    """The shingle strings (Python reference path): word n-grams joined by one space, or char n-grams."""
    if unit == "char":
        return [text[i : i + n] for i in range(max(len(text) - n + 1, 1 if text else 0))]
    if unit != "word":
        raise ValueError(f"unit must be 'word' or 'char', got {unit!r}")
    w = words(text)
    return [" ".join(w[i : i + n]) for i in range(max(len(w) - n + 1, 1 if w else 0))]


def sha1_hash32(data: bytes) -> int:
    """datasketch's default shingle hash: the first 4 bytes of SHA-1, little-endian."""
    return struct.unpack("<I", hashlib.sha1(data).digest()[:4])[0]


def hash_shingles(text: str, n: int = 5, unit: str = "word", hash: str = "fast") -> np.ndarray:
    """32-bit shingle hashes (uint64 array) of ``text``.

    ``hash="fast"``: vectorised numpy hashing (top 32 bits of a 64-bit n-gram hash);
    ``hash="sha1"``: ``sha1_hash32`` of each UTF-8 shingle string, exactly what
    ``datasketch.MinHash.update`` does by default (slow; for equivalence tests).
    """
    if unit not in ("word", "char"):
        raise ValueError(f"unit must be 'word' or 'char', got {unit!r}")
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if hash == "sha1":
        return np.array([sha1_hash32(s.encode("utf-8", "surrogatepass")) for s in shingles(text, n, unit)], np.uint64)
    if hash != "fast":
        raise ValueError(f"hash must be 'fast' or 'sha1', got {hash!r}")
    return shingle_hashes_batch([text], n, unit)[0]


def permutations(num_perm: int, seed: int = 1, scheme: str = "affine32") -> tuple[np.ndarray, np.ndarray]:
    """The ``(a, b)`` permutation parameters datasketch draws for ``(num_perm, seed, scheme)``."""
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    if not isinstance(num_perm, int) or num_perm < 1:
        raise ValueError(f"num_perm must be a positive int, got {num_perm!r}")
    gen = np.random.RandomState(seed)
    if scheme == "legacy":
        ab = np.array(
            [
                (gen.randint(1, MERSENNE_PRIME, dtype=np.uint64), gen.randint(0, MERSENNE_PRIME, dtype=np.uint64))
                for _ in range(num_perm)
            ],
            dtype=np.uint64,
        ).T
        return ab[0], ab[1]
    a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint32)
    return a, b


def _permute(h: np.ndarray, a: np.ndarray, b: np.ndarray, scheme: str) -> np.ndarray:
    """(S,) shingle hashes -> (P, S) permuted hashes (rows contiguous, so the per-document
    ``minimum.reduceat`` runs along memory)."""
    with np.errstate(over="ignore"):
        if scheme == "legacy":
            x = a[:, None] * h[None, :]  # (P, S), wraps mod 2^64 like datasketch
            x += b[:, None]
            y = x & MERSENNE_PRIME  # x mod p = (x & p) + (x >> 61), then one conditional subtract
            x >>= np.uint64(61)
            y += x
            over = y >= MERSENNE_PRIME  # almost never true (probability ~ 8 / 2^61)
            if over.any():
                y[over] -= MERSENNE_PRIME
            y &= MAX_HASH32
            return y
        x = a[:, None] * fmix32(h)[None, :]  # (P, S) uint32, wraps mod 2^32
        x += b[:, None]
        return x


def minhash_signatures(
    hash_lists: Sequence[np.ndarray],
    num_perm: int = 128,
    seed: int = 1,
    scheme: str = "affine32",
    chunk: int = 8192,
) -> np.ndarray:
    """MinHash signatures of a batch of documents: ``sig[d, k] = min_{h in doc d} π_k(h)``.

    ``hash_lists[d]`` holds the 32-bit shingle hashes of document d (from :func:`hash_shingles`).
    Returns an (N, P) array (uint32 for "affine32", uint64 for "legacy", like datasketch); an
    empty document gets the all-max signature datasketch starts from. Shingles are processed
    ``chunk`` at a time so memory stays at chunk x num_perm words.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    a, b = permutations(num_perm, seed, scheme)
    dtype = np.uint64 if scheme == "legacy" else np.uint32
    empty = MAX_HASH32 if scheme == "legacy" else np.uint32(0xFFFFFFFF)
    sig = np.full((len(hash_lists), num_perm), empty, dtype=dtype)  # (N, P)
    lens = np.array([len(h) for h in hash_lists], dtype=np.int64)
    if lens.sum() == 0:
        return sig
    for h in hash_lists:
        if len(h) and int(np.max(h)) >= 1 << 32:
            raise ValueError("hash_lists must hold 32-bit hashes (< 2**32); use hash_shingles")
    allh = np.concatenate([np.asarray(h, np.uint64) for h in hash_lists if len(h)])
    if scheme == "affine32":
        allh = allh.astype(np.uint32)
    doc_of = np.repeat(np.arange(len(hash_lists)), lens)  # (S_total,) document of each shingle
    for s in range(0, len(allh), chunk):
        h = allh[s : s + chunk]
        d = doc_of[s : s + chunk]
        seg = np.flatnonzero(np.concatenate([[True], d[1:] != d[:-1]]))  # first shingle of each doc in chunk
        mins = np.minimum.reduceat(_permute(h, a, b, scheme), seg, axis=1).T  # (P, n) -> (n_docs_in_chunk, P)
        docs = d[seg]
        sig[docs] = np.minimum(sig[docs], mins)
    return sig


def minhash_texts(
    texts: Sequence[str],
    num_perm: int = 128,
    seed: int = 1,
    scheme: str = "affine32",
    n: int = 5,
    unit: str = "word",
    batch: int = 2000,
) -> np.ndarray:
    """(N, P) MinHash signatures of raw texts, ``batch`` texts at a time.

    Fast shingle hashing followed by :func:`minhash_signatures`.
    """
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    parts = [
        minhash_signatures(shingle_hashes_batch(texts[i : i + batch], n, unit), num_perm, seed, scheme)
        for i in range(0, len(texts), batch)
    ]
    dtype = np.uint64 if scheme == "legacy" else np.uint32
    return np.concatenate(parts) if parts else np.empty((0, num_perm), dtype)


def jaccard_estimate(sig_a: np.ndarray, sig_b: np.ndarray) -> np.ndarray | float:
    """Fraction of equal signature entries (last axis): the MinHash estimate of Jaccard similarity."""
    eq = np.asarray(sig_a) == np.asarray(sig_b)
    return eq.mean(axis=-1)


def jaccard(a: set, b: set) -> float:
    """Exact Jaccard similarity |A ∩ B| / |A ∪ B| (1.0 for two empty sets)."""
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)
