"""Pretraining-data benchmark: our vectorised MinHash vs datasketch, and pipeline throughput.

    python benchmarks/data.py [--quick] [--no-spark] [--spark-master local[2]]
        ->  benchmarks/results/data.json

The "spark" section runs the chapter's whole pipeline (``clean_corpus``) in-process and on
PySpark (``clean_corpus_spark``, same survivors) and reports end-to-end documents/s of each
(pipeline only: the raw crawl and the filter training are shared and not timed). It is left
out, with a note, when pyspark or Java is missing.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import time
from pathlib import Path

import numpy as np
from datasketch import MinHash

from llmbook.data.corpora import corpus_text, load_documents
from llmbook.data.dedup import dedup_stages
from llmbook.data.minhash import jaccard, minhash_texts, shingles
from llmbook.data.normalize import normalize_stage
from llmbook.data.pii import pii_stage
from llmbook.data.pipeline import run_pipeline
from llmbook.data.quality import bad_word_stage, gopher_stage


def synth_docs(n: int, size: int, seed: int) -> list[str]:
    """n windows of ~size chars from bundled en+zh text; doc 2m+1 is doc 2m shifted by 0..size chars
    (so pairs (2m, 2m+1) span Jaccard 0..1)."""
    r = random.Random(seed)
    src = {"en": corpus_text("en"), "zh": corpus_text("zh")}
    docs = []
    while len(docs) < n:
        lang = "en" if r.random() < 0.8 else "zh"
        s, k = src[lang], size if lang == "en" else size // 3  # ~size UTF-8 bytes either way
        a = r.randrange(len(s) - 2 * k)
        docs += [s[a : a + k], s[a + r.randrange(k) : a + r.randrange(k) + k]]
    return docs[:n]


def bench_minhash(docs: list[str], num_perm: int, scheme: str, pairs: int) -> dict:
    t0 = time.perf_counter()
    sig = minhash_texts(docs, num_perm, 1, scheme)
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    ms = MinHash.bulk(
        [[s.encode("utf-8") for s in shingles(d)] for d in docs], num_perm=num_perm, seed=1, scheme=scheme
    )
    t_ds = time.perf_counter() - t0
    idx = range(0, min(len(docs) - 1, 2 * pairs), 2)
    exact = np.array([jaccard(set(shingles(docs[i])), set(shingles(docs[i + 1]))) for i in idx])
    est_ours = np.array([np.mean(sig[i] == sig[i + 1]) for i in idx])
    est_ds = np.array([ms[i].jaccard(ms[i + 1]) for i in idx])
    return {
        "scheme": scheme,
        "num_perm": num_perm,
        "docs": len(docs),
        "ours_docs_per_s": len(docs) / t_ours,
        "datasketch_docs_per_s": len(docs) / t_ds,
        "speedup": t_ds / t_ours,
        "pairs": len(exact),
        "mean_exact_jaccard": float(exact.mean()),
        "ours_mae": float(np.abs(est_ours - exact).mean()),
        "datasketch_mae": float(np.abs(est_ds - exact).mean()),
    }


def bench_pipeline(n: int) -> dict:
    docs = list(load_documents(limit=n))
    stages = [normalize_stage(), pii_stage(), bad_word_stage(), gopher_stage(), *dedup_stages()]
    kept, rep = run_pipeline(docs, stages)
    return rep.as_dict()


def bench_spark(profile: str, master: str) -> dict:
    """Chapter pipeline docs/s: in-process ``run_pipeline`` vs ``run_pipeline_spark`` on ``master``."""
    import shutil

    from llmbook.book import profiles
    from llmbook.chain import corpus as chain

    try:
        from llmbook.data.spark import local_spark, require_pyspark

        require_pyspark()
    except ImportError as e:
        return {"skipped": str(e)}
    if not shutil.which("java"):
        return {"skipped": "no java on PATH"}
    cfg = profiles.resolve("pretraining_data", profile)
    ours = chain.clean_corpus(cfg)
    t0 = time.perf_counter()
    spark = local_spark(master)
    start_s = time.perf_counter() - t0
    try:
        chain.clean_corpus_spark(cfg, spark)  # warm-up: Python workers, JIT
        dist = chain.clean_corpus_spark(cfg, spark)
        parallelism = spark.sparkContext.defaultParallelism
    finally:
        spark.stop()
    same = [(d["id"], d["text"]) for d in ours.kept] == [(d["id"], d["text"]) for d in dist.kept]
    return {
        "profile": profile,
        "master": master,
        "default_parallelism": parallelism,
        "docs_in": ours.report.docs_in,
        "docs_out": ours.report.docs_out,
        "same_survivors": same,
        "in_process_docs_per_s": ours.report.docs_per_s,
        "spark_docs_per_s": dist.report.docs_per_s,
        "spark_over_in_process": dist.report.docs_per_s / ours.report.docs_per_s,
        "spark_session_start_s": start_s,
        "in_process_stage_s": {r.name: r.seconds for r in ours.report.stages},
        "spark_stage_s": {r.name: r.seconds for r in dist.report.stages},  # per-doc stages: summed over executors
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="2k documents instead of 20k")
    ap.add_argument("--no-spark", action="store_true", help="leave out the in-process vs PySpark section")
    ap.add_argument("--spark-master", default="local[2]", help="Spark master for the PySpark section")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "data.json"))
    args = ap.parse_args()
    n = 2000 if args.quick else 20000
    docs = synth_docs(n, 2000, seed=0)
    res = {
        "machine": {"python": platform.python_version(), "cpu": platform.processor() or platform.machine()},
        "doc_bytes_mean": float(np.mean([len(d.encode()) for d in docs])),
        "minhash": [bench_minhash(docs, 128, s, 1000) for s in ("affine32", "legacy")],
        "pipeline": bench_pipeline(500 if args.quick else None),
    }
    if not args.no_spark:
        res["spark"] = bench_spark("smoke" if args.quick else "cpu", args.spark_master)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2, default=float))
    print(json.dumps({k: v for k, v in res.items() if k not in ("pipeline", "spark")}, indent=2))
    pipe = res["pipeline"]
    print("pipeline docs/s", pipe["docs_per_s"], "in", pipe["docs_in"], "out", pipe["docs_out"])
    if "spark" in res:
        sp = res["spark"]
        if "skipped" in sp:
            print("spark section skipped:", sp["skipped"])
        else:
            print(
                f"chapter pipeline ({sp['profile']}, {sp['docs_in']} docs): "
                f"in-process {sp['in_process_docs_per_s']:.1f} docs/s, "
                f"spark {sp['master']} {sp['spark_docs_per_s']:.1f} docs/s, same survivors: {sp['same_survivors']}"
            )


if __name__ == "__main__":
    main()
