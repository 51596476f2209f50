"""Deduplication: exact hashes, repeated lines (raw or CCNet-normalised), MinHash-LSH near duplicates.

* Exact: a SHA-1 of the normalised text (lower case, whitespace collapsed); keep the first.
* Repeated lines, two keys (:data:`LINE_MODES`): ``"raw"`` compares a line byte for byte (its
  text without the ``"\\n"``; every line, blank ones too), as CS336's exact line dedup does;
  ``"normalized"`` is CCNet's key (arXiv:1911.00359: case, digits, punctuation and spacing
  ignored; blank lines kept). A line is removed, every copy of it, once its key is counted
  ``min_count`` times, counting every copy (``count="lines"``) or once per document
  (``count="documents"``, CCNet's menus and footers).
* Near duplicates (Broder 1997; Lee et al. arXiv:2107.06499): MinHash signatures
  (:mod:`llmbook.data.minhash`) cut into b bands of r rows; two documents become candidates if
  any band matches, which happens with probability 1 - (1 - s^r)^b at Jaccard s (the S-curve,
  :func:`s_curve`). (b, r) minimise the false-positive area below the threshold plus the
  false-negative area above it (:func:`optimal_bands`, as ``datasketch.MinHashLSH`` does).
  The band count can also be set (r = num_perm / b). Texts can be normalised first (lower case,
  accents stripped after NFD, punctuation removed, whitespace collapsed: :func:`normalize_text`).
  Candidates are verified by their signature Jaccard estimate or by the exact Jaccard of their
  shingle sets, joined by union-find, and one survivor (the first) is kept per connected component.
"""

from __future__ import annotations

import hashlib
import random
import re
import unicodedata
from collections import Counter
from collections.abc import Container, Iterable, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np

from llmbook.data.minhash import (
    CJK_RE,
    hash_shingles,
    jaccard,
    minhash_signatures,
    minhash_texts,
    shingles,
    word_spans,
    words,
)
from llmbook.data.pipeline import CorpusStage, Doc


def normalize_for_hash(text: str) -> str:
    """Lower case, digits -> 0, punctuation removed, whitespace collapsed (CCNet's line normalisation)."""
    text = re.sub(r"\d", "0", text.lower())
    text = re.sub(r"[^\w\s]", "", text)
    return " ".join(text.split())


def text_hash(text: str) -> bytes:
    """SHA-1 of :func:`normalize_for_hash` of ``text``: the exact-duplicate key."""
    return hashlib.sha1(normalize_for_hash(text).encode("utf-8", "surrogatepass")).digest()


def exact_dedup(docs: list[Doc]) -> tuple[list[Doc], list[tuple[str, str]]]:
    """Keep the first document of each normalised-text SHA-1; the rest are dropped as ``"exact_duplicate"``."""
    seen: set[bytes] = set()
    kept, gone = [], []
    for d in docs:
        h = text_hash(d["text"])
        if h in seen:
            gone.append((d["id"], "exact_duplicate"))
        else:
            seen.add(h)
            kept.append(d)
    return kept, gone


LINE_MODES = ("raw", "normalized")  # line keys: byte for byte (CS336) or CCNet's normalised line
LINE_COUNTS = ("lines", "documents")  # what reaches min_count: every copy, or each document once


def _check_line_mode(mode: str) -> None:
    if mode not in LINE_MODES:
        raise ValueError(f"mode must be one of {LINE_MODES}, got {mode!r}")


def line_key(line: str, mode: str = "normalized") -> bytes:
    """Key of one line (without its ``"\\n"``): 8-byte SHA-1 prefix of the CCNet normalised line
    (``"normalized"``), or the full SHA-1 of its UTF-8 bytes (``"raw"``: equal keys = equal bytes)."""
    _check_line_mode(mode)
    if mode == "raw":
        return hashlib.sha1(line.encode("utf-8", "surrogatepass")).digest()
    return hashlib.sha1(normalize_for_hash(line).encode("utf-8", "surrogatepass")).digest()[:8]


def split_lines(text: str) -> list[str]:
    """The lines of ``text``, each with its ``"\\n"`` (the last may lack one); ``"".join`` gives ``text`` back."""
    return re.findall(r"[^\n]*\n|[^\n]+$", text)


def _line_body(line: str) -> str:
    return line[:-1] if line.endswith("\n") else line


