"""Spherical k-means: the coarse quantiser of an inverted-file (IVF) index.

An IVF index scores by inner product on unit vectors, so its clusters are built on the unit sphere
(Dhillon & Modha 2001; the same choice FAISS makes for ``IndexIVF*`` with ``METRIC_INNER_PRODUCT``,
``ClusteringParameters.spherical = True``). Each iteration

    assign:  a(x) = argmax_j <x, c_j>
    update:  c_j = m_j / ||m_j||,   m_j = sum_{x : a(x) = j} x

maximises sum_x <x, c_a(x)>. For unit x and unit c, ||x - c||^2 = 2 - 2 <x, c>, so this is Lloyd's
algorithm with its centroids projected back onto the sphere: the same assignments as Euclidean k-means,
but a plain Lloyd mean (norm < 1) would lose against any unit centroid in an inner-product search and
skew which list a vector lands in. Initialisation is FAISS's: k distinct training points drawn at random
(not k-means++, so the two can be compared like for like). An empty cluster takes the training point its
current centroid serves worst (FAISS splits a big cluster instead; either keeps k lists in use).
"""

from __future__ import annotations

import numpy as np

from llmbook.progress import ProgressBar

ASSIGN_BLOCK = 16_384  # rows scored against all centroids at once: bounds the (rows, k) similarity matrix


def assign(vectors: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid by inner product: (labels (N,) int64, similarity to that centroid (N,) float32)."""
    labels = np.empty(len(vectors), dtype=np.int64)
    best = np.empty(len(vectors), dtype=np.float32)
    for start in range(0, len(vectors), ASSIGN_BLOCK):
        sims = vectors[start:start + ASSIGN_BLOCK] @ centroids.T  # (rows, k)
        labels[start:start + ASSIGN_BLOCK] = sims.argmax(axis=1)
        best[start:start + ASSIGN_BLOCK] = sims.max(axis=1)
    return labels, best


def inertia(vectors: np.ndarray, centroids: np.ndarray) -> float:
    """Sum of squared Euclidean distances from each vector to its nearest centroid (the k-means objective)."""
    vectors = np.asarray(vectors, dtype=np.float64)
    centroids = np.asarray(centroids, dtype=np.float64)
    total = 0.0
    for start in range(0, len(vectors), ASSIGN_BLOCK):
        x = vectors[start:start + ASSIGN_BLOCK]
        d2 = (x * x).sum(1)[:, None] - 2 * x @ centroids.T + (centroids * centroids).sum(1)[None, :]  # (rows, k)
        total += float(np.maximum(d2.min(axis=1), 0).sum())
    return total


def cluster_sums(vectors: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """(k, D) sum of the vectors in each cluster (zeros for an empty one): sort by label, add up each run."""
    counts = np.bincount(labels, minlength=k)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    sums = np.zeros((k, vectors.shape[1]), dtype=np.float32)
    filled = counts > 0
    sums[filled] = np.add.reduceat(vectors[np.argsort(labels, kind="stable")], starts[filled], axis=0)
    return sums


def _normalize_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


def kmeans(vectors: np.ndarray, k: int, *, iters: int = 20, seed: int = 0, progress: bool = False) -> np.ndarray:
    """Spherical k-means (see the module docstring): returns unit centroids (k, D) float32 after ``iters``
    assign/update rounds from ``k`` distinct random training points (``seed``)."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"kmeans needs a non-empty (N, D) array of vectors, got shape {x.shape}")
    if not 1 <= k <= len(x):
        raise ValueError(f"kmeans needs 1 <= k <= number of vectors, got k={k} for {len(x)} vectors")
    if iters < 0:
        raise ValueError(f"iters must be >= 0, got {iters}")
    if not np.isfinite(x).all():
        raise ValueError("kmeans got non-finite values (NaN or inf) in the training vectors")
    rng = np.random.default_rng(seed)
    centroids = _normalize_rows(x[rng.choice(len(x), size=k, replace=False)])
    bar = ProgressBar(range(iters), desc="k-means", disable=not progress)
    for _ in bar:
        labels, best = assign(x, centroids)
        centroids = cluster_sums(x, labels, k)  # m_j, normalised below
        empty = np.flatnonzero(np.bincount(labels, minlength=k) == 0)
        if empty.size:  # each empty cluster restarts at one of the worst-served points, worst first
            centroids[empty] = x[np.argsort(best, kind="stable")[:empty.size]]
        centroids = _normalize_rows(centroids)
    bar.close()
    return centroids
