"""llmbook.rag vector indexes (exact, IVF, HNSW) and spherical k-means against FAISS.

Data: seeded synthetic embeddings, unit vectors around 50 Gaussian cluster centres in 64 dimensions
(``clustered_vectors``, noise of norm 1.5: neighbours cross cluster borders, so approximate search can
miss), 100 held-out queries from the same clusters. FAISS runs on one thread. Ground truth is brute force.
Tolerances: scores 1e-5 (float32 dot products of unit vectors, summed in a different order than BLAS);
recall within 0.05 of FAISS at the same settings; approximate indexes must do >= 5x fewer dot products.
"""

from __future__ import annotations

import copy

import faiss
import numpy as np
import pytest

from llmbook.rag.hnsw import select_neighbours
from llmbook.rag.kmeans import inertia, kmeans
from llmbook.rag.vector_index import ExactIndex, HNSWIndex, IVFIndex, clustered_vectors, l2_normalize, recall_at_k

faiss.omp_set_num_threads(1)

DIM, K, N_QUERIES, SPREAD = 64, 10, 100, 1.5
NLIST, NPROBE = 50, 4
M, EF_CONSTRUCTION, EF_SEARCH = 16, 64, 32
SCORE_TOL = 1e-5


def dataset(n: int) -> tuple[np.ndarray, np.ndarray]:
    x = clustered_vectors(n + N_QUERIES, DIM, n_clusters=50, spread=SPREAD, seed=0)
    return x[:n], x[n:]


@pytest.fixture(scope="module")
def small() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """3,000 vectors, 100 queries and their exact top-10 ids."""
    xb, xq = dataset(3000)
    return xb, xq, np.argsort(-(xq @ xb.T), axis=1, kind="stable")[:, :K]


@pytest.fixture(scope="module")
def hnsw_setup() -> tuple[np.ndarray, np.ndarray, np.ndarray, HNSWIndex]:
    """5,000 vectors (enough for a graph to beat brute force 5x), queries, exact top-10, our built graph."""
    xb, xq = dataset(5000)
    index = HNSWIndex(DIM, m=M, ef_construction=EF_CONSTRUCTION, ef_search=EF_SEARCH, seed=0)
    index.add(xb)
    return xb, xq, np.argsort(-(xq @ xb.T), axis=1, kind="stable")[:, :K], index


def assert_same_neighbours(xb, xq, ours_scores, ours_ids, ref_scores, ref_ids, what: str) -> None:
    """Scores within SCORE_TOL; where the ids differ, the two ids must score the same (a tie) for that query."""
    diff = float(np.abs(ours_scores - ref_scores).max())
    assert diff < SCORE_TOL, f"{what}: max_abs_diff of scores {diff:.2e}"
    rows, cols = np.nonzero(ours_ids != ref_ids)
    tie_gap = np.abs(np.einsum("qd,qd->q", xq[rows], xb[ours_ids[rows, cols]] - xb[ref_ids[rows, cols]]))
    assert (tie_gap < SCORE_TOL).all(), f"{what}: {len(rows)} ids differ, not ties (score gap {tie_gap.max():.2e})"


# -- exact ---------------------------------------------------------------------------------------------------


def test_exact_matches_faiss_flat(small):
    xb, xq, _ = small
    ours = ExactIndex(DIM)
    ours.add(xb)
    ref = faiss.IndexFlatIP(DIM)
    ref.add(xb)
    s, i = ours.search(xq, K)
    rs, ri = ref.search(xq, K)
    assert s.dtype == np.float32 and i.dtype == np.int64 and s.shape == i.shape == (N_QUERIES, K)
    assert_same_neighbours(xb, xq, s, i, rs, ri, "ExactIndex vs IndexFlatIP")
    assert ours.distance_computations == N_QUERIES * len(xb)


def test_exact_pads_when_fewer_than_k():
    index = ExactIndex(4)
    index.add(l2_normalize(np.eye(4)[:3]))
    scores, ids = index.search(np.eye(4)[:1], 5)
    assert ids.tolist() == [[0, 1, 2, -1, -1]]
    assert scores[0, 0] == 1.0 and np.isneginf(scores[0, 3:]).all()


# -- IVF -----------------------------------------------------------------------------------------------------


def test_ivf_probing_every_list_is_exact(small):
    xb, xq, _ = small
    exact = ExactIndex(DIM)
    exact.add(xb)
    ivf = IVFIndex(DIM, NLIST, nprobe=NLIST)
    ivf.train(xb)
    ivf.add(xb)
    assert ivf.list_sizes().sum() == len(xb) and (ivf.list_sizes() > 0).all()
    assert_same_neighbours(xb, xq, *ivf.search(xq, K), *exact.search(xq, K), "IVF nprobe=nlist vs exact")