def _counted_lines(text: str, mode: str) -> list[str]:
    """The lines that get a key: all of them in raw mode, the non-blank ones in normalized mode."""
    if mode == "raw":
        return [_line_body(ln) for ln in split_lines(text)]
    return [ln for ln in text.split("\n") if ln.strip()]


def line_keys(text: str, mode: str = "normalized") -> set[bytes]:
    """The distinct :func:`line_key` of the lines of ``text`` (one count per document)."""
    return {line_key(ln, mode) for ln in _counted_lines(text, mode)}


def repeated_line_keys(
    texts: Iterable[str], *, mode: str, min_count: int = 2, count: str = "lines"
) -> set[bytes]:
    """Keys of the lines counted >= ``min_count`` times over ``texts`` (every copy, or once per document)."""
    _check_line_mode(mode)
    if count not in LINE_COUNTS:
        raise ValueError(f"count must be one of {LINE_COUNTS}, got {count!r}")
    if not isinstance(min_count, int) or min_count < 2:
        raise ValueError(f"min_count must be an int >= 2, got {min_count!r}")
    df: Counter = Counter()
    for text in texts:
        if count == "documents":
            df.update(line_keys(text, mode))
        else:
            df.update(line_key(ln, mode) for ln in _counted_lines(text, mode))
    return {k for k, c in df.items() if c >= min_count}


def strip_lines(text: str, repeated: Container[bytes], *, mode: str) -> str:
    """``text`` without its lines whose key is in ``repeated``.

    Raw mode keeps every other line exactly, with its own ``"\\n"``; normalized mode (CCNet) keeps
    blank lines, joins with ``"\\n"`` and strips the ends.
    """
    _check_line_mode(mode)
    if mode == "raw":
        return "".join(ln for ln in split_lines(text) if line_key(_line_body(ln), "raw") not in repeated)
    lines = [ln for ln in text.split("\n") if not ln.strip() or line_key(ln) not in repeated]
    return "\n".join(lines).strip()


def exact_line_dedup(
    texts: Sequence[str], *, mode: str = "raw", min_count: int = 2, count: str = "lines"
) -> list[str]:
    """Each text without the lines repeated across ``texts`` (every copy removed; may leave "").

    Defaults are CS336's exact line dedup: lines compared byte for byte, a line seen twice
    anywhere is removed. ``mode="normalized", count="documents", min_count=3`` is CCNet's.
    """
    repeated = repeated_line_keys(texts, mode=mode, min_count=min_count, count=count)
    return [strip_lines(t, repeated, mode=mode) for t in texts]


def strip_repeated_lines(doc: Doc, repeated: Container[bytes], mode: str = "normalized") -> Doc | None:
    """``doc`` without the lines whose key is in ``repeated``; None when nothing (or only spaces) is left."""
    text = strip_lines(doc["text"], repeated, mode=mode)
    if not text.strip():
        return None
    return {**doc, "text": text} if text != doc["text"] else doc


def remove_repeated_lines(
    docs: list[Doc], min_docs: int = 3, mode: str = "normalized"
) -> tuple[list[Doc], list[tuple[str, str]]]:
    """Delete lines whose key (:func:`line_key` in ``mode``) occurs in >= ``min_docs`` documents.

    The default is CCNet's normalised key; an emptied doc is dropped as ``"all_lines_repeated"``.
    """
    if not isinstance(min_docs, int) or min_docs < 2:
        raise ValueError(f"min_docs must be an int >= 2, got {min_docs!r}")
    repeated = repeated_line_keys((d["text"] for d in docs), mode=mode, min_count=min_docs, count="documents")
    kept, gone = [], []
    for d in docs:
        out = strip_repeated_lines(d, repeated, mode)
        if out is None:
            gone.append((d["id"], "all_lines_repeated"))
        else:
            kept.append(out)
    return kept, gone


def s_curve(s: np.ndarray | float, b: int, r: int) -> np.ndarray | float:
    """P(candidate | Jaccard s) = 1 - (1 - s^r)^b for b bands of r rows."""
    return 1.0 - (1.0 - np.asarray(s, dtype=np.float64) ** r) ** b


