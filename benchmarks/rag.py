"""Retrieval benchmarks: llmbook.rag's BM25 vs bm25s, and its exact / IVF / HNSW vector indexes vs FAISS.

Usage: python benchmarks/rag.py [--out benchmarks/results/rag.json] [--quick]

Everything is measured in one run on one machine, on one core a side: ``faiss.omp_set_num_threads(1)``,
and ``threadpoolctl.threadpool_limits(1)`` for every BLAS (numpy's OpenBLAS, which our indexes' matrix
products use, and the one bundled with FAISS). Timed calls of the two libraries are interleaved
round-robin (order alternating), after one warm-up call each; a call shorter than 50 ms is timed as a
loop of calls lasting ~50 ms; the fastest repeat counts (the least disturbed on a shared machine).
Ratios are ours / reference with > 1 meaning ours is faster. The BLAS libraries found (numpy's and the
one FAISS bundles, with the CPU kernel each picked) are recorded: FAISS's exhaustive search of more than
20 queries is one sgemm call into its own OpenBLAS.

1. BM25 (method "lucene", k1 = 1.5, b = 0.75 on both sides). Corpus: 10,000 synthetic documents of
   20-300 tokens drawn from a Zipf law (p(rank r) ~ r^-1.1 over 30,000 terms "t<r>"); queries: 2-5
   terms each, drawn from the same law restricted to ranks >= 10 (no stop-word-only queries). Same
   token lists to both. Measured: index build time (``BM25(BM25Config(method="lucene")).index(tokens)``
   vs ``bm25s.BM25(method="lucene").index(tokens)``), and queries/s for top-10 search, (a) one call per
   query (``BM25.search`` vs ``bm25s.BM25.retrieve([query], k=10, n_threads=1)``) and (b) one call for all
   queries (``BM25.search_many`` vs ``retrieve(queries, k=10, n_threads=1)``). Agreement: mean overlap of
   the two top-10 id sets per query, and the largest difference of the sorted top-10 scores (bm25s keeps
   float32 scores, ours float64).
2. Vector search. 20,000 (``--quick``: 5,000) unit vectors of dimension 384 around 20 Gaussian cluster
   centres (``llmbook.rag.vector_index.clustered_vectors``, noise norm 2.0: each cluster spans many IVF
   lists, so nprobe 1 finds less than half of the neighbours), 1,000 (quick: 200) held-out queries;
   inner product; ground truth = brute-force top-10 (numpy). Indexes at matched settings:
   ``ExactIndex`` vs ``IndexFlatIP``; ``IVFIndex`` vs ``IndexIVFFlat`` (nlist = N / 50, both trained on
   all vectors with 10 k-means iterations, FAISS's IVF default; nprobe swept); ``HNSWIndex`` vs
   ``IndexHNSWFlat`` (M = 16, efConstruction = 100; efSearch swept). Each search is one call with all
   queries. Per setting: recall@10, queries/s, dot products per query (ours: ``distance_computations``;
   FAISS: ``hnsw_stats.ndis`` / ``indexIVF_stats.ndis`` + nlist for IVF's coarse step, N for flat). The
   curves are recorded, and at recall targets both curves reach, the qps ratio (and dot-product ratio)
   at equal recall, each curve linearly interpolated on the recall axis. Build times (train + add) are
   one run each (ours HNSW takes a minute at 20k).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time
from dataclasses import asdict

import bm25s
import faiss
import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

from _results import write_results
from llmbook.rag.bm25 import BM25, BM25Config
from llmbook.rag.vector_index import ExactIndex, HNSWIndex, IVFIndex, clustered_vectors, recall_at_k

K = 10
BM25_DOCS, BM25_VOCAB, ZIPF_A = 10_000, 30_000, 1.1
DIM, CLUSTERS, SPREAD = 384, 20, 2.0
HNSW_M, HNSW_EF_CONSTRUCTION = 16, 100
NPROBES = (1, 2, 4, 8, 16, 32, 64)
EF_SEARCHES = (16, 32, 64, 128, 256)
RECALL_TARGETS = (0.8, 0.9, 0.95, 0.99)


def interleaved_min(fns: dict, repeats: int, min_s: float = 0.05) -> dict[str, float]:
    """One warm-up call each, then ``repeats`` rounds round-robin (order alternating): fastest seconds per call.
    A call faster than ``min_s`` is timed as a loop of calls that lasts about ``min_s`` (timer noise)."""
    loops = {name: max(1, math.ceil(min_s / timed(fn))) for name, fn in fns.items()}
    times: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(repeats):
        for name, fn in (list(fns.items()) if i % 2 == 0 else list(reversed(fns.items()))):
            t0 = time.perf_counter()
            for _ in range(loops[name]):
                fn()
            times[name].append((time.perf_counter() - t0) / loops[name])
    return {name: min(ts) for name, ts in times.items()}


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------------------------
# 1. BM25, ours vs bm25s


def zipf_corpus(n_docs: int, n_queries: int, seed: int = 0) -> tuple[list[list[str]], list[list[str]]]:
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, BM25_VOCAB + 1) ** ZIPF_A
    lengths = rng.integers(20, 301, size=n_docs)
    words = rng.choice(BM25_VOCAB, size=int(lengths.sum()), p=p / p.sum())
    corpus = [[f"t{w}" for w in doc] for doc in np.split(words, np.cumsum(lengths)[:-1])]
    q = p.copy()
    q[:10] = 0  # queries without the ten most frequent terms
    queries = [[f"t{w}" for w in rng.choice(BM25_VOCAB, size=int(rng.integers(2, 6)), p=q / q.sum())]
               for _ in range(n_queries)]
    return corpus, queries


def bm25_section(n_queries: int, repeats: int) -> dict:
    corpus, queries = zipf_corpus(BM25_DOCS, n_queries)
    state: dict = {}

    def ours_build():
        state["ours"] = BM25(BM25Config(method="lucene")).index(corpus)

    def ref_build():
        ref = bm25s.BM25(method="lucene")
        ref.index(corpus, show_progress=False)
        state["ref"] = ref

    build = interleaved_min({"ours": ours_build, "bm25s": ref_build}, repeats)
    ours, ref = state["ours"], state["ref"]

    def ours_each():
        for query in queries:
            ours.search(query, K)

    def ref_each():
        for query in queries:
            ref.retrieve([query], k=K, n_threads=1, show_progress=False)

    def ours_batch():
        state["ours_hits"] = ours.search_many(queries, K)

    def ref_batch():
        state["ref_hits"] = ref.retrieve(queries, k=K, n_threads=1, show_progress=False)

    each = interleaved_min({"ours": ours_each, "bm25s": ref_each}, repeats)
    batch = interleaved_min({"ours": ours_batch, "bm25s": ref_batch}, repeats)
    (ours_ids, ours_scores), (ref_ids, ref_scores) = state["ours_hits"], state["ref_hits"]
    overlap = np.mean([len(set(a.tolist()) & set(b.tolist())) / K for a, b in zip(ours_ids, ref_ids)])
    qps_each = {name: n_queries / t for name, t in each.items()}
    qps_batch = {name: n_queries / t for name, t in batch.items()}
    return {
        "corpus": {"documents": BM25_DOCS, "tokens": sum(map(len, corpus)), "vocabulary": ours.vocabulary_size,
                   "zipf_exponent": ZIPF_A, "queries": n_queries},
        "config": {"ours": asdict(ours.config), "bm25s": {"method": ref.method, "k1": ref.k1, "b": ref.b}},
        "build_s": build,
        "build_ours_over_bm25s": build["bm25s"] / build["ours"],
        "qps_one_call_per_query": qps_each,
        "qps_one_call_per_query_ours_over_bm25s": qps_each["ours"] / qps_each["bm25s"],
        "qps_one_call_for_all": qps_batch,
        "qps_one_call_for_all_ours_over_bm25s": qps_batch["ours"] / qps_batch["bm25s"],
        "top10_overlap": float(overlap),
        "top10_scores_max_abs_diff": float(np.abs(ours_scores - ref_scores.astype(np.float64)).max()),
    }


# ---------------------------------------------------------------------------------------------------------------
# 2. Vector search, ours vs FAISS


def qps_at_recall(curve: list[dict], target: float, key: str = "qps") -> float | None:
    """``key`` at recall ``target`` by linear interpolation along the curve sorted by recall; None outside it."""
    points = sorted((p["recall"], p[key]) for p in curve)
    recalls = [r for r, _ in points]
    if not recalls[0] <= target <= recalls[-1]:
        return None
    return float(np.interp(target, recalls, [v for _, v in points]))


def equal_recall_ratios(ours: list[dict], ref: list[dict]) -> list[dict]:
    rows = []
    for target in RECALL_TARGETS:
        a, b = qps_at_recall(ours, target), qps_at_recall(ref, target)
        da = qps_at_recall(ours, target, "distance_computations")
        db = qps_at_recall(ref, target, "distance_computations")
        rows.append({"recall": target,
                     "qps_ours_over_faiss": None if a is None or b is None else a / b,
                     "distance_computations_ours_over_faiss": None if da is None or db is None else da / db})
    return rows


def sweep(name: str, ours, ref, settings, apply, faiss_ndis, xq, truth, repeats) -> dict:
    """For each setting: recall@10, qps and dot products per query of ours and FAISS (interleaved timing)."""
    curves: dict[str, list[dict]] = {"ours": [], "faiss": []}
    out: dict = {}  # the last run's (ids, dot products per query) of each side

    def run_ours():
        ours.reset_counter()
        out["ours"] = (ours.search(xq, K)[1], ours.distance_computations / len(xq))

    def run_ref():
        faiss.cvar.hnsw_stats.reset()
        faiss.cvar.indexIVF_stats.reset()
        out["faiss"] = (ref.search(xq, K)[1], faiss_ndis() / len(xq))

    for setting in settings:
        apply(setting)
        best = interleaved_min({"ours": run_ours, "faiss": run_ref}, repeats)
        for side in ("ours", "faiss"):
            ids, ndis = out[side]
            curves[side].append({"setting": setting, "recall": recall_at_k(ids, truth, K),
                                 "qps": len(xq) / best[side], "distance_computations": ndis})
    return {"index": name, "curves": curves, "at_equal_recall": equal_recall_ratios(curves["ours"], curves["faiss"])}


def vector_section(n: int, n_queries: int, repeats: int) -> dict:
    x = clustered_vectors(n + n_queries, DIM, n_clusters=CLUSTERS, spread=SPREAD, seed=0)
    xb, xq = x[:n], x[n:]
    truth = np.argsort(-(xq @ xb.T), axis=1, kind="stable")[:, :K]
    nlist = n // 50
    results: dict = {"vectors": n, "queries": n_queries, "dim": DIM, "clusters": CLUSTERS, "spread": SPREAD,
                     "build_s": {}, "indexes": []}

    exact, flat = ExactIndex(DIM), faiss.IndexFlatIP(DIM)
    results["build_s"]["exact"] = {"ours": timed(lambda: exact.add(xb)), "faiss": timed(lambda: flat.add(xb))}
    results["indexes"].append(sweep("exact vs IndexFlatIP", exact, flat, ["brute force"], lambda s: None,
                                    lambda: n * n_queries, xq, truth, repeats))

    ivf = IVFIndex(DIM, nlist, seed=0, kmeans_iters=10)
    ivf_ref = faiss.IndexIVFFlat(faiss.IndexFlatIP(DIM), DIM, nlist, faiss.METRIC_INNER_PRODUCT)
    results["build_s"]["ivf"] = {"ours": timed(lambda: (ivf.train(xb), ivf.add(xb))),
                                 "faiss": timed(lambda: (ivf_ref.train(xb), ivf_ref.add(xb)))}

    def set_nprobe(nprobe):
        ivf.nprobe = ivf_ref.nprobe = nprobe

    results["indexes"].append(sweep(f"IVF (nlist {nlist}) vs IndexIVFFlat, nprobe", ivf, ivf_ref,
                                    [p for p in NPROBES if p <= nlist], set_nprobe,
                                    lambda: faiss.cvar.indexIVF_stats.ndis + nlist * n_queries, xq, truth, repeats))

    hnsw = HNSWIndex(DIM, m=HNSW_M, ef_construction=HNSW_EF_CONSTRUCTION, seed=0)
    hnsw_ref = faiss.IndexHNSWFlat(DIM, HNSW_M, faiss.METRIC_INNER_PRODUCT)
    hnsw_ref.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    results["build_s"]["hnsw"] = {"ours": timed(lambda: hnsw.add(xb)), "faiss": timed(lambda: hnsw_ref.add(xb))}

    def set_ef(ef):
        hnsw.ef_search = hnsw_ref.hnsw.efSearch = ef

    results["indexes"].append(sweep(f"HNSW (M {HNSW_M}, efConstruction {HNSW_EF_CONSTRUCTION}) vs IndexHNSWFlat, "
                                    "efSearch", hnsw, hnsw_ref, EF_SEARCHES, set_ef,
                                    lambda: faiss.cvar.hnsw_stats.ndis, xq, truth, repeats))
    for b in results["build_s"].values():
        b["ours_over_faiss"] = b["faiss"] / b["ours"]
    return results


# ---------------------------------------------------------------------------------------------------------------


def summary(results: dict) -> str:
    b = results["bm25"]
    lines = [f"rag benchmark ({results['runtime_s']:.0f} s, one core a side)",
             f"  BM25 {b['corpus']['documents']} docs: build ours {b['build_s']['ours']:.2f} s vs bm25s "
             f"{b['build_s']['bm25s']:.2f} s (x{b['build_ours_over_bm25s']:.2f}); qps per query ours "
             f"{b['qps_one_call_per_query']['ours']:.0f} vs {b['qps_one_call_per_query']['bm25s']:.0f} "
             f"(x{b['qps_one_call_per_query_ours_over_bm25s']:.2f}), all at once "
             f"{b['qps_one_call_for_all']['ours']:.0f} vs {b['qps_one_call_for_all']['bm25s']:.0f} "
             f"(x{b['qps_one_call_for_all_ours_over_bm25s']:.2f}); top-10 overlap {b['top10_overlap']:.3f}"]
    v = results["vectors"]
    lines.append(f"  vectors {v['vectors']} x {v['dim']}, {v['queries']} queries; build s (ours / faiss): "
                 + ", ".join(f"{k} {t['ours']:.2f} / {t['faiss']:.2f}" for k, t in v["build_s"].items()))
    for index in v["indexes"]:
        lines.append(f"  {index['index']}:")
        for ours, ref in zip(index["curves"]["ours"], index["curves"]["faiss"]):
            lines.append(f"    {ours['setting']!s:>11}: recall ours {ours['recall']:.3f} faiss {ref['recall']:.3f}; "
                         f"qps {ours['qps']:.0f} / {ref['qps']:.0f}; dot products/query "
                         f"{ours['distance_computations']:.0f} / {ref['distance_computations']:.0f}")
        ratios = [f"{r['recall']}: x{r['qps_ours_over_faiss']:.3f}" for r in index["at_equal_recall"]
                  if r["qps_ours_over_faiss"] is not None]
        if ratios:
            lines.append("    qps ours/faiss at equal recall: " + ", ".join(ratios))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/results/rag.json")
    p.add_argument("--quick", action="store_true", help="5k vectors, fewer queries and repeats (~2 min on 2 cores)")
    args = p.parse_args(argv)
    faiss.omp_set_num_threads(1)
    n, n_queries, bm25_queries, repeats = (5_000, 200, 200, 2) if args.quick else (20_000, 1_000, 1_000, 3)
    t_start = time.perf_counter()
    results: dict = {
        "load_average_1_5_15_at_start": list(os.getloadavg()),
        "machine": {"cpu_threads_available": len(os.sched_getaffinity(0)), "platform": platform.platform(),
                    "processor": platform.processor(), "python": platform.python_version(),
                    "numpy": np.__version__, "faiss": faiss.__version__, "bm25s": bm25s.__version__,
                    "blas": [{k: lib.get(k) for k in ("filepath", "internal_api", "version", "architecture")}
                             for lib in threadpool_info()]},
        "threads": "1 a side: faiss.omp_set_num_threads(1), threadpoolctl.threadpool_limits(1)",
        "quick": args.quick,
        "timing": f"interleaved round-robin after one warm-up call each, calls < 50 ms looped, fastest of "
                  f"{repeats} repeats",
    }
    with threadpool_limits(limits=1):
        t0 = time.perf_counter()
        results["bm25"] = bm25_section(bm25_queries, repeats)
        results["section_s"] = {"bm25": time.perf_counter() - t0}
        t0 = time.perf_counter()
        results["vectors"] = vector_section(n, n_queries, repeats)
        results["section_s"]["vectors"] = time.perf_counter() - t0
    return write_results(results, args.out, summary, t_start)


if __name__ == "__main__":
    main()
