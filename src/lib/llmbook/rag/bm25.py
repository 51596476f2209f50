"""BM25 over an inverted index: the five variants of bm25s, scored from postings.

For a query q and a document d of length L_d (corpus mean L_avg, N documents, df_t documents containing
term t, tf the count of t in d), every variant is a sum over the query's terms of idf × tf-part::

    score(d, q) = sum_{t in q} idf(t) * T(tf_td, L_d)        norm_d = 1 - b + b * L_d / L_avg

    method      idf(t)                                     T(tf, L_d)
    robertson   log((N - df + 0.5) / (df + 0.5)), >= 0     tf / (tf + k1 * norm_d)
    lucene      log(1 + (N - df + 0.5) / (df + 0.5))       tf / (tf + k1 * norm_d)
    atire       log(N / df)                                (k1 + 1) * tf / (tf + k1 * norm_d)
    bm25l       log((N + 1) / (df + 0.5))                  (k1 + 1) * (c + delta) / (k1 + c + delta), c = tf / norm_d
    bm25+       log((N + 1) / df)                          (k1 + 1) * tf / (tf + k1 * norm_d) + delta

Robertson et al. 1994 ("Okapi at TREC-3") is the original; Lucene adds 1 inside the log so idf never
goes negative; ATIRE is Trotman et al. 2014; BM25L and BM25+ are Lv & Zhai 2011 ("When documents are
very long, BM25 fails!"; "Lower-bounding term frequency normalization"). The names and formulas are
those of Kamphuis, de Vries, Boytsov & Lin 2020, "Which BM25 do you mean? A large-scale reproducibility
study of scoring variants" (ECIR), and of bm25s (Lù 2024, arXiv:2407.03618), which this module equals:

* robertson's idf is clamped at 0 (a term in more than half the documents adds nothing), as in bm25s;
* robertson and lucene drop the constant (k1 + 1) factor (Lucene >= 8 does; it does not change ranks);
* bm25l and bm25+ score a query term a document lacks as T(0) = (k1+1)·delta/(k1+delta) and delta, so
  every document, empty ones included, gets that floor; robertson/lucene/atire give absent terms 0.
* A query term repeated m times counts m times (bm25s and rank_bm25 both loop over the query's tokens);
  query terms not in the vocabulary score 0.

rank_bm25 0.2.2 (Trotman et al.'s naming) equals these methods as follows:

* ``BM25Okapi(k1, b, epsilon)`` == (k1 + 1) × ``robertson`` as long as no term occurs in more than half
  the documents; for those, rank_bm25 replaces the negative idf by epsilon × (mean idf over the
  vocabulary) instead of 0.
* ``BM25Plus(k1, b, delta)`` == ``bm25+`` with the same delta (rank_bm25's default delta is 1.0, ours and
  bm25s's 0.5).
* ``BM25L(k1, b, delta)`` multiplies each term's weight by its raw tf once more (tf is already inside c),
  so absent terms give 0 (rank_bm25 issue #5, fixed on its master branch after 0.2.2): its score is
  sum over query tokens t of tf_td × score_bm25l(d, [t]); no setting makes the two equal.

The index is the textbook one: for each term, the ids of the documents that contain it and the counts
(its postings), stored as one CSR-like array set (``postings_start`` offsets into ``postings_doc`` and
``postings_tf``). A query touches only its own terms' postings, computing the tf-part at query time.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from llmbook.progress import ProgressBar

METHODS = ("robertson", "lucene", "atire", "bm25l", "bm25+")
_FORMAT = "llmbook.rag.bm25/1"  # written into every saved index, checked on load


@dataclass(kw_only=True)
class BM25Config:
    method: str = "lucene"  # robertson | lucene | atire | bm25l | bm25+ (bm25s's names); lucene's idf is never < 0
    k1: float = 1.5  # tf saturation: a term's weight approaches its limit after ~k1 occurrences
    b: float = 0.75  # length normalisation: 0 ignores document length, 1 divides tf by L_d / L_avg fully
    delta: float = 0.5  # BM25L / BM25+ shift: the lower bound that keeps long documents from scoring ~0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"BM25 method must be one of {METHODS}, got {self.method!r}")
        if self.k1 < 0:
            raise ValueError(f"BM25 k1 must be >= 0, got {self.k1}")
        if not 0 <= self.b <= 1:
            raise ValueError(f"BM25 b must be in [0, 1], got {self.b}")
        if self.delta < 0:
            raise ValueError(f"BM25 delta must be >= 0, got {self.delta}")


def bm25_idf(df: np.ndarray, n_docs: int, method: str) -> np.ndarray:
    """Inverse document frequency of terms with document frequencies ``df`` (table in the module docstring)."""
    df = np.asarray(df, dtype=np.float64)
    if method == "robertson":
        return np.log(np.maximum((n_docs - df + 0.5) / (df + 0.5), 1.0))  # clamped: idf >= 0
    if method == "lucene":
        return np.log(1.0 + (n_docs - df + 0.5) / (df + 0.5))
    if method == "atire":
        return np.log(n_docs / df)
    if method == "bm25l":
        return np.log((n_docs + 1) / (df + 0.5))
    if method == "bm25+":
        return np.log((n_docs + 1) / df)
    raise ValueError(f"BM25 method must be one of {METHODS}, got {method!r}")


def bm25_tf_part(tf: np.ndarray, length_ratio: np.ndarray, config: BM25Config) -> np.ndarray:
    """T(tf, L_d) of the module docstring; ``length_ratio`` is L_d / L_avg for each entry of ``tf``."""
    k1, b, delta = config.k1, config.b, config.delta
    tf = np.asarray(tf, dtype=np.float64)
    norm = 1.0 - b + b * np.asarray(length_ratio, dtype=np.float64)
    if config.method in ("robertson", "lucene"):
        return tf / (tf + k1 * norm)
    if config.method == "atire":
        return (k1 + 1) * tf / (tf + k1 * norm)
    if config.method == "bm25l":
        c = tf / norm
        return (k1 + 1) * (c + delta) / (k1 + c + delta)
    return (k1 + 1) * tf / (tf + k1 * norm) + delta  # bm25+


def bm25_absent_tf_part(config: BM25Config) -> float:
    """T(0): what a query term contributes (times idf) to a document lacking it; non-zero for bm25l/bm25+."""
    k1, delta = config.k1, config.delta
    if config.method == "bm25l":
        return (k1 + 1) * delta / (k1 + delta) if k1 + delta > 0 else 0.0
    if config.method == "bm25+":
        return delta
    return 0.0


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and values of the ``k`` largest scores: descending, ties broken by the lower index."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    n = len(scores)
    if k < n:  # keep every score >= the k-th largest (ties included), then sort just those
        kth = np.partition(scores, n - k)[n - k]
        candidates = np.flatnonzero(scores >= kth)
    else:
        candidates = np.arange(n)
    order = candidates[np.argsort(-scores[candidates], kind="stable")[:k]]  # stable: lower index first
    return order, scores[order]


def _check_tokens(tokens: Sequence[str], what: str) -> None:
    if isinstance(tokens, str):
        raise ValueError(f"{what} must be a list of tokens, not a string: tokenise it first (e.g. search_tokens)")


class BM25:
    """A BM25 index: ``BM25(config).index(corpus_tokens)``, then ``.scores(query)`` or ``.search(query, k)``."""

    def __init__(self, config: BM25Config | None = None) -> None:
        self.config = config if config is not None else BM25Config()
        self.terms: list[str] = []  # term id -> term
        self.vocabulary: dict[str, int] = {}  # term -> term id
        self.postings_start = np.zeros(1, dtype=np.int64)  # (V + 1,) term t's postings are [start[t], start[t+1])
        self.postings_doc = np.zeros(0, dtype=np.int32)  # (nnz,) document ids, ascending within a term
        self.postings_tf = np.zeros(0, dtype=np.int32)  # (nnz,) how often the term occurs in that document
        self.doc_lengths = np.zeros(0, dtype=np.int64)  # (N,) tokens per document
        self._derive()

    # ---- building -------------------------------------------------------------------------------

    def index(self, corpus_tokens: Sequence[Sequence[str]], *, progress: bool = False) -> BM25:
        """Build the inverted index of tokenised documents (empty documents allowed); returns ``self``."""
        if len(corpus_tokens) == 0:
            raise ValueError("cannot index an empty corpus: pass at least one (possibly empty) document")
        vocabulary: dict[str, int] = {}
        doc_term_ids = []
        for doc in ProgressBar(corpus_tokens, desc="BM25 index", disable=not progress):
            _check_tokens(doc, "each document")
            doc_term_ids.append([vocabulary.setdefault(token, len(vocabulary)) for token in doc])
        n_docs = len(doc_term_ids)
        lengths = np.array([len(ids) for ids in doc_term_ids], dtype=np.int64)
        term_ids = np.fromiter(itertools.chain.from_iterable(doc_term_ids), dtype=np.int64, count=int(lengths.sum()))
        doc_ids = np.repeat(np.arange(n_docs, dtype=np.int64), lengths)
        # One sort groups the (term, document) pairs by term, then by document; the run lengths are the tfs.
        pairs, tf = np.unique(term_ids * n_docs + doc_ids, return_counts=True)
        pair_terms = pairs // n_docs
        self.terms = list(vocabulary)
        self.vocabulary = vocabulary
        self.postings_start = np.zeros(len(vocabulary) + 1, dtype=np.int64)
        np.cumsum(np.bincount(pair_terms, minlength=len(vocabulary)), out=self.postings_start[1:])
        self.postings_doc = (pairs % n_docs).astype(np.int32)
        self.postings_tf = tf.astype(np.int32)
        self.doc_lengths = lengths
        self._derive()
        return self

    def _derive(self) -> None:
        """Everything computed from the stored counts: idf, length ratios, the absent-term tf-part."""
        n_docs = len(self.doc_lengths)
        self.document_frequency = np.diff(self.postings_start)  # (V,)
        self.idf = bm25_idf(self.document_frequency, n_docs, self.config.method)  # (V,)
        mean_length = self.doc_lengths.mean() if n_docs and self.doc_lengths.sum() > 0 else 1.0
        self.length_ratio = self.doc_lengths / mean_length  # (N,) L_d / L_avg
        self.absent_tf_part = bm25_absent_tf_part(self.config)

    # ---- reading --------------------------------------------------------------------------------

    @property
    def n_docs(self) -> int:
        return len(self.doc_lengths)

    @property
    def vocabulary_size(self) -> int:
        return len(self.terms)

    def postings(self, term: str) -> tuple[np.ndarray, np.ndarray]:
        """The ids of the documents containing ``term`` and its count in each (empty arrays if unknown)."""
        t = self.vocabulary.get(term)
        if t is None:
            return self.postings_doc[:0], self.postings_tf[:0]
        start, end = self.postings_start[t], self.postings_start[t + 1]
        return self.postings_doc[start:end], self.postings_tf[start:end]

    def scores(self, query_tokens: Sequence[str]) -> np.ndarray:
        """BM25 score of every document for a tokenised query: (n_docs,) float64."""
        if self.n_docs == 0:
            raise ValueError("the BM25 index is empty: call .index(corpus_tokens) first")
        _check_tokens(query_tokens, "query_tokens")
        scores = np.zeros(self.n_docs, dtype=np.float64)
        for term, count in Counter(query_tokens).items():
            t = self.vocabulary.get(term)
            if t is None:
                continue
            docs, tf = self.postings(term)
            weight = count * self.idf[t]  # a term repeated in the query counts once per occurrence
            tf_part = bm25_tf_part(tf, self.length_ratio[docs], self.config)
            if self.absent_tf_part:  # bm25l / bm25+: every document gets the floor, postings the rest
                scores += weight * self.absent_tf_part
                tf_part = tf_part - self.absent_tf_part
            scores[docs] += weight * tf_part  # a term's doc ids are unique: plain fancy-index add is safe
        return scores

    def search(self, query_tokens: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``min(k, n_docs)`` best documents: (doc indices, scores), descending, ties by lower index."""
        return top_k(self.scores(query_tokens), k)

    def search_many(
        self, queries: Sequence[Sequence[str]], k: int, *, progress: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`search` for each query: (Q, min(k, n_docs)) doc indices and scores."""
        hits = [self.search(query, k) for query in ProgressBar(queries, desc="BM25 search", disable=not progress)]
        width = min(k, self.n_docs)
        ids = np.array([h[0] for h in hits], dtype=np.int64).reshape(len(hits), width)
        values = np.array([h[1] for h in hits], dtype=np.float64).reshape(len(hits), width)
        return ids, values

    # ---- persistence ----------------------------------------------------------------------------

    def save(self, path: str | Path) -> None:
        """Write the index to one ``.npz`` file (arrays + a JSON header holding config and terms; no pickle)."""
        header = {"format": _FORMAT, "config": asdict(self.config), "terms": self.terms}
        with open(path, "wb") as f:  # a file object: numpy writes exactly `path`, adding no ".npz"
            np.savez(
                f,
                header=np.frombuffer(json.dumps(header, ensure_ascii=False).encode("utf-8"), dtype=np.uint8),
                postings_start=self.postings_start,
                postings_doc=self.postings_doc,
                postings_tf=self.postings_tf,
                doc_lengths=self.doc_lengths,
            )

    @classmethod
    def load(cls, path: str | Path) -> BM25:
        """Read an index written by :meth:`save`; scores are bit-identical to the saved index's."""
        if not Path(path).is_file():
            raise FileNotFoundError(f"no BM25 index file at {path}")
        with np.load(path, allow_pickle=False) as data:
            if "header" not in data.files:
                raise ValueError(f"{path} is not a BM25 index saved by llmbook (no header)")
            header = json.loads(data["header"].tobytes().decode("utf-8"))
            if header.get("format") != _FORMAT:
                raise ValueError(f"{path} is not a BM25 index saved by llmbook ({_FORMAT})")
            bm25 = cls(BM25Config(**header["config"]))
            bm25.terms = header["terms"]
            bm25.vocabulary = {term: i for i, term in enumerate(bm25.terms)}
            bm25.postings_start = data["postings_start"]
            bm25.postings_doc = data["postings_doc"]
            bm25.postings_tf = data["postings_tf"]
            bm25.doc_lengths = data["doc_lengths"]
        bm25._derive()
        return bm25