def optimal_bands(threshold: float, num_perm: int, fp_weight: float = 0.5, fn_weight: float = 0.5) -> tuple[int, int]:
    """(b, r) with b r <= num_perm minimising fp_weight * FP area + fn_weight * FN area of the S-curve.

    FP = integral_0^t s_curve ds, FN = integral_t^1 (1 - s_curve) ds (trapezoid rule, 1001 points each).
    """
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    lo, hi = np.linspace(0.0, threshold, 1001), np.linspace(threshold, 1.0, 1001)
    best, opt = float("inf"), (1, 1)
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            fp = np.trapezoid(s_curve(lo, b, r), lo)
            fn = np.trapezoid(1.0 - s_curve(hi, b, r), hi)
            err = fp_weight * fp + fn_weight * fn
            if err < best:
                best, opt = err, (b, r)
    return opt


class UnionFind:
    """Disjoint sets with path halving and union by size."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))
        self.size = [1] * n

    def find(self, x: int) -> int:
        p = self.parent
        while p[x] != x:
            p[x] = p[p[x]]
            x = p[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.size[ra] < self.size[rb]:
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.size[ra] += self.size[rb]

    def labels(self) -> np.ndarray:
        return np.array([self.find(i) for i in range(len(self.parent))])


def lsh_candidate_pairs(sig: np.ndarray, b: int, r: int) -> set[tuple[int, int]]:
    """Pairs (i < j) sharing at least one band of ``r`` rows among the first ``b * r`` signature columns."""
    n, p = sig.shape
    if b * r > p:
        raise ValueError(f"b * r must be <= num_perm ({p}), got b={b}, r={r}")
    pairs: set[tuple[int, int]] = set()
    for k in range(b):
        band = np.ascontiguousarray(sig[:, k * r : (k + 1) * r])  # (N, r)
        _, inv = np.unique(band.view(np.dtype((np.void, band.dtype.itemsize * r))).ravel(), return_inverse=True)
        order = np.argsort(inv, kind="stable")
        bounds = np.flatnonzero(np.diff(inv[order])) + 1
        for group in np.split(order, bounds):
            if len(group) > 1:
                g = sorted(group.tolist())
                pairs.update((g[i], g[j]) for i in range(len(g)) for j in range(i + 1, len(g)))
    return pairs


VERIFY_WITH = ("signature", "exact")  # candidate check: MinHash estimate, or true Jaccard of the shingle sets
SHINGLE_HASHES = ("fast", "sha1")  # numpy shingle hashing, or datasketch's default (bit-equal signatures)


@dataclass(kw_only=True)
class NearDedupConfig:
    """MinHash-LSH near-duplicate settings."""

    threshold: float = 0.7  # Jaccard similarity of shingle sets regarded as "duplicate"
    num_perm: int = 128  # signature length (estimate std ~ sqrt(J(1-J)/num_perm))
    ngram: int = 5  # shingle size (words; CJK characters count as words)
    unit: str = "word"  # "word" or "char" shingles
    seed: int = 1  # permutation seed (same draws as datasketch's MinHash(seed=...))
    scheme: str = "affine32"  # "affine32" (datasketch >= 2.0 default) or "legacy" ((a x + b) mod 2^61-1)
    verify: bool = True  # keep only candidate pairs whose similarity (see verify_with) >= threshold
    bands: int | None = None  # LSH bands b; None: optimal_bands(threshold, num_perm); rows r = num_perm // b
    normalize: bool = False  # shingle normalize_text(text): case, accents, punctuation, spacing ignored
    verify_with: str = "signature"  # "signature" (estimate; needs no text) or "exact" (shingle-set Jaccard)
    shingle_hash: str = "fast"  # "fast" (numpy) or "sha1" (datasketch's default hash; slow, bit-equal)

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")
        if self.unit not in ("word", "char"):
            raise ValueError(f"unit must be 'word' or 'char', got {self.unit!r}")
        if not isinstance(self.ngram, int) or self.ngram < 1:
            raise ValueError(f"ngram must be a positive int, got {self.ngram!r}")
        if not isinstance(self.num_perm, int) or self.num_perm < 1:
            raise ValueError(f"num_perm must be a positive int, got {self.num_perm!r}")
        if self.verify_with not in VERIFY_WITH:
            raise ValueError(f"verify_with must be one of {VERIFY_WITH}, got {self.verify_with!r}")
        if self.shingle_hash not in SHINGLE_HASHES:
            raise ValueError(f"shingle_hash must be one of {SHINGLE_HASHES}, got {self.shingle_hash!r}")
        if self.bands is not None and (
            not isinstance(self.bands, int) or self.bands < 1 or self.num_perm % self.bands
        ):
            divisors = [d for d in range(1, self.num_perm + 1) if self.num_perm % d == 0]
            raise ValueError(
                f"bands must be None or a divisor of num_perm={self.num_perm} {divisors}, got {self.bands!r}"
            )

    def band_rows(self) -> tuple[int, int]:
        """(b, r): ``bands`` and num_perm // bands, or :func:`optimal_bands` when ``bands`` is None."""
        if self.bands is None:
            return optimal_bands(self.threshold, self.num_perm)
        return self.bands, self.num_perm // self.bands