def test_ivf_recall_and_work_vs_faiss(small):
    xb, xq, truth = small
    ivf = IVFIndex(DIM, NLIST, nprobe=NPROBE)
    ivf.train(xb)
    ivf.add(xb)
    ref = faiss.IndexIVFFlat(faiss.IndexFlatIP(DIM), DIM, NLIST, faiss.METRIC_INNER_PRODUCT)
    ref.train(xb)
    ref.add(xb)
    ref.nprobe = NPROBE
    ours_recall = recall_at_k(ivf.search(xq, K)[1], truth, K)
    ref_recall = recall_at_k(ref.search(xq, K)[1], truth, K)
    assert abs(ours_recall - ref_recall) <= 0.05, f"IVF recall@10 ours {ours_recall:.3f} vs FAISS {ref_recall:.3f}"
    assert ours_recall < 1.0, "nprobe is small: some neighbours should be missed (else the data is too easy)"
    per_query = ivf.distance_computations / N_QUERIES
    assert per_query * 5 <= len(xb), f"IVF did {per_query:.0f} dot products per query, exact does {len(xb)}"
    assert per_query > NLIST, "the coarse step alone costs nlist dot products per query"


# -- HNSW ----------------------------------------------------------------------------------------------------


def test_hnsw_recall_and_work_vs_exact_and_faiss(hnsw_setup):
    xb, xq, truth, ours = hnsw_setup
    ours.reset_counter()
    scores, ids = ours.search(xq, K)
    ours_recall = recall_at_k(ids, truth, K)
    per_query = ours.distance_computations / N_QUERIES
    ref = faiss.IndexHNSWFlat(DIM, M, faiss.METRIC_INNER_PRODUCT)
    ref.hnsw.efConstruction = EF_CONSTRUCTION
    ref.add(xb)
    ref.hnsw.efSearch = EF_SEARCH
    ref_recall = recall_at_k(ref.search(xq, K)[1], truth, K)
    assert ours_recall >= 0.95, f"HNSW recall@10 {ours_recall:.3f}"
    assert per_query * 5 <= len(xb), f"HNSW did {per_query:.0f} dot products per query, exact does {len(xb)}"
    assert abs(ours_recall - ref_recall) <= 0.05, f"HNSW recall@10 ours {ours_recall:.3f} vs FAISS {ref_recall:.3f}"
    true_scores = np.take_along_axis(xq @ xb.T, ids, axis=1)
    diff = float(np.abs(scores - true_scores).max())
    assert diff < SCORE_TOL, f"returned scores are the ids' inner products: max_abs_diff {diff:.2e}"


def test_hnsw_levels_and_link_caps(hnsw_setup):
    xb, _, _, index = hnsw_setup
    graph = index.graph
    upper = int((graph.levels >= 1).sum())  # P(level >= 1) = 1/M
    expected, sd = len(xb) / M, np.sqrt(len(xb) / M * (1 - 1 / M))
    assert abs(upper - expected) < 4 * sd, f"{upper} nodes above layer 0, expected ~{expected:.0f}"
    assert max(len(v) for v in graph.links[0].values()) <= 2 * M
    assert max(len(v) for layer in graph.links[1:] for v in layer.values()) <= M
    assert all(layer.keys() == set(np.flatnonzero(graph.levels >= n).tolist())
               for n, layer in enumerate(graph.links))


def test_select_neighbours_heuristic_drops_shadowed_candidates():
    """Base point at angle 0 on the circle; candidates at 10, 20 and -30 degrees, best first. The one at 20
    is closer to the one at 10 (10 degrees) than to the base (20): dropped. The one at -30 is kept."""
    angles = np.radians([10.0, 20.0, -30.0])
    cands = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    sims = cands @ np.array([1.0, 0.0])
    assert select_neighbours(sims, cands, m=3).tolist() == [0, 2]
    assert select_neighbours(sims, cands, m=1).tolist() == [0]


# -- k-means -------------------------------------------------------------------------------------------------


def test_kmeans_inertia_close_to_faiss(small):
    xb, _, _ = small
    ours = kmeans(xb, NLIST, iters=20, seed=0)
    ref = faiss.Kmeans(DIM, NLIST, niter=20, seed=0, spherical=True)
    ref.train(xb)
    ours_inertia, ref_inertia = inertia(xb, ours), inertia(xb, ref.centroids)
    assert ours_inertia <= 1.03 * ref_inertia, f"inertia ours {ours_inertia:.1f} vs FAISS {ref_inertia:.1f}"
    off = float(np.abs(np.linalg.norm(ours, axis=1) - 1).max())
    assert off < 1e-5, f"spherical centroids have unit norm: max_abs_diff {off:.2e}"


def test_kmeans_refills_empty_clusters():
    """12 distinct points, each 20 times: random init picks duplicates, whose twin clusters start empty;
    refilling them from the worst-served points ends with one centroid per point (inertia 0)."""
    points = l2_normalize(np.random.default_rng(1).standard_normal((12, 8)))
    x = np.repeat(points, 20, axis=0)
    centroids = kmeans(x, 12, iters=10, seed=0)
    assert inertia(x, centroids) < 1e-6, f"inertia {inertia(x, centroids):.3f}: a cluster stayed empty"


