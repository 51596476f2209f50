"""A retrieval index over a user's documents: chunks, BM25, dense vectors and hybrid search in one object.

``Index.build(documents, config)`` chunks the documents, indexes the chunks for BM25 and embeds them
into a vector index; ``index.search(query, k)`` returns :class:`Hit` objects (chunk and document id,
score, character offsets, text). ``save``/``load`` persist it to a folder (no pickle: JSON, JSON Lines and
NumPy files, the vector index included); ``add`` and ``delete`` change it without re-embedding what is already there.

Hybrid search fuses the BM25 and dense rankings (:mod:`llmbook.rag.fusion`). ``language_aware``
scales the dense weight by the share of the query's tokens the embedder knows: all-MiniLM-L6-v2 maps
about half of Chinese text to ``[UNK]``, so a Chinese query should lean on BM25's character bigrams.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from llmbook.rag import vector_index
from llmbook.rag.bm25 import BM25, BM25Config
from llmbook.rag.chunking import CHUNKERS, chunk_documents
from llmbook.rag.documents import Chunk, Document
from llmbook.rag.embeddings import SentenceEmbedder
from llmbook.rag.fusion import Ranked, reciprocal_rank_fusion, weighted_score_fusion
from llmbook.rag.tokens import search_tokens

MODES = ("bm25", "dense", "hybrid")
VECTOR_INDEX_CLASSES = {"exact": vector_index.ExactIndex, "ivf": vector_index.IVFIndex, "hnsw": vector_index.HNSWIndex}
VECTOR_INDEXES = tuple(VECTOR_INDEX_CLASSES)
FUSIONS = ("rrf", "weighted")


@dataclass(kw_only=True)
class IndexConfig:
    chunker: str = "recursive"  # none | tokens | recursive | semantic (see llmbook.rag.chunking)
    chunk_size: int = 1000  # characters (recursive, semantic) or words (tokens); short FAQ answers stay whole
    chunk_overlap: int = 50  # words shared by consecutive windows of the tokens chunker
    embedder: str | None = None  # model folder or HF id; None = the bundled all-MiniLM-L6-v2
    bm25_method: str = "lucene"  # idf/tf variant (llmbook.rag.bm25); bm25s's default
    cjk: str = "bigram"  # how Chinese/Japanese/Korean runs become search tokens
    vector_index: str = "exact"  # exact | ivf | hnsw: exact is fast enough below ~100k chunks
    nlist: int = 0  # IVF lists; 0 = about 4 sqrt(chunks), the usual rule of thumb
    nprobe: int = 8  # IVF lists searched per query
    hnsw_m: int = 16  # HNSW links per node (2M on the bottom layer)
    ef_search: int = 64  # HNSW beam width at query time: recall vs speed
    mode: str = "hybrid"  # default search: bm25 | dense | hybrid
    fusion: str = "rrf"  # rrf (ranks only) | weighted (min-max normalised scores)
    rrf_k: float = 60.0  # RRF's damping constant (Cormack et al. 2009)
    dense_weight: float = 0.5  # dense list's share of the fusion; BM25 gets 1 - dense_weight
    language_aware: bool = True  # scale dense_weight by the share of query tokens the embedder knows
    candidates: int = 100  # results taken from each retriever before fusion

    def __post_init__(self) -> None:
        choices = {"chunker": CHUNKERS, "vector_index": VECTOR_INDEXES, "mode": MODES, "fusion": FUSIONS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if not 0.0 <= self.dense_weight <= 1.0:
            raise ValueError(f"dense_weight must be in [0, 1], got {self.dense_weight}")
        if self.chunk_size <= 0 or self.candidates <= 0:
            raise ValueError("chunk_size and candidates must be positive")


@dataclass(frozen=True, kw_only=True)
class Hit:
    chunk_id: str
    doc_id: str
    score: float
    start: int  # character offsets of the chunk in its document
    end: int
    text: str
    meta: dict[str, Any]


class Index:
    """Chunks + BM25 + vectors. Build with :meth:`build`, or :meth:`load` a saved one."""

    def __init__(self, config: IndexConfig, embedder: SentenceEmbedder) -> None:
        self.config = config
        self.embedder = embedder
        self.chunks: list[Chunk | None] = []  # position = vector id; None once deleted
        self._positions: dict[str, int] = {}  # live chunk id -> position: lookups on the search path are O(1)
        self.vectors = np.zeros((0, 0), dtype=np.float32)  # (N, D) unit vectors, one per position
        self.bm25: BM25 | None = None
        self._bm25_positions: list[int] = []  # BM25 row -> chunk position
        self.dense: Any = None

    # building ---------------------------------------------------------------------------------------
    @classmethod
    def build(cls, documents: list[Document], config: IndexConfig | None = None, *,
              embedder: SentenceEmbedder | None = None, progress: bool = False) -> Index:
        config = config or IndexConfig()
        if not documents:
            raise ValueError("no documents to index")
        index = cls(config, embedder or SentenceEmbedder(config.embedder))
        index.add(documents, progress=progress)
        return index

    def _chunk(self, documents: list[Document]) -> list[Chunk]:
        options: dict[str, Any] = {}
        if self.config.chunker == "tokens":
            options = {"size": self.config.chunk_size, "overlap": self.config.chunk_overlap}
        elif self.config.chunker == "recursive":
            options = {"size": self.config.chunk_size}
        elif self.config.chunker == "semantic":
            options = {"max_size": self.config.chunk_size, "embed": self.embedder.encode}
        return chunk_documents(documents, self.config.chunker, **options)

    def add(self, documents: list[Document], *, progress: bool = False) -> int:
        """Chunk, embed and index ``documents``; returns the number of chunks added."""
        known = self.doc_ids()
        clashes = sorted({d.id for d in documents} & known)
        if clashes:
            raise ValueError(f"documents already in the index (delete them first): {clashes[:5]}")
        chunks = self._chunk(documents)
        if not chunks:
            return 0
        vectors = self.embedder.encode([c.text for c in chunks], progress=progress).astype(np.float32)
        first = len(self.chunks)
        self.chunks.extend(chunks)
        self._positions.update({c.id: first + i for i, c in enumerate(chunks)})
        self.vectors = vectors if first == 0 else np.concatenate([self.vectors, vectors])
        if self.dense is None:
            self.dense = self._new_vector_index(self.vectors)
        else:
            self.dense.add(vectors)
        self._reindex_bm25()
        return len(chunks)

    def _new_vector_index(self, vectors: np.ndarray):
        c = self.config
        dim = vectors.shape[1]
        if c.vector_index == "exact":
            dense = vector_index.ExactIndex(dim)
        elif c.vector_index == "ivf":
            nlist = c.nlist or max(1, min(len(vectors) // 8, int(4 * np.sqrt(len(vectors)))))
            dense = vector_index.IVFIndex(dim, nlist, nprobe=c.nprobe)
            dense.train(vectors)
        else:
            dense = vector_index.HNSWIndex(dim, m=c.hnsw_m, ef_search=c.ef_search)
        dense.add(vectors)
        return dense

    def _reindex_bm25(self) -> None:
        """BM25 statistics (idf, mean length) depend on the whole corpus, so the inverted index is rebuilt
        from the stored chunk texts: a tokenisation pass, no embedding."""
        self._bm25_positions = [i for i, c in enumerate(self.chunks) if c is not None]
        tokens = [search_tokens(self.chunks[i].text, cjk=self.config.cjk) for i in self._bm25_positions]
        self.bm25 = BM25(BM25Config(method=self.config.bm25_method)).index(tokens) if tokens else None

    def delete(self, doc_ids: list[str]) -> int:
        """Remove every chunk of the documents ``doc_ids``; returns the number of chunks removed."""
        targets = set(doc_ids)
        positions = [i for i, c in enumerate(self.chunks) if c is not None and c.doc_id in targets]
        for i in positions:
            del self._positions[self.chunks[i].id]
            self.chunks[i] = None
        if positions:
            self.dense.remove(np.array(positions, dtype=np.int64))
            self._reindex_bm25()
        return len(positions)

    def doc_ids(self) -> set[str]:
        return {c.doc_id for c in self.chunks if c is not None}

    def __len__(self) -> int:
        return len(self._positions)

    # searching --------------------------------------------------------------------------------------
    def bm25_ranking(self, query: str, n: int) -> Ranked:
        if self.bm25 is None:
            return []
        rows, scores = self.bm25.search(search_tokens(query, cjk=self.config.cjk), n)
        return [(self.chunks[self._bm25_positions[r]].id, float(s)) for r, s in zip(rows, scores, strict=True)
                if s > 0]

    def dense_ranking(self, query: str, n: int, *, vector: np.ndarray | None = None) -> Ranked:
        if not len(self):
            return []
        query_vector = self.embedder.encode([query]) if vector is None else vector.reshape(1, -1)
        scores, ids = self.dense.search(query_vector.astype(np.float32), min(n, len(self)))
        return [(self.chunks[i].id, float(s)) for s, i in zip(scores[0], ids[0], strict=True) if i >= 0]

    def cosines(self, query: str, chunk_ids: list[str]) -> np.ndarray:
        """The embedder's cosine between ``query`` and each chunk (a score with a meaning, unlike RRF's)."""
        vectors = self.vectors[[self._positions[c] for c in chunk_ids]]  # (n, D)
        return vectors @ self.embedder.encode([query])[0]

    def dense_weight(self, query: str, *, weight: float | None = None, language_aware: bool | None = None) -> float:
        """The dense list's fusion weight for ``query`` (scaled by its known-token share if language-aware)."""
        weight = self.config.dense_weight if weight is None else weight
        aware = self.config.language_aware if language_aware is None else language_aware
        return weight * (1.0 - self.embedder.unknown_token_rate([query])) if aware else weight

    def fuse(self, query: str, sparse: Ranked, dense: Ranked, *, dense_weight: float | None = None,
             language_aware: bool | None = None) -> Ranked:
        """The BM25 and dense lists fused by the config's rule (weights overridable, e.g. to tune them)."""
        weight = self.dense_weight(query, weight=dense_weight, language_aware=language_aware)
        if self.config.fusion == "rrf":
            return reciprocal_rank_fusion([[d for d, _ in sparse], [d for d, _ in dense]], k=self.config.rrf_k,
                                          weights=[1.0 - weight, weight])
        return weighted_score_fusion([sparse, dense], weights=[1.0 - weight, weight])

    def ranking(self, query: str, k: int = 10, *, mode: str | None = None) -> Ranked:
        """(chunk id, score) pairs, best first."""
        mode = mode or self.config.mode
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if k <= 0:
            raise ValueError(f"k must be positive, got {k}")
        if mode == "bm25":
            return self.bm25_ranking(query, k)
        if mode == "dense":
            return self.dense_ranking(query, k)
        n = max(k, self.config.candidates)
        return self.fuse(query, self.bm25_ranking(query, n), self.dense_ranking(query, n))[:k]

    def search(self, query: str, k: int = 10, *, mode: str | None = None) -> list[Hit]:
        """The ``k`` best chunks for ``query``."""
        return [self.hit(self.chunk(chunk_id), score) for chunk_id, score in self.ranking(query, k, mode=mode)]

    def hit(self, chunk: Chunk, score: float) -> Hit:
        return Hit(chunk_id=chunk.id, doc_id=chunk.doc_id, score=score, start=chunk.start, end=chunk.end,
                   text=chunk.text, meta=chunk.meta)

    def chunk(self, chunk_id: str) -> Chunk:
        return self.chunks[self._positions[chunk_id]]

    # persistence ------------------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        header = {"format": "llmbook-rag-index/1", "config": asdict(self.config),
                  "embedder": self.embedder.fingerprint, "chunks": len(self)}
        (folder / "index.json").write_text(json.dumps(header, indent=2) + "\n")
        with open(folder / "chunks.jsonl", "w", encoding="utf-8") as out:
            for chunk in self.chunks:
                row = None if chunk is None else {"id": chunk.id, "doc_id": chunk.doc_id, "text": chunk.text,
                                                  "start": chunk.start, "end": chunk.end, "meta": chunk.meta}
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
        np.save(folder / "vectors.npy", self.vectors)
        self.dense.save(folder / "vector_index.npz")  # an HNSW graph costs minutes to rebuild at scale
        return folder

    @classmethod
    def load(cls, folder: str | Path, *, embedder: SentenceEmbedder | None = None) -> Index:
        """A saved index. Refuses an ``embedder`` other than the one that built it (its vectors would not compare)."""
        folder = Path(folder)
        header_file = folder / "index.json"
        if not header_file.is_file():
            raise FileNotFoundError(
                f"{folder} is not a saved index (no index.json): build it with `llmbook rag index`")
        header = json.loads(header_file.read_text())
        names = {f.name for f in fields(IndexConfig)}
        config = IndexConfig(**{k: v for k, v in header["config"].items() if k in names})
        embedder = embedder or SentenceEmbedder(config.embedder)
        if embedder.fingerprint != header["embedder"]:
            raise ValueError(f"this index was built with embedder {header['embedder']!r}, not {embedder.fingerprint!r}:"
                             " query vectors would not be comparable; rebuild the index or pass the same embedder")
        index = cls(config, embedder)
        with open(folder / "chunks.jsonl", encoding="utf-8") as rows:
            index.chunks = [None if row is None else Chunk(**row) for row in map(json.loads, rows)]
        index._positions = {c.id: i for i, c in enumerate(index.chunks) if c is not None}
        index.vectors = np.load(folder / "vectors.npy")
        index.dense = VECTOR_INDEX_CLASSES[config.vector_index].load(folder / "vector_index.npz")
        index._reindex_bm25()  # a tokenisation pass: cheaper than storing the postings
        return index