def normalize_text(text: str) -> str:
    """Lower case, accents stripped (NFD, combining marks dropped, NFC back), punctuation and symbols
    removed (every character neither a word character nor a space), whitespace collapsed to one space."""
    text = unicodedata.normalize("NFD", text.lower())
    text = unicodedata.normalize("NFC", "".join(c for c in text if not unicodedata.combining(c)))
    return " ".join(re.sub(r"[^\w\s]", "", text).split())


def prepare_text(text: str, cfg: NearDedupConfig) -> str:
    """The text that gets shingled: :func:`normalize_text` of it when ``cfg.normalize``."""
    return normalize_text(text) if cfg.normalize else text


def shingle_set(text: str, cfg: NearDedupConfig) -> set[str]:
    """The set of shingle strings of ``prepare_text(text)`` (what exact verification compares)."""
    return set(shingles(prepare_text(text, cfg), cfg.ngram, cfg.unit))


def signatures(texts: Sequence[str], cfg: NearDedupConfig) -> np.ndarray:
    """(N, num_perm) MinHash signatures of ``texts`` under ``cfg`` (normalisation, n-gram, hash, seed)."""
    prepared = [prepare_text(t, cfg) for t in texts]
    if cfg.shingle_hash == "sha1":
        hashes = [hash_shingles(t, cfg.ngram, cfg.unit, hash="sha1") for t in prepared]
        return minhash_signatures(hashes, cfg.num_perm, cfg.seed, cfg.scheme)
    return minhash_texts(prepared, cfg.num_perm, cfg.seed, cfg.scheme, cfg.ngram, cfg.unit)


def verify_pairs(
    pairs: Iterable[tuple[int, int]], texts: Sequence[str] | None, sig: np.ndarray | None, cfg: NearDedupConfig
) -> set[tuple[int, int]]:
    """The candidate pairs whose similarity is >= ``cfg.threshold``.

    ``verify_with="signature"``: the fraction of equal signature entries (needs ``sig``);
    ``"exact"``: Jaccard |A ∩ B| / |A ∪ B| of the shingle sets (needs ``texts``; each set is built once).
    """
    pairs = set(pairs)
    if cfg.verify_with == "signature":
        if sig is None:
            raise ValueError("sig is required when verify_with='signature'")
        return {(i, j) for i, j in pairs if float(np.mean(sig[i] == sig[j])) >= cfg.threshold}
    if texts is None:
        raise ValueError("texts is required when verify_with='exact'")
    sets: dict[int, set[str]] = {}
    for i in sorted({k for p in pairs for k in p}):
        sets[i] = shingle_set(texts[i], cfg)
    return {(i, j) for i, j in pairs if jaccard(sets[i], sets[j]) >= cfg.threshold}


def cluster_labels(n: int, pairs: Iterable[tuple[int, int]]) -> np.ndarray:
    """Connected components of ``pairs`` over n items: each item's label is the smallest index in its component."""
    uf = UnionFind(n)
    for i, j in pairs:
        uf.union(i, j)
    first: dict[int, int] = {}
    return np.array([first.setdefault(int(root), i) for i, root in enumerate(uf.labels())], dtype=np.int64)


def edited_copies(
    texts: Sequence[str], max_delete: float = 0.3, min_words: int = 60, copies: int = 1, seed: int = 0
) -> list[tuple[str, str]]:
    """(text, copy with a random share in [0, max_delete) of its words deleted), ``copies`` per text.

    Texts of fewer than ``min_words`` whitespace-separated words are skipped. The deletion share varies
    per copy, so the pairs spread over a range of Jaccard similarities.
    """
    rng = np.random.default_rng(seed)
    pairs = []
    for text in texts:
        tokens = text.split()
        if len(tokens) < min_words:
            continue
        for _ in range(copies):
            keep = rng.random(len(tokens)) > rng.uniform(0, max_delete)
            pairs.append((text, " ".join(t for t, k in zip(tokens, keep) if k)))
    return pairs


