"""The same pipeline on PySpark, for corpora larger than one machine.

:func:`run_pipeline_spark` takes the stage list of :func:`llmbook.data.pipeline.run_pipeline`
and runs it on a Spark cluster (or ``local[N]``), with the *same stage functions*:

* runs of per-document :class:`~llmbook.data.pipeline.Stage` objects execute inside
  ``rdd.mapPartitions``; every document carries its input position ``pos`` so the corpus
  stages can pick the same survivor as the in-process run (which keeps the *first* document);
* exact dedup: key = :func:`~llmbook.data.dedup.text_hash`, ``groupByKey``, keep the smallest
  ``pos`` of each key;
* repeated lines (CCNet, arXiv:1911.00359): ``(line_key, 1)`` per distinct line of a document
  (in the stage's ``mode``), ``reduceByKey(add)``; the keys seen in >= ``min_docs`` documents
  (boilerplate: few) are broadcast and stripped with :func:`~llmbook.data.dedup.strip_repeated_lines`;
* MinHash-LSH near dedup (arXiv:2107.06499), every :class:`~llmbook.data.dedup.NearDedupConfig`
  field honoured with dedup's own functions: signatures per partition with
  :func:`~llmbook.data.dedup.signatures` (``normalize``, ``shingle_hash``, ``unit``, ``ngram``,
  ``seed``, ``scheme``), ``((band, band bytes), (pos, signature))`` for each of the b bands of
  ``cfg.band_rows()``, ``groupByKey`` to candidate pairs, then ``distinct``. With
  ``verify_with="signature"`` each pair is verified inside its bucket by the signature estimate
  exactly as :func:`~llmbook.data.dedup.near_duplicate_clusters` does; with ``"exact"`` the
  candidate pairs are joined back, on each side, to the shingle sets
  (:func:`~llmbook.data.dedup.shingle_set`) of the documents they name (positions broadcast,
  texts filtered where they are), and kept when their exact Jaccard is >= ``threshold``. Connected
  components are computed on the driver with :class:`~llmbook.data.dedup.UnionFind` over the
  collected *edges*: one pair per duplicate, a few MB for a billion-document crawl with a few %
  duplicates; beyond that, replace it with rounds of min-label propagation (a join per round).

Survivors come back in input order, so the output equals ``run_pipeline``'s list exactly.
Large shared state (for the book's pipeline, the trained filters as plain arrays) goes in as one
Spark broadcast via ``shared``, and each partition rebuilds its stages with a stage factory; the
book's pipeline on Spark is :func:`llmbook.chain.corpus.clean_corpus_spark`. Stage code itself
ships the way PySpark ships all code (cloudpickle of the functions). pyspark is imported lazily:
``pip install 'llmbook[spark]'`` plus a Java 17+ runtime.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from operator import add
from typing import Any

import numpy as np

from llmbook.data.dedup import (
    LINE_MODES,
    NearDedupConfig,
    UnionFind,
    exact_dedup,
    line_keys,
    near_dedup,
    remove_repeated_lines,
    shingle_set,
    signatures,
    strip_repeated_lines,
    text_hash,
)
from llmbook.data.minhash import jaccard
from llmbook.data.pipeline import CorpusStage, Doc, PipelineReport, Stage, StageReport, _check_doc, _nbytes, apply_stage

StageList = list[Stage | CorpusStage]
_DOC, _DROP, _STATS = 0, 1, 2  # record tags out of a per-document segment


def require_pyspark() -> Any:
    """Import pyspark or raise ImportError saying how to install it."""
    try:
        import pyspark
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise ImportError("PySpark is not installed: pip install 'llmbook[spark]' (and a Java 17+ runtime)") from e
    return pyspark


def local_spark(
    master: str = "local[2]", driver_memory: str = "1g", shuffle_partitions: int = 4, app_name: str = "llmbook"
) -> Any:
    """A small local ``SparkSession``: no UI, few shuffle partitions, workers on this Python.

    Python workers use ``$PYSPARK_PYTHON``, set here to this interpreter when unset (otherwise
    they start ``python3`` from ``PATH``, which may not see this virtual environment).
    """
    require_pyspark()
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    spark = (
        SparkSession.builder.master(master)
        .appName(app_name)
        .config("spark.ui.enabled", "false")
        .config("spark.driver.memory", driver_memory)
        .config("spark.sql.shuffle.partitions", str(shuffle_partitions))
        .config("spark.default.parallelism", str(shuffle_partitions))
        .config("spark.pyspark.python", sys.executable)
        .config("spark.ui.showConsoleProgress", "false")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    return spark


# --- stages: which distributed operation implements each corpus stage ------------------------
@dataclass(kw_only=True)
class SparkCorpusOp:
    """The distributed version of one :class:`CorpusStage`."""

    kind: str  # "exact_dedup" | "repeated_lines" | "near_dedup"
    min_docs: int = 3  # repeated_lines: drop lines seen in >= min_docs documents
    line_mode: str = "normalized"  # repeated_lines: line key, as remove_repeated_lines(mode=...)
    near: NearDedupConfig | None = None  # near_dedup settings (every field honoured)


_SETTINGS = {remove_repeated_lines: ("min_docs", "mode"), near_dedup: ("cfg",)}  # keywords the Spark ops read


def corpus_op(stage: CorpusStage) -> SparkCorpusOp:
    """Map a corpus stage (``exact_dedup`` or a ``functools.partial`` of the dedup functions) to its Spark op.

    A keyword the Spark op would not read raises ``ValueError`` (rather than giving a different
    result from the in-process run).
    """
    fn = stage.fn
    base = fn.func if isinstance(fn, partial) else fn
    kw = dict(fn.keywords) if isinstance(fn, partial) else {}
    args = fn.args if isinstance(fn, partial) else ()
    if args:
        raise ValueError(f"corpus stage {stage.name!r}: pass settings to partial() by keyword, got positional {args}")
    unknown = sorted(set(kw) - set(_SETTINGS.get(base, kw)))
    if unknown:
        raise ValueError(
            f"corpus stage {stage.name!r}: settings {unknown} have no Spark version; allowed: {_SETTINGS[base]}"
        )
    if base is exact_dedup and not kw:
        return SparkCorpusOp(kind="exact_dedup")
    if base is remove_repeated_lines:
        mode = kw.get("mode", "normalized")
        if mode not in LINE_MODES:
            raise ValueError(f"corpus stage {stage.name!r}: mode must be one of {LINE_MODES}, got {mode!r}")
        min_docs = kw.get("min_docs", 3)
        if isinstance(min_docs, bool) or not isinstance(min_docs, int):  # 2.5 must not quietly become 2
            raise ValueError(f"corpus stage {stage.name!r}: min_docs must be an integer, got {min_docs!r}")
        return SparkCorpusOp(kind="repeated_lines", min_docs=min_docs, line_mode=mode)
    if base is near_dedup:
        cfg = kw.get("cfg") or NearDedupConfig()
        if not isinstance(cfg, NearDedupConfig):
            raise ValueError(f"corpus stage {stage.name!r}: cfg must be a NearDedupConfig, got {type(cfg).__name__}")
        return SparkCorpusOp(kind="near_dedup", near=cfg)
    raise ValueError(
        f"corpus stage {stage.name!r} has no Spark version; its fn must be exact_dedup or "
        "functools.partial(remove_repeated_lines | near_dedup, ...)"
    )


def _segments(stages: StageList) -> list[tuple[str, int, int]]:
    """Split stage indices into ("docs", a, b) runs of per-document stages and ("corpus", i, i+1)."""
    out: list[tuple[str, int, int]] = []
    for i, s in enumerate(stages):
        if isinstance(s, Stage):
            if out and out[-1][0] == "docs" and out[-1][2] == i:
                out[-1] = ("docs", out[-1][1], i + 1)
            else:
                out.append(("docs", i, i + 1))
        else:
            out.append(("corpus", i, i + 1))
    return out


# --- per-document segment (runs on the executors) ------------------------------------------
def _resolve(stages: StageList | Callable[[Any], StageList], shared: Any) -> StageList:
    if callable(stages) and not isinstance(stages, (list, tuple)):
        return stages(shared.value if shared is not None else None)
    return stages


def _run_segment(records: Iterator[tuple[int, Doc]], stages_src: Any, shared: Any, a: int, b: int) -> Iterator[tuple]:
    """Thread (pos, doc) through stages[a:b]; yield kept docs, drop records, then one stats record."""
    stages = _resolve(stages_src, shared)[a:b]
    reps = [StageReport(name=s.name) for s in stages]
    for pos, doc in records:
        for k, (stage, rep) in enumerate(zip(stages, reps)):
            out = apply_stage(stage, rep, doc)
            if isinstance(out, str):
                yield (_DROP, pos, str(doc["id"]), a + k, out)
                break
            doc = out
        else:
            yield (_DOC, pos, doc)
    yield (_STATS, [{**r.as_dict(), "reasons": dict(r.reasons)} for r in reps])


def _merge(into: StageReport, part: dict[str, Any]) -> None:
    for f in ("docs_in", "kept", "dropped", "bytes_in", "bytes_out", "seconds"):
        setattr(into, f, getattr(into, f) + part[f])
    into.reasons.update(part["reasons"])


# --- corpus stages (driver code building Spark jobs) -------------------------------------------
def _first_per_key(kv: tuple[bytes, Iterable[tuple[int, Doc]]]) -> Iterator[tuple]:
    group = sorted(kv[1], key=lambda pd: pd[0])
    yield (_DOC, group[0][0], group[0][1])
    for pos, doc in group[1:]:
        yield (_DROP, pos, str(doc["id"]), "exact_duplicate")


def _exact_dedup(rdd: Any, sc: Any, op: SparkCorpusOp) -> Any:
    return rdd.map(lambda pd: (text_hash(pd[1]["text"]), pd)).groupByKey().flatMap(_first_per_key)


def _repeated_lines(rdd: Any, sc: Any, op: SparkCorpusOp) -> Any:
    min_docs, mode = op.min_docs, op.line_mode
    if min_docs < 2:
        raise ValueError(f"min_docs must be >= 2, got {min_docs}")
    counts = rdd.flatMap(lambda pd: [(k, 1) for k in line_keys(pd[1]["text"], mode)]).reduceByKey(add)
    repeated = sc.broadcast(frozenset(counts.filter(lambda kv: kv[1] >= min_docs).keys().collect()))

    def strip(pd: tuple[int, Doc]) -> tuple:
        out = strip_repeated_lines(pd[1], repeated.value, mode)
        return (_DROP, pd[0], str(pd[1]["id"]), "all_lines_repeated") if out is None else (_DOC, pd[0], out)

    return rdd.map(strip)


def _signatures(records: Iterator[tuple[int, Doc]], cfg: NearDedupConfig) -> Iterator[tuple[int, np.ndarray]]:
    batch = list(records)
    if not batch:
        return iter(())
    sig = signatures([d["text"] for _, d in batch], cfg)  # (N, P): normalize, shingle_hash, ... as in-process
    return iter((pos, sig[i]) for i, (pos, _) in enumerate(batch))


def _band_keys(ps: tuple[int, np.ndarray], b: int, r: int) -> list[tuple[tuple[int, bytes], tuple[int, np.ndarray]]]:
    pos, sig = ps
    return [((k, sig[k * r : (k + 1) * r].tobytes()), ps) for k in range(b)]


def _group_pairs(kv: tuple[Any, Iterable[tuple[int, np.ndarray]]], threshold: float | None) -> list[tuple[int, int]]:
    """All pairs (pos_i < pos_j) of one LSH bucket, kept when their signature estimate >= threshold."""
    g = sorted(kv[1], key=lambda ps: ps[0])
    return [
        (g[i][0], g[j][0])
        for i in range(len(g))
        for j in range(i + 1, len(g))
        if threshold is None or float(np.mean(g[i][1] == g[j][1])) >= threshold
    ]


def _exact_verified(pairs: Any, texts: Any, cfg: NearDedupConfig) -> Any:
    """The pairs of an RDD of ``(pos_i, pos_j)`` whose shingle sets have exact Jaccard >= ``cfg.threshold``.

    Only documents named by a candidate get a shingle set (once each): their positions (as few
    as the edges the driver collects anyway) are broadcast, so the corpus' texts are filtered in
    place, not shuffled. A pair meets the set of its left document in one join, of its right in a second.
    """
    t = cfg.threshold
    named = pairs.context.broadcast(frozenset(pairs.flatMap(lambda p: p).distinct().collect()))
    sets = texts.filter(lambda pt: pt[0] in named.value).mapValues(lambda text: shingle_set(text, cfg))
    left = pairs.join(sets).map(lambda kv: (kv[1][0], (kv[0], kv[1][1])))  # (pos_j, (pos_i, set_i))
    both = left.join(sets)  # (pos_j, ((pos_i, set_i), set_j))
    return both.filter(lambda kv: jaccard(kv[1][0][1], kv[1][1]) >= t).map(lambda kv: (kv[1][0][0], kv[0]))


def near_duplicate_edges(sigs: Any, cfg: NearDedupConfig, texts: Any = None) -> list[tuple[int, int]]:
    """Verified LSH pairs ``(pos_i < pos_j)`` from an RDD of ``(pos, signature)``: bands as keys, grouped.

    ``cfg.band_rows()`` gives the (b, r) of the in-process run. With ``verify_with="signature"`` a
    bucket carries the signatures of its members, so a candidate pair is verified where it is
    found (the test is the same ``mean(sig_i == sig_j) >= threshold`` as in-process, hence the
    same answer in every bucket that finds it); ``distinct`` then merges the buckets. With
    ``verify_with="exact"`` the distinct candidates are joined to the shingle sets of ``texts``,
    an RDD of ``(pos, text)`` (required then), and checked by exact Jaccard.
    """
    b, r = cfg.band_rows()
    exact = cfg.verify and cfg.verify_with == "exact"
    if exact and texts is None:
        raise ValueError("texts (an RDD of (pos, text)) is required when cfg.verify_with='exact'")
    t = cfg.threshold if cfg.verify and not exact else None
    buckets = sigs.flatMap(lambda ps: _band_keys(ps, b, r)).groupByKey()
    pairs = buckets.flatMap(lambda kv: _group_pairs(kv, t)).distinct()
    if not exact:
        return sorted(pairs.collect())
    pairs = pairs.persist()  # read twice: the positions to broadcast, then the joins
    edges = sorted(_exact_verified(pairs, texts, cfg).collect())
    pairs.unpersist()
    return edges


def _near_dedup(rdd: Any, sc: Any, op: SparkCorpusOp) -> Any:
    cfg = op.near or NearDedupConfig()
    texts = rdd.map(lambda pd: (pd[0], pd[1]["text"]))
    edges = near_duplicate_edges(rdd.mapPartitions(lambda it: _signatures(it, cfg)), cfg, texts)
    nodes = sorted({p for e in edges for p in e})
    index = {p: i for i, p in enumerate(nodes)}
    uf = UnionFind(len(nodes))
    for i, j in edges:
        uf.union(index[i], index[j])
    first: dict[int, int] = {}
    for p in nodes:  # ascending pos: the first member of each component is its survivor
        first.setdefault(uf.find(index[p]), p)
    gone = sc.broadcast(frozenset(p for p in nodes if first[uf.find(index[p])] != p))

    def tag(pd: tuple[int, Doc]) -> tuple:
        return (_DROP, pd[0], str(pd[1]["id"]), "near_duplicate") if pd[0] in gone.value else (_DOC, pd[0], pd[1])

    return rdd.map(tag)


_CORPUS_OPS = {"exact_dedup": _exact_dedup, "repeated_lines": _repeated_lines, "near_dedup": _near_dedup}


# --- the runner --------------------------------------------------------------------------------
def _summarize(records: Iterator[tuple]) -> Iterator[tuple]:
    """Drop records as they are, plus one ``(_STATS, kept, kept_bytes)`` per partition."""
    kept = nbytes = 0
    for t in records:
        if t[0] == _DOC:
            kept += 1
            nbytes += _nbytes(t[2])
        else:
            yield t
    yield (_STATS, kept, nbytes)


def run_pipeline_spark(
    spark: Any,
    docs: Iterable[Doc] | Any,
    stages: StageList | Callable[[Any], StageList],
    *,
    shared: Any = None,
    num_partitions: int | None = None,
) -> tuple[list[Doc], PipelineReport]:
    """:func:`~llmbook.data.pipeline.run_pipeline` on Spark: same stages, same survivors, same order.

    ``docs``: an iterable of document dicts or an RDD of them (its order defines "first").
    ``stages``: the stage list, or a picklable factory ``stages(shared) -> list`` called on the
    driver and once per partition with ``shared`` (sent as one Spark broadcast), so large trained
    filters travel as plain arrays instead of inside every task. Per-document stage ``seconds``
    are summed over executors; corpus-stage ``seconds`` are driver wall time of its Spark jobs.
    One Spark job per stage run (plus one to collect the survivors); each stage's output is
    persisted until the end.
    """
    require_pyspark()
    sc = spark.sparkContext if hasattr(spark, "sparkContext") else spark
    t_start = time.perf_counter()
    bc = sc.broadcast(shared) if shared is not None else None
    plan = _resolve(stages, bc)
    if not isinstance(plan, (list, tuple)) or not all(isinstance(s, (Stage, CorpusStage)) for s in plan):
        raise TypeError("stages must be a list of Stage or CorpusStage objects (or a factory returning one)")
    ops = {i: corpus_op(s) for i, s in enumerate(plan) if isinstance(s, CorpusStage)}  # fail before any job
    if hasattr(docs, "zipWithIndex"):
        rdd = docs.zipWithIndex().map(lambda di: (di[1], _check_doc(di[0])))
        n_in, n_bytes = rdd.map(lambda pd: (1, _nbytes(pd[1]))).fold((0, 0), lambda x, y: (x[0] + y[0], x[1] + y[1]))
    else:
        items = [_check_doc(d) for d in docs]
        rdd = sc.parallelize(list(enumerate(items)), num_partitions or sc.defaultParallelism)
        n_in, n_bytes = len(items), sum(_nbytes(d) for d in items)
    reports = [StageReport(name=s.name) for s in plan]
    dropped: dict[str, str] = {}
    cached: list[Any] = []
    src = stages if not isinstance(stages, (list, tuple)) else list(stages)
    for kind, a, b in _segments(list(plan)):
        t0 = time.perf_counter()
        if kind == "docs":
            out = rdd.mapPartitions(lambda it, a=a, b=b: _run_segment(it, src, bc, a, b)).persist()
            for rec in out.filter(lambda t: t[0] != _DOC).collect():
                if rec[0] == _STATS:
                    for k, part in enumerate(rec[1]):
                        _merge(reports[a + k], part)
                else:
                    dropped[rec[2]] = f"{plan[rec[3]].name}: {rec[4]}"
            n_bytes = reports[b - 1].bytes_out
        else:
            rep, stage = reports[a], plan[a]
            rep.docs_in, rep.bytes_in = n_in if a == 0 else reports[a - 1].kept, n_bytes
            out = _CORPUS_OPS[ops[a].kind](rdd, sc, ops[a]).persist()
            for rec in out.mapPartitions(_summarize).collect():
                if rec[0] == _STATS:
                    rep.kept += rec[1]
                    rep.bytes_out += rec[2]
                else:
                    rep.dropped += 1
                    rep.reasons[rec[3]] += 1
                    dropped[rec[2]] = f"{stage.name}: {rec[3]}"
            rep.seconds = time.perf_counter() - t0
            n_bytes = rep.bytes_out
            if rep.kept + rep.dropped != rep.docs_in:
                raise ValueError(
                    f"corpus stage {stage.name!r}: {rep.kept} kept + {rep.dropped} dropped != {rep.docs_in} in"
                )
        cached.append(out)
        rdd = out.filter(lambda t: t[0] == _DOC).map(lambda t: (t[1], t[2]))
    kept = [d for _, d in sorted(rdd.collect(), key=lambda pd: pd[0])]
    for c in cached:
        c.unpersist()
    if bc is not None:
        bc.unpersist()
    return kept, PipelineReport(
        stages=reports, docs_in=n_in, docs_out=len(kept), seconds=time.perf_counter() - t_start, dropped=dropped
    )
