"""Vector indexes from scratch: exact (brute-force) search, the inverted file (IVF) and HNSW.

All indexes score by inner product, s(q, x) = <q, x>, on L2-normalised float32 vectors (the cosine
similarity of sentence embeddings), return the k best as ``(scores (Q, k) float32, ids (Q, k) int64)``,
best first, with ids counted in insertion order (padded with -1 / -inf when fewer than k are found),
and count ``distance_computations``, the number of query-vector dot products a search evaluated: the
cost measure that approximate indexes trade against recall.

- :class:`ExactIndex` scores every stored vector (FAISS ``IndexFlatIP``): N dot products per query.
- :class:`IVFIndex` (Jegou, Douze & Schmid, "Product quantization for nearest neighbor search", 2011;
  Sivic & Zisserman's inverted file) clusters the vectors with spherical k-means into ``nlist`` lists,
  and a query scores the ``nlist`` centroids, then only the vectors of its ``nprobe`` best lists
  (FAISS ``IndexIVFFlat``): nlist + sum of the probed list sizes dot products per query.
- :class:`HNSWIndex` (Malkov & Yashunin, arXiv:1603.09320) walks a layered proximity graph
  (:mod:`llmbook.rag.hnsw`) from a fixed entry point towards the query (FAISS ``IndexHNSWFlat``): a few
  hundred dot products per query, growing ~log N.

Every index saves to and loads from one ``.npz`` file (``np.savez``, no pickle).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np

from llmbook.rag.hnsw import HNSWGraph
from llmbook.rag.kmeans import assign, kmeans

SEARCH_BLOCK = 1024  # queries scored at once by ExactIndex: bounds the (queries, N) score matrix


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32), so that the inner product is the cosine similarity."""
    x = np.asarray(vectors, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def clustered_vectors(n: int, dim: int, *, n_clusters: int = 50, spread: float = 0.6, seed: int = 0) -> np.ndarray:
    """Synthetic embeddings: ``n`` unit vectors around ``n_clusters`` random unit centres (Gaussian noise of
    norm ~``spread``), so that nearest neighbours have structure to find, as real embeddings do. The centres
    depend on ``seed`` only: generate index and query vectors together and split them."""
    rng = np.random.default_rng(seed)
    centres = l2_normalize(rng.standard_normal((n_clusters, dim)))
    labels = rng.integers(0, n_clusters, size=n)
    noise = rng.standard_normal((n, dim)) * (spread / np.sqrt(dim))
    return l2_normalize(centres[labels] + noise)


def recall_at_k(found_ids: np.ndarray, true_ids: np.ndarray, k: int) -> float:
    """Mean over queries of |found[:k] & true[:k]| / k (the -1 padding of ``found`` never counts)."""
    found, true = np.asarray(found_ids)[:, :k], np.asarray(true_ids)[:, :k]
    if found.shape[0] != true.shape[0]:
        raise ValueError(f"recall_at_k: {found.shape[0]} rows of found ids but {true.shape[0]} rows of true ids")
    hits = sum(len(np.intersect1d(f[f >= 0], t[t >= 0])) for f, t in zip(found, true))
    return hits / (k * len(found))


def top_k(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best columns of each row of ``scores`` (Q, N): (scores (Q, k), ids[columns] (Q, k)), best first,
    ties broken by the smaller id; padded with -inf / -1 when N < k."""
    q, n = scores.shape
    out_scores = np.full((q, k), -np.inf, dtype=np.float32)
    out_ids = np.full((q, k), -1, dtype=np.int64)
    kk = min(k, n)
    if kk == 0:
        return out_scores, out_ids
    cols = np.argpartition(-scores, kk - 1, axis=1)[:, :kk] if kk < n else np.broadcast_to(np.arange(n), (q, n))
    best = np.take_along_axis(scores, cols, axis=1)
    best_ids = ids[cols]
    order = np.lexsort((best_ids, -best), axis=1)  # by score descending, then id
    out_scores[:, :kk] = np.take_along_axis(best, order, axis=1)
    out_ids[:, :kk] = np.take_along_axis(best_ids, order, axis=1)
    return out_scores, out_ids


class VectorIndex:
    """What every index shares: input checks, the distance counter, and ``.npz`` save / load."""

    kind: ClassVar[str]  # stored in the file, so that a file is never loaded as the wrong index

    def __init__(self, dim: int) -> None:
        if not isinstance(dim, (int, np.integer)) or dim <= 0:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        self.dim = int(dim)
        self.distance_computations = 0  # query-vector dot products evaluated by search() since the last reset

    def reset_counter(self) -> None:
        self.distance_computations = 0

    @property
    def ntotal(self) -> int:
        """Number of vectors a search can return (removed ones excluded)."""
        raise NotImplementedError

    def _check_vectors(self, vectors: np.ndarray, what: str) -> np.ndarray:
        """(N, dim) float32 C-contiguous copy-or-view; a single (dim,) vector counts as one row."""
        x = np.asarray(vectors, dtype=np.float32)
        if x.ndim == 1:
            x = x[None, :]
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"{type(self).__name__}: {what} must have shape (n, {self.dim}), got {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError(f"{type(self).__name__}: {what} contain non-finite values (NaN or inf)")
        return np.ascontiguousarray(x)

    @staticmethod
    def _check_k(k: int) -> int:
        if not isinstance(k, (int, np.integer)) or k <= 0:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        return int(k)

    @staticmethod
    def _check_ids(ids: np.ndarray) -> np.ndarray:
        return np.atleast_1d(np.asarray(ids, dtype=np.int64))

    def _state(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    @classmethod
    def _from_state(cls, state: dict[str, np.ndarray]):
        raise NotImplementedError

    def save(self, path: str | Path) -> None:
        """Write the whole index to ``path`` (an ``.npz`` archive of plain arrays; written as named)."""
        with open(path, "wb") as f:
            np.savez(f, kind=np.array(self.kind), **self._state())

    @classmethod
    def load(cls, path: str | Path):
        """The index saved at ``path`` by ``save``: searches give identical results."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no saved index at {path}")
        with np.load(path, allow_pickle=False) as data:
            state = {name: data[name] for name in data.files}
        kind = str(state.pop("kind", "?"))
        if kind != cls.kind:
            raise ValueError(f"{path} holds a {kind!r} index, not a {cls.kind!r} one ({cls.__name__})")
        return cls._from_state(state)


class ExactIndex(VectorIndex):
    """Brute force: a query scores all N stored vectors with one matrix product (FAISS ``IndexFlatIP``)."""

    kind = "exact"

    def __init__(self, dim: int) -> None:
        super().__init__(dim)
        self._vectors = np.empty((0, self.dim), dtype=np.float32)  # (N, D), rows in insertion order
        self._ids = np.empty(0, dtype=np.int64)  # (N,), id of each row: removal leaves gaps
        self._next_id = 0

    @property
    def ntotal(self) -> int:
        return len(self._ids)

    def add(self, vectors: np.ndarray) -> np.ndarray:
        """Store vectors (N, D); returns their ids (insertion order, continuing after earlier adds)."""
        x = self._check_vectors(vectors, "vectors")
        ids = np.arange(self._next_id, self._next_id + len(x), dtype=np.int64)
        self._vectors = np.concatenate([self._vectors, x])
        self._ids = np.concatenate([self._ids, ids])
        self._next_id += len(x)
        return ids

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q, k = self._check_vectors(queries, "queries"), self._check_k(k)
        scores = np.empty((len(q), k), dtype=np.float32)
        ids = np.empty((len(q), k), dtype=np.int64)
        for start in range(0, len(q), SEARCH_BLOCK):
            block = slice(start, start + SEARCH_BLOCK)
            scores[block], ids[block] = top_k(q[block] @ self._vectors.T, self._ids, k)  # (Q, N) scores
        self.distance_computations += len(q) * self.ntotal
        return scores, ids

    def remove(self, ids: np.ndarray) -> int:
        """Delete these ids (unknown ones are ignored, as in FAISS ``remove_ids``); returns how many went."""
        gone = np.isin(self._ids, self._check_ids(ids))
        self._vectors, self._ids = self._vectors[~gone], self._ids[~gone]
        return int(gone.sum())

    def _state(self) -> dict[str, np.ndarray]:
        return {"dim": np.array(self.dim), "vectors": self._vectors, "ids": self._ids,
                "next_id": np.array(self._next_id)}

    @classmethod
    def _from_state(cls, state: dict[str, np.ndarray]) -> ExactIndex:
        index = cls(int(state["dim"]))
        index._vectors, index._ids, index._next_id = state["vectors"], state["ids"], int(state["next_id"])
        return index


class IVFIndex(VectorIndex):
    """Inverted file with exact vectors in the lists (FAISS ``IndexIVFFlat``, inner product).

    ``train`` runs spherical k-means (:func:`llmbook.rag.kmeans.kmeans`) for ``nlist`` centroids; ``add``
    puts each vector in the list of its best centroid; ``search`` scores the centroids, then the vectors of
    the ``nprobe`` best lists. The lists are one array sorted by list (rows of list j are
    ``offsets[j]:offsets[j + 1]``), so probing a list is a slice, not a copy.
    """

    kind = "ivf"

    def __init__(self, dim: int, nlist: int, *, nprobe: int = 8, seed: int = 0, kmeans_iters: int = 20) -> None:
        super().__init__(dim)
        if not isinstance(nlist, (int, np.integer)) or nlist <= 0:
            raise ValueError(f"nlist must be a positive integer, got {nlist!r}")
        self.nlist = int(nlist)
        self.nprobe = nprobe  # lists scanned per query: the recall / speed knob (clipped to nlist)
        self.seed = seed  # k-means initialisation
        self.kmeans_iters = kmeans_iters  # FAISS uses 10 for IVF training, 20 would be its k-means default
        self.centroids: np.ndarray | None = None  # (nlist, D) unit vectors once trained
        self._vectors = np.empty((0, self.dim), dtype=np.float32)  # (N, D) sorted by list
        self._ids = np.empty(0, dtype=np.int64)  # (N,)
        self._lists = np.empty(0, dtype=np.int64)  # (N,) list of each row, non-decreasing
        self._offsets = np.zeros(self.nlist + 1, dtype=np.int64)
        self._next_id = 0

    @property
    def is_trained(self) -> bool:
        return self.centroids is not None

    @property
    def ntotal(self) -> int:
        return len(self._ids)

    def list_sizes(self) -> np.ndarray:
        return np.diff(self._offsets)

    def train(self, vectors: np.ndarray, *, progress: bool = False) -> None:
        x = self._check_vectors(vectors, "training vectors")
        if len(x) < self.nlist:
            raise ValueError(f"IVFIndex.train needs at least nlist={self.nlist} vectors, got {len(x)}")
        if self.ntotal:
            raise ValueError("IVFIndex.train: the index already holds vectors; train a new index instead")
        self.centroids = kmeans(x, self.nlist, iters=self.kmeans_iters, seed=self.seed, progress=progress)

    def _require_trained(self, action: str) -> np.ndarray:
        if self.centroids is None:
            raise ValueError(f"IVFIndex.{action} before train(): call index.train(vectors) first")
        return self.centroids

    def _store(self, vectors: np.ndarray, ids: np.ndarray, lists: np.ndarray) -> None:
        order = np.argsort(lists, kind="stable")  # group by list, keeping insertion order inside each
        self._vectors, self._ids, self._lists = vectors[order], ids[order], lists[order]
        self._offsets = np.concatenate([[0], np.cumsum(np.bincount(self._lists, minlength=self.nlist))])

    def add(self, vectors: np.ndarray) -> np.ndarray:
        centroids = self._require_trained("add")
        x = self._check_vectors(vectors, "vectors")
        ids = np.arange(self._next_id, self._next_id + len(x), dtype=np.int64)
        lists, _ = assign(x, centroids)
        self._store(np.concatenate([self._vectors, x]), np.concatenate([self._ids, ids]),
                    np.concatenate([self._lists, lists]))
        self._next_id += len(x)
        return ids

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        centroids = self._require_trained("search")
        q, k = self._check_vectors(queries, "queries"), self._check_k(k)
        if not isinstance(self.nprobe, (int, np.integer)) or self.nprobe <= 0:
            raise ValueError(f"nprobe must be a positive integer, got {self.nprobe!r}")
        nprobe = min(int(self.nprobe), self.nlist)
        coarse = q @ centroids.T  # (Q, nlist): nlist dot products per query
        probed = np.argpartition(-coarse, nprobe - 1, axis=1)[:, :nprobe] if nprobe < self.nlist else \
            np.broadcast_to(np.arange(self.nlist), (len(q), self.nlist))
        scores = np.empty((len(q), k), dtype=np.float32)
        ids = np.empty((len(q), k), dtype=np.int64)
        scanned = 0
        for i, lists in enumerate(probed):
            rows = [slice(self._offsets[j], self._offsets[j + 1]) for j in lists]
            s = np.concatenate([self._vectors[r] @ q[i] for r in rows])  # one dot product per listed vector
            scanned += len(s)
            scores[i], ids[i] = top_k(s[None, :], np.concatenate([self._ids[r] for r in rows]), k)
        self.distance_computations += len(q) * self.nlist + scanned
        return scores, ids

    def remove(self, ids: np.ndarray) -> int:
        """Delete these ids from their lists (unknown ones are ignored); returns how many went."""
        gone = np.isin(self._ids, self._check_ids(ids))
        self._store(self._vectors[~gone], self._ids[~gone], self._lists[~gone])
        return int(gone.sum())

    def _state(self) -> dict[str, np.ndarray]:
        trained = self.centroids is not None
        return {"dim": np.array(self.dim), "nlist": np.array(self.nlist), "nprobe": np.array(self.nprobe),
                "seed": np.array(self.seed), "kmeans_iters": np.array(self.kmeans_iters),
                "centroids": self.centroids if trained else np.empty((0, self.dim), dtype=np.float32),
                "trained": np.array(trained), "vectors": self._vectors, "ids": self._ids, "lists": self._lists,
                "next_id": np.array(self._next_id)}

    @classmethod
    def _from_state(cls, state: dict[str, np.ndarray]) -> IVFIndex:
        index = cls(int(state["dim"]), int(state["nlist"]), nprobe=int(state["nprobe"]), seed=int(state["seed"]),
                    kmeans_iters=int(state["kmeans_iters"]))
        index.centroids = state["centroids"] if bool(state["trained"]) else None
        index._store(state["vectors"], state["ids"], state["lists"])
        index._next_id = int(state["next_id"])
        return index


class HNSWIndex(VectorIndex):
    """HNSW graph index, inner product (FAISS ``IndexHNSWFlat(dim, M, METRIC_INNER_PRODUCT)``); the graph and
    its algorithms are :class:`llmbook.rag.hnsw.HNSWGraph`. ``remove`` leaves tombstones: removed vectors
    still route searches but are never returned. Building is not counted in ``distance_computations``; a
    search counts every dot product of its greedy descent and of its beam search on layer 0."""

    kind = "hnsw"

    def __init__(self, dim: int, *, m: int = 16, ef_construction: int = 100, ef_search: int = 64,
                 seed: int = 0) -> None:
        super().__init__(dim)
        self.graph = HNSWGraph(self.dim, m=m, ef_construction=ef_construction, seed=seed)
        self.ef_search = ef_search  # beam width on layer 0 at query time (at least k): the recall / speed knob

    @property
    def ntotal(self) -> int:
        return int((~self.graph.deleted).sum())

    def add(self, vectors: np.ndarray, *, progress: bool = False) -> np.ndarray:
        """Insert vectors (N, D) one by one; returns their ids (insertion order)."""
        return self.graph.add(self._check_vectors(vectors, "vectors"), progress=progress)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q, k = self._check_vectors(queries, "queries"), self._check_k(k)
        if not isinstance(self.ef_search, (int, np.integer)) or self.ef_search <= 0:
            raise ValueError(f"ef_search must be a positive integer, got {self.ef_search!r}")
        ef = max(int(self.ef_search), k)  # the beam must hold k results
        scores = np.full((len(q), k), -np.inf, dtype=np.float32)
        ids = np.full((len(q), k), -1, dtype=np.int64)
        for i, query in enumerate(q):
            found, count = self.graph.search(query, ef)
            self.distance_computations += count
            if found:
                sims = np.array([s for s, _ in found], dtype=np.float32)
                scores[i:i + 1], ids[i:i + 1] = top_k(sims[None, :], np.array([e for _, e in found]), k)
        return scores, ids

    def remove(self, ids: np.ndarray) -> int:
        """Tombstone these ids (unknown ones are ignored); returns how many were newly removed."""
        ids = self._check_ids(ids)
        deleted = self.graph.deleted
        ids = ids[(ids >= 0) & (ids < len(deleted))]
        fresh = np.unique(ids[~deleted[ids]])
        deleted[fresh] = True
        return len(fresh)

    def _state(self) -> dict[str, np.ndarray]:
        return {"dim": np.array(self.dim), "ef_search": np.array(self.ef_search), **self.graph.to_arrays()}

    @classmethod
    def _from_state(cls, state: dict[str, np.ndarray]) -> HNSWIndex:
        index = cls(int(state["dim"]), ef_search=int(state["ef_search"]))
        index.graph = HNSWGraph.from_arrays(state)
        return index