def measured_s_curve(
    pairs: Sequence[tuple[str, str]], cfg: NearDedupConfig, b: int, r: int, n_bins: int = 10
) -> list[dict[str, float]]:
    """The LSH candidate rate of text pairs by exact Jaccard similarity, beside :func:`s_curve`'s prediction.

    Each pair gets its exact shingle Jaccard ``s`` and whether b bands of r MinHash rows make it a
    candidate. Per Jaccard bin: the measured rate, the theory averaged over the bin's own ``s``
    values, and the binomial standard error of the measured rate, sqrt(p (1 - p) / n).
    """
    hashes = [hash_shingles(t, cfg.ngram, cfg.unit) for pair in pairs for t in pair]
    sig = minhash_signatures(hashes, cfg.num_perm, cfg.seed, cfg.scheme)  # (2 * pairs, num_perm)
    exact = np.array([jaccard(set(shingles(a, cfg.ngram, cfg.unit)), set(shingles(c, cfg.ngram, cfg.unit)))
                      for a, c in pairs])
    hit = np.array([(0, 1) in lsh_candidate_pairs(sig[2 * i : 2 * i + 2], b, r) for i in range(len(pairs))])
    edges = np.linspace(0, 1, n_bins + 1)
    which = np.clip(np.digitize(exact, edges) - 1, 0, n_bins - 1)
    rows = []
    for k in range(n_bins):
        inside = which == k
        if inside.any():
            theory = float(np.mean(s_curve(exact[inside], b, r)))
            rows.append({"jaccard": float(exact[inside].mean()), "pairs": int(inside.sum()),
                         "measured": float(hit[inside].mean()), "theory": theory,
                         "std_error": float(np.sqrt(theory * (1 - theory) / inside.sum()))})
    return rows


def near_duplicate_clusters(
    texts: Sequence[str], cfg: NearDedupConfig | None = None
) -> tuple[np.ndarray, set[tuple[int, int]]]:
    """Cluster label per text (the smallest index in its cluster) and the detected duplicate pairs."""
    cfg = cfg or NearDedupConfig()
    sig = signatures(texts, cfg)
    b, r = cfg.band_rows()
    pairs = lsh_candidate_pairs(sig, b, r)
    if cfg.verify:
        pairs = verify_pairs(pairs, texts, sig, cfg)
    return cluster_labels(len(texts), pairs), pairs


def near_dedup(docs: list[Doc], cfg: NearDedupConfig | None = None) -> tuple[list[Doc], list[tuple[str, str]]]:
    """Keep the first document of each near-duplicate cluster; others dropped as ``"near_duplicate"``."""
    labels, _ = near_duplicate_clusters([d["text"] for d in docs], cfg)
    kept = [d for i, d in enumerate(docs) if labels[i] == i]
    gone = [(d["id"], "near_duplicate") for i, d in enumerate(docs) if labels[i] != i]
    return kept, gone


def dedup_stages(cfg: NearDedupConfig | None = None, min_line_docs: int = 3) -> list[CorpusStage]:
    """Exact dedup, repeated-line removal and near dedup as pipeline corpus stages.

    The functions are ``functools.partial`` objects (not lambdas) so :mod:`llmbook.data.spark` can
    read their settings and run the distributed version of the same stage.
    """
    return [
        CorpusStage(name="exact_dedup", fn=exact_dedup),
        CorpusStage(name="repeated_lines", fn=partial(remove_repeated_lines, min_docs=min_line_docs)),
        CorpusStage(name="near_dedup", fn=partial(near_dedup, cfg=cfg)),
    ]


def datasketch_pairs(texts: Sequence[str], cfg: NearDedupConfig | None = None) -> set[tuple[int, int]]:
    """The same detection with ``datasketch`` (MinHash.bulk + MinHashLSH with the same (b, r)), side by side.

    datasketch hashes shingles with SHA-1, so with ``cfg.shingle_hash="sha1"`` the signatures, and
    hence the candidate pairs, are exactly :func:`near_duplicate_clusters`' own.
    """
    from datasketch import MinHash, MinHashLSH

    cfg = cfg or NearDedupConfig()
    prepared = [prepare_text(t, cfg) for t in texts]
    sets = [[s.encode("utf-8", "surrogatepass") for s in shingles(t, cfg.ngram, cfg.unit)] for t in prepared]
    mhs = MinHash.bulk(sets, num_perm=cfg.num_perm, seed=cfg.seed, scheme=cfg.scheme)
    lsh = MinHashLSH(threshold=cfg.threshold, num_perm=cfg.num_perm, params=cfg.band_rows())
    for i, m in enumerate(mhs):
        lsh.insert(i, m)
    pairs = {(min(i, j), max(i, j)) for i, m in enumerate(mhs) for j in lsh.query(m) if j != i}
    if cfg.verify and cfg.verify_with == "signature":
        pairs = {(i, j) for i, j in pairs if mhs[i].jaccard(mhs[j]) >= cfg.threshold}
    elif cfg.verify:
        pairs = {(i, j) for i, j in pairs if jaccard(set(sets[i]), set(sets[j])) >= cfg.threshold}
    return pairs


