"""Deduplication: exact hashes, CCNet repeated lines, MinHash-LSH near duplicates.

* Exact: a SHA-1 of the normalised text (lower case, whitespace collapsed); keep the first.
* Repeated lines (CCNet, arXiv:1911.00359): hash every normalised line, count in how many
  documents it occurs, delete lines seen in >= ``min_docs`` documents (menus, footers).
* Near duplicates (Broder 1997; Lee et al. arXiv:2107.06499): MinHash signatures
  (:mod:`llmbook.data.minhash`) cut into b bands of r rows; two documents become candidates if
  any band matches, which happens with probability 1 - (1 - s^r)^b at Jaccard s (the S-curve,
  :func:`s_curve`). (b, r) minimise the false-positive area below the threshold plus the
  false-negative area above it (:func:`optimal_bands`, as ``datasketch.MinHashLSH`` does).
  Candidates are verified by their signature Jaccard estimate, joined by union-find, and one
  survivor (the first) is kept per connected component.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections import Counter
from collections.abc import Container, Sequence
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


def line_key(line: str) -> bytes:
    """8-byte SHA-1 prefix of a normalised line (the CCNet line hash)."""
    return hashlib.sha1(normalize_for_hash(line).encode("utf-8", "surrogatepass")).digest()[:8]


def line_keys(text: str) -> set[bytes]:
    """The distinct :func:`line_key` of the non-blank lines of ``text`` (one count per document)."""
    return {line_key(ln) for ln in text.split("\n") if ln.strip()}


def strip_repeated_lines(doc: Doc, repeated: Container[bytes]) -> Doc | None:
    """``doc`` without the lines whose key is in ``repeated``; None when nothing is left."""
    lines = [ln for ln in doc["text"].split("\n") if not ln.strip() or line_key(ln) not in repeated]
    text = "\n".join(lines).strip()
    if not text:
        return None
    return {**doc, "text": text} if text != doc["text"] else doc


def remove_repeated_lines(docs: list[Doc], min_docs: int = 3) -> tuple[list[Doc], list[tuple[str, str]]]:
    """CCNet: delete lines whose normalised hash occurs in >= ``min_docs`` documents; an emptied doc is dropped."""
    if min_docs < 2:
        raise ValueError(f"min_docs must be >= 2, got {min_docs}")
    df: Counter = Counter()
    for d in docs:
        df.update(line_keys(d["text"]))
    repeated = {k for k, c in df.items() if c >= min_docs}
    kept, gone = [], []
    for d in docs:
        out = strip_repeated_lines(d, repeated)
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


@dataclass(kw_only=True)
class NearDedupConfig:
    """MinHash-LSH near-duplicate settings."""

    threshold: float = 0.7  # Jaccard similarity of shingle sets regarded as "duplicate"
    num_perm: int = 128  # signature length (estimate std ~ sqrt(J(1-J)/num_perm))
    ngram: int = 5  # shingle size (words; CJK characters count as words)
    unit: str = "word"  # "word" or "char" shingles
    seed: int = 1  # permutation seed (same draws as datasketch's MinHash(seed=...))
    scheme: str = "affine32"  # "affine32" (datasketch >= 2.0 default) or "legacy" ((a x + b) mod 2^61-1)
    verify: bool = True  # keep only candidate pairs whose signature estimate >= threshold

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")
        if self.unit not in ("word", "char"):
            raise ValueError(f"unit must be 'word' or 'char', got {self.unit!r}")


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
    sig = minhash_texts(list(texts), cfg.num_perm, cfg.seed, cfg.scheme, cfg.ngram, cfg.unit)
    b, r = optimal_bands(cfg.threshold, cfg.num_perm)
    pairs = lsh_candidate_pairs(sig, b, r)
    if cfg.verify:
        pairs = {(i, j) for i, j in pairs if float(np.mean(sig[i] == sig[j])) >= cfg.threshold}
    uf = UnionFind(len(texts))
    for i, j in pairs:
        uf.union(i, j)
    roots = uf.labels()
    first: dict[int, int] = {}
    labels = np.array([first.setdefault(int(root), i) for i, root in enumerate(roots)])
    return labels, pairs


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
    """The same detection with ``datasketch`` (MinHash.bulk + MinHashLSH), for side-by-side comparison."""
    from datasketch import MinHash, MinHashLSH

    cfg = cfg or NearDedupConfig()
    sets = [[s.encode("utf-8", "surrogatepass") for s in shingles(t, cfg.ngram, cfg.unit)] for t in texts]
    mhs = MinHash.bulk(sets, num_perm=cfg.num_perm, seed=cfg.seed, scheme=cfg.scheme)
    lsh = MinHashLSH(threshold=cfg.threshold, num_perm=cfg.num_perm)
    for i, m in enumerate(mhs):
        lsh.insert(i, m)
    pairs = {(min(i, j), max(i, j)) for i, m in enumerate(mhs) for j in lsh.query(m) if j != i}
    if cfg.verify:
        pairs = {(i, j) for i, j in pairs if mhs[i].jaccard(mhs[j]) >= cfg.threshold}
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