# -- remove, save / load, bad input --------------------------------------------------------------------------


def build(kind: str, xb: np.ndarray):
    if kind == "exact":
        index = ExactIndex(DIM)
    elif kind == "ivf":
        index = IVFIndex(DIM, NLIST, nprobe=NLIST)  # every list probed: results must equal exact search
        index.train(xb)
    else:
        index = HNSWIndex(DIM, m=M, ef_construction=EF_CONSTRUCTION, ef_search=64)
    index.add(xb)
    return index


N_BUILT = 1500  # HNSW build time


@pytest.fixture(scope="module")
def built(small) -> dict:
    """Each kind of index over the first N_BUILT vectors, built once; tests that change one take a deep copy."""
    return {kind: build(kind, small[0][:N_BUILT]) for kind in ("exact", "ivf", "hnsw")}


@pytest.mark.parametrize("kind", ["exact", "ivf", "hnsw"])
def test_remove(kind, small, built):
    xb, xq, truth = small
    xb = xb[:N_BUILT]
    truth = np.argsort(-(xq @ xb.T), axis=1, kind="stable")[:, :K]
    index = copy.deepcopy(built[kind])
    removed = np.unique(np.concatenate([truth[:, 0], np.arange(0, len(xb), 7)]))  # every top-1, and more
    assert index.remove(removed) == len(removed)
    assert index.remove(removed[:5]) == 0 and index.ntotal == len(xb) - len(removed)
    _, ids = index.search(xq, K)
    assert not np.isin(ids, removed).any(), f"{kind}: a removed id came back"
    kept = np.setdiff1d(np.arange(len(xb)), removed)
    new_truth = kept[np.argsort(-(xq @ xb[kept].T), axis=1, kind="stable")[:, :K]]
    recall = recall_at_k(ids, new_truth, K)
    assert recall >= (0.95 if kind == "hnsw" else 1.0), f"{kind}: recall@10 over the kept vectors {recall:.3f}"
    assert index.add(xb[:2]).tolist() == [len(xb), len(xb) + 1], "ids continue after removal"


@pytest.mark.parametrize("kind", ["exact", "ivf", "hnsw"])
def test_save_load_round_trip(kind, small, built, tmp_path):
    xb, xq, _ = small
    index = copy.deepcopy(built[kind])
    index.remove([3, 4])
    path = tmp_path / f"{kind}.npz"
    index.save(path)
    loaded = type(index).load(path)
    (sa, ia), (sb, ib) = index.search(xq, K), loaded.search(xq, K)
    assert np.array_equal(ia, ib) and np.array_equal(sa, sb), f"{kind}: loaded index searches differently"
    assert loaded.ntotal == index.ntotal == N_BUILT - 2
    index.add(xb[N_BUILT:N_BUILT + 200])  # adding after a load continues as the original would
    loaded.add(xb[N_BUILT:N_BUILT + 200])
    assert np.array_equal(index.search(xq, K)[1], loaded.search(xq, K)[1]), f"{kind}: add after load differs"
    other = HNSWIndex if kind != "hnsw" else ExactIndex
    with pytest.raises(ValueError, match="index"):
        other.load(path)
    with pytest.raises(FileNotFoundError):
        type(index).load(tmp_path / "missing.npz")


@pytest.mark.parametrize("kind", ["exact", "ivf", "hnsw"])
def test_bad_input_raises(kind, small):
    xb, xq, _ = small
    index = build(kind, xb[:200])
    with pytest.raises(ValueError, match=r"shape \(n, 64\)"):
        index.add(np.ones((3, DIM + 1), dtype=np.float32))
    with pytest.raises(ValueError, match=r"shape \(n, 64\)"):
        index.search(np.ones((3, 32), dtype=np.float32), K)
    bad = xq[:2].copy()
    bad[1, 5] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        index.search(bad, K)
    with pytest.raises(ValueError, match="non-finite"):
        index.add(bad)
    for k in (0, -1):
        with pytest.raises(ValueError, match="k must be a positive integer"):
            index.search(xq, k)


def test_ivf_before_train_and_other_bad_input(small):
    xb, xq, _ = small
    ivf = IVFIndex(DIM, NLIST)
    for call in (lambda: ivf.search(xq, K), lambda: ivf.add(xb)):
        with pytest.raises(ValueError, match="before train"):
            call()
    with pytest.raises(ValueError, match="at least nlist"):
        ivf.train(xb[:10])
    with pytest.raises(ValueError, match="dim must be a positive integer"):
        ExactIndex(0)
    with pytest.raises(ValueError, match="1 <= k"):
        kmeans(xb[:10], 11)
    with pytest.raises(ValueError, match="rows of found ids"):
        recall_at_k(np.zeros((2, K)), np.zeros((3, K)), K)