# --- planted duplicates and metrics --------------------------------------------------------
MIN_PLANT_WORDS = 100  # shortest document that gets planted copies
_BOILER = ("Home | About | Contact", "Share this page", "Copyright 2024 Example Media. All rights reserved.")


def plant_near_duplicates(docs: list[Doc], rate: float, seed: int = 0) -> tuple[list[Doc], list[int]]:
    """Add ``round(rate * len(docs))`` edited copies of random documents; return ``(docs_out, cluster_ids)``.

    Only documents of >= ``MIN_PLANT_WORDS`` words are copied (for shorter ones a single edit
    moves 5-gram Jaccard below any sensible threshold). Edits: ~2 % of words replaced or deleted,
    two paragraphs/sentences swapped, or boilerplate header/footer added (one, two or all three).
    ``cluster_ids[i]`` is the index of the original document; ``meta["dup_of"]`` names its id.
    Output order is shuffled.
    """
    if not 0.0 <= rate <= 10.0:
        raise ValueError(f"rate must be in [0, 10], got {rate}")
    r = random.Random(seed)
    out = [(d, i) for i, d in enumerate(docs)]
    eligible = [i for i, d in enumerate(docs) if len(words(d["text"])) >= MIN_PLANT_WORDS]
    if not eligible and rate > 0:
        raise ValueError(f"docs must include documents of >= {MIN_PLANT_WORDS} words to copy")
    for k in range(round(rate * len(docs))):
        src = r.choice(eligible)
        text = docs[src]["text"]
        edits = r.sample(["words", "reorder", "boiler"], r.randint(1, 3))
        if "reorder" in edits:
            parts = re.split(r"(?<=[.!?。！？\n])", text)
            if len(parts) > 2:
                i, j = r.sample(range(len(parts)), 2)
                parts[i], parts[j] = parts[j], parts[i]
            text = "".join(parts)
        if "words" in edits:
            spans = word_spans(text)
            for p in sorted(r.sample(range(len(spans)), len(spans) // 50), reverse=True):
                a, b = spans[p]
                cjk = bool(CJK_RE.match(text[a]))
                if cjk:
                    new = r.choice(["", "也", "之", text[a:b]])
                else:
                    new = r.choice(["", "indeed", "very", text[a:b].upper()])
                text = text[:a] + new + text[b:]
        if "boiler" in edits:
            text = f"{r.choice(_BOILER)}\n{text}\n{r.choice(_BOILER)}"
        meta = {**docs[src].get("meta", {}), "dup_of": docs[src]["id"]}
        out.append(({"id": f"{docs[src]['id']}#dup{k}", "text": text, "meta": meta}, src))
    r.shuffle(out)
    return [d for d, _ in out], [c for _, c in out]


def duplicate_rate(cluster_ids: Sequence[int]) -> float:
    """Fraction of documents that are not the first of their ground-truth cluster: (N - #clusters) / N."""
    return (len(cluster_ids) - len(set(cluster_ids))) / len(cluster_ids) if len(cluster_ids) else 0.0


def pair_precision_recall(pred: set[tuple[int, int]], cluster_ids: Sequence[int]) -> dict[str, float]:
    """Precision/recall of predicted duplicate pairs against all same-cluster pairs."""
    groups: dict[int, list[int]] = {}
    for i, c in enumerate(cluster_ids):
        groups.setdefault(c, []).append(i)
    gold = {(g[i], g[j]) for g in groups.values() for i in range(len(g)) for j in range(i + 1, len(g))}
    tp = len(pred & gold)
    return {
        "precision": tp / len(pred) if pred else 1.0,
        "recall": tp / len(gold) if gold else 1.0,
        "pred_pairs": len(pred),
        "gold_pairs": len(gold),
    }
