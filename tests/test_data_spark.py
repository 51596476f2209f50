"""The pretraining-data pipeline on PySpark (local[2]) gives the in-process survivors, texts and counts.

Skipped when pyspark (the `spark` extra) or Java is missing, unless LLMBOOK_REQUIRE_SPARK=1
(set by `make test`), where a missing PySpark or Java is a failure.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import warnings
from functools import partial

import numpy as np
import pytest

from llmbook.book import profiles
from llmbook.chain import corpus as chain
from llmbook.data import corpus_build as cb
from llmbook.data.corpora import load_documents
from llmbook.data.corpus_build import filters_from_state, filters_state
from llmbook.data.dedup import (
    NearDedupConfig,
    dedup_stages,
    exact_dedup,
    near_dedup,
    plant_near_duplicates,
    remove_repeated_lines,
)
from llmbook.data.pipeline import CorpusStage, run_pipeline
from llmbook.data.raw_corpus import make_raw_corpus
from llmbook.data.spark import SparkCorpusOp, corpus_op, local_spark, run_pipeline_spark

pytestmark = pytest.mark.xdist_group("spark")  # one worker, one SparkSession for the whole file


def _unavailable(reason: str) -> None:
    if os.environ.get("LLMBOOK_REQUIRE_SPARK") == "1":
        pytest.fail(f"{reason}, but LLMBOOK_REQUIRE_SPARK=1: run `make setup` (installs .[spark] and Java 17+)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def spark():
    try:
        import pyspark  # noqa: F401
    except ImportError:
        _unavailable("pyspark is not installed (pip install -e '.[spark]')")
    if not (shutil.which("java") or os.environ.get("JAVA_HOME")):
        _unavailable("no Java runtime (java not on PATH and JAVA_HOME unset)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # pyspark 4.3 warns about pandas >= 3 (unused here)
        session = local_spark("local[2]", driver_memory="512m", shuffle_partitions=2)  # one task per core
    yield session
    session.stop()


def _compare(a: list[dict], b: list[dict]) -> None:
    """Same ids in the same order, same texts, same metadata (quality scores to 1e-12)."""
    ids_a, ids_b = [d["id"] for d in a], [d["id"] for d in b]
    only_ours, only_spark = sorted(set(ids_a) - set(ids_b))[:5], sorted(set(ids_b) - set(ids_a))[:5]
    assert ids_a == ids_b, f"survivors differ: only in-process {only_ours}, only spark {only_spark}"
    bad = [x["id"] for x, y in zip(a, b) if x["text"] != y["text"]]
    assert not bad, f"{len(bad)} texts differ, e.g. {bad[:3]}"
    qa = np.array([x["meta"].get("quality_score", 0.0) for x in a])
    qb = np.array([y["meta"].get("quality_score", 0.0) for y in b])
    max_abs_diff = float(np.abs(qa - qb).max()) if len(qa) else 0.0
    assert max_abs_diff <= 1e-12, f"quality scores differ: max_abs_diff={max_abs_diff}"
    strip = lambda d: {k: v for k, v in d["meta"].items() if k != "quality_score"}  # noqa: E731
    assert [strip(x) for x in a] == [strip(y) for y in b]


def _counts(report) -> list[tuple]:
    return [
        (r["stage"], r["docs_in"], r["kept"], r["dropped"], r["bytes_in"], r["bytes_out"], r["reasons"])
        for r in report.rows()
    ]


def test_book_pipeline_on_spark_matches_in_process(spark):
    cfg = profiles.resolve("pretraining_data", "smoke", en_docs=80, zh_docs=80)
    ours = chain.clean_corpus(cfg)
    dist = chain.clean_corpus_spark(cfg, spark, num_partitions=2)
    assert len(ours.raw.docs) > 150 and 0 < len(ours.kept) < len(ours.raw.docs)
    _compare(ours.kept, dist.kept)
    assert _counts(ours.report) == _counts(dist.report)
    assert ours.report.dropped == dist.report.dropped
    assert dist.report.docs_in == ours.report.docs_in and dist.report.docs_out == ours.report.docs_out
    removed = {r["stage"]: r["dropped"] for r in dist.report.rows()}
    assert removed["exact_dedup"] > 0 and removed["near_dedup"] > 0  # both dedup paths did something


def test_dedup_stages_on_spark_with_planted_clusters(spark):
    """Clusters of several near copies (survivor = first in input order), exact copies, repeated lines."""
    base = [{"id": d["id"], "text": d["text"], "meta": {}} for d in load_documents(lang="zh", limit=60)]
    docs, clusters = plant_near_duplicates(base, rate=1.0, seed=5)
    # exact duplicates after normalisation
    docs += [{"id": f"copy{k}", "text": docs[3 * k]["text"].upper(), "meta": {}} for k in range(10)]
    assert len(docs) - len(set(clusters)) > 60  # many multi-member clusters
    stages = dedup_stages(NearDedupConfig(threshold=0.6, num_perm=64, seed=3), min_line_docs=3)
    kept, rep = run_pipeline(docs, stages)
    kept_s, rep_s = run_pipeline_spark(spark, docs, stages, num_partitions=3)
    _compare(kept, kept_s)
    assert _counts(rep) == _counts(rep_s) and rep.dropped == rep_s.dropped
    by_stage = {r["stage"]: r for r in rep_s.rows()}
    assert by_stage["exact_dedup"]["dropped"] >= 10 and by_stage["near_dedup"]["dropped"] > 30
    assert by_stage["repeated_lines"]["bytes_out"] < by_stage["repeated_lines"]["bytes_in"]  # boilerplate lines cut


def test_near_dedup_config_fields_on_spark(spark):
    """Explicit bands, exact-Jaccard verification, normalisation and SHA-1 shingles: Spark keeps the in-process set.

    Each of those settings, reverted alone, changes which documents the in-process run keeps, so a
    Spark version that ignored any one of them would fail the comparison.
    """
    base = [{"id": d["id"], "text": d["text"], "meta": {}} for d in load_documents(lang="en", limit=40)]
    docs, _ = plant_near_duplicates(base, rate=1.0, seed=5)
    # copies that only normalize_text makes duplicates (exact dedup is not in this pipeline)
    docs += [{"id": f"shout{k}", "text": docs[3 * k]["text"].upper().replace(",", ""), "meta": {}} for k in range(8)]
    cfg = NearDedupConfig(
        threshold=0.8, num_perm=16, seed=3, bands=4, verify_with="exact", normalize=True, shingle_hash="sha1"
    )
    assert cfg.band_rows() == (4, 4) and NearDedupConfig(threshold=0.8, num_perm=16).band_rows() != (4, 4)
    stages = [CorpusStage(name="near_dedup", fn=partial(near_dedup, cfg=cfg))]
    kept, rep = run_pipeline(docs, stages)
    defaults = {"bands": None, "verify_with": "signature", "normalize": False, "shingle_hash": "fast"}
    for field, default in defaults.items():
        other, _ = near_dedup(docs, dataclasses.replace(cfg, **{field: default}))
        assert [d["id"] for d in other] != [d["id"] for d in kept], f"{field} does not matter on this data"
    kept_s, rep_s = run_pipeline_spark(spark, docs, stages, num_partitions=2)
    _compare(kept, kept_s)
    assert _counts(rep) == _counts(rep_s) and rep.dropped == rep_s.dropped
    assert rep_s.rows()[0]["dropped"] > 30  # most of the 40 planted copies and the 8 shouted ones


def test_corpus_op_settings_are_read_or_refused():
    """Every keyword of a dedup partial reaches its Spark op; anything else is one ValueError naming it."""
    op = corpus_op(CorpusStage(name="r", fn=partial(remove_repeated_lines, min_docs=4, mode="raw")))
    assert (op.kind, op.min_docs, op.line_mode) == ("repeated_lines", 4, "raw")
    assert corpus_op(CorpusStage(name="r", fn=remove_repeated_lines)).line_mode == "normalized"  # its default
    with pytest.raises(ValueError, match=r"mode must be one of \('raw', 'normalized'\), got 'exact'"):
        corpus_op(CorpusStage(name="r", fn=partial(remove_repeated_lines, mode="exact")))
    with pytest.raises(ValueError, match=r"\['min_count'\] have no Spark version; allowed: \('min_docs', 'mode'\)"):
        corpus_op(CorpusStage(name="r", fn=partial(remove_repeated_lines, min_count=2)))
    with pytest.raises(ValueError, match="min_docs must be an integer, got 2.5"):
        corpus_op(CorpusStage(name="r", fn=partial(remove_repeated_lines, min_docs=2.5)))
    with pytest.raises(ValueError, match="cfg must be a NearDedupConfig, got dict"):
        corpus_op(CorpusStage(name="n", fn=partial(near_dedup, cfg={"threshold": 0.5})))
    assert corpus_op(CorpusStage(name="n", fn=near_dedup)).near == NearDedupConfig()


def test_corpus_ops_and_filter_state_round_trip():
    """No Spark needed: corpus stages map to their Spark ops; filters survive the array/JSON state."""
    cfg = NearDedupConfig(threshold=0.8)
    assert corpus_op(CorpusStage(name="e", fn=exact_dedup)) == SparkCorpusOp(kind="exact_dedup")
    assert corpus_op(CorpusStage(name="r", fn=partial(remove_repeated_lines, min_docs=5))).min_docs == 5
    assert corpus_op(dedup_stages(cfg)[2]).near is cfg
    with pytest.raises(ValueError, match="no Spark version"):
        corpus_op(CorpusStage(name="mine", fn=lambda ds: (ds, [])))
    config = profiles.resolve("pretraining_data", "smoke", en_docs=10, zh_docs=10, classifier_train_docs=20)
    raw = make_raw_corpus(chain.raw_config(config))
    filters = cb.train_filters(raw, config.classifier_train_docs, config.seed)
    back = filters_from_state(filters_state(filters))
    texts = [d["text"] for d in raw.docs if isinstance(d["text"], str)][:20]
    assert back.langid.predict(texts) == filters.langid.predict(texts)
    diff = float(np.abs(back.quality.predict_proba(texts) - filters.quality.predict_proba(texts)).max())
    assert diff == 0.0, f"max_abs_diff={diff}"
