"""The retrieval index end to end (modes equal to their parts, persistence, add/delete, embedder checks), the Qdrant
store against exact search, grounded-answer bookkeeping, the evaluation helpers, and `llmbook rag` on a folder."""

from __future__ import annotations

import json

import numpy as np
import pytest

from llmbook.book import cli
from llmbook.data.faq import faq_documents, load_distractors, load_faq
from llmbook.rag.answer import (
    REFUSAL,
    GroundedAnswer,
    answer_questions,
    answer_support,
    citation_precision,
    is_refusal,
    parse_citations,
)
from llmbook.rag.bm25 import BM25, BM25Config
from llmbook.rag.embeddings import SentenceEmbedder
from llmbook.rag.evaluate import best_threshold, document_ranking, evaluate_retriever, faq_queries, reranker_examples
from llmbook.rag.fusion import reciprocal_rank_fusion
from llmbook.rag.index import Hit, Index, IndexConfig
from llmbook.rag.store import QdrantStore
from llmbook.rag.tokens import search_tokens


@pytest.fixture(scope="module")
def embedder(tmp_path_factory) -> SentenceEmbedder:
    return SentenceEmbedder(cache_dir=tmp_path_factory.mktemp("embeddings"))  # each chunk embedded once per file


@pytest.fixture(scope="module")
def corpus():
    pairs = [p for p in load_faq(sources=["python-faq"])][:30] + load_faq(sources=["debian-faq"])[:6]
    debian_zh = [p for p in load_faq(sources=["debian-faq"], lang="zh")][:6]
    documents = faq_documents(pairs + debian_zh) + load_distractors(sources=["python-docs"])[:20]
    return pairs + debian_zh, documents


@pytest.fixture(scope="module")
def index(corpus, embedder) -> Index:
    return Index.build(corpus[1], IndexConfig(chunk_size=600), embedder=embedder)


def test_hybrid_search_finds_the_answers(index, corpus) -> None:
    pairs = corpus[0]
    queries = faq_queries(pairs)
    found = evaluate_retriever(lambda q: [c for c, _ in index.ranking(q, 30)], queries["en"])
    assert found.metrics["R@5"].mean() >= 0.8, found.metrics["R@5"].mean()
    hits = index.search(pairs[0].question, 3)
    assert all(isinstance(h, Hit) and h.text == index.chunk(h.chunk_id).text for h in hits)


def test_each_mode_equals_its_parts(index, embedder) -> None:
    query = "How do I make an executable Python script?"
    live = [c for c in index.chunks if c is not None]
    bm25 = BM25(BM25Config(method="lucene")).index([search_tokens(c.text) for c in live])
    rows, scores = bm25.search(search_tokens(query), 10)
    assert [c for c, _ in index.ranking(query, 10, mode="bm25")] == [live[r].id for r, s in zip(rows, scores) if s > 0]
    cosine = embedder.encode([c.text for c in live]) @ embedder.encode([query])[0]
    dense = [c for c, _ in index.ranking(query, 10, mode="dense")]
    assert dense == [live[i].id for i in np.argsort(-cosine, kind="stable")[:10]]
    n = index.config.candidates
    weight = 0.5 * (1 - embedder.unknown_token_rate([query]))
    expected = reciprocal_rank_fusion([[c for c, _ in index.bm25_ranking(query, n)],
                                       [c for c, _ in index.dense_ranking(query, n)]], weights=[1 - weight, weight])
    assert index.ranking(query, 10) == expected[:10]


def test_language_aware_weight_leans_on_bm25_for_chinese(index) -> None:
    english, chinese = "How do I install a package?", "如何安装软件包？"
    assert index.dense_weight(chinese) < 0.5 * index.dense_weight(english)
    assert index.dense_weight(chinese, language_aware=False) == index.config.dense_weight


def test_save_load_round_trip_and_embedder_check(index, tmp_path, embedder) -> None:
    index.save(tmp_path / "ix")
    loaded = Index.load(tmp_path / "ix", embedder=embedder)
    for query in ("Why does Python use indentation?", "Debian 是什么？"):
        assert loaded.ranking(query, 10) == index.ranking(query, 10)
    with pytest.raises(ValueError, match="built with embedder"):
        Index.load(tmp_path / "ix", embedder=SentenceEmbedder(max_length=64))
    with pytest.raises(FileNotFoundError, match="not a saved index"):
        Index.load(tmp_path / "nothing")


def test_add_and_delete_without_rebuilding(corpus, embedder, tmp_path) -> None:
    documents = corpus[1][:15]
    index = Index.build(documents, IndexConfig(vector_index="hnsw"), embedder=embedder)
    target = documents[3]
    query = corpus[0][3].question
    assert documents[3].id == corpus[0][3].id
    assert target.id in document_ranking([c for c, _ in index.ranking(query, 5)])
    removed = index.delete([target.id])
    assert removed >= 1 and target.id not in index.doc_ids()
    for mode in ("bm25", "dense", "hybrid"):
        assert target.id not in document_ranking([c for c, _ in index.ranking(query, 20, mode=mode)])
    index.save(tmp_path / "ix")
    assert target.id not in Index.load(tmp_path / "ix", embedder=embedder).doc_ids()
    index.add([target])
    assert document_ranking([c for c, _ in index.ranking(query, 5)])[0] == target.id
    with pytest.raises(ValueError, match="already in the index"):
        index.add([target])
    with pytest.raises(ValueError, match="vector_index"):
        IndexConfig(vector_index="annoy")


def test_approximate_indexes_agree_with_exact(index, corpus, embedder) -> None:
    documents, exact = corpus[1], index  # the same chunks: their vectors come from the embedder's cache
    assert exact.config.vector_index == "exact"
    for kind in ("ivf", "hnsw"):
        config = IndexConfig(chunk_size=exact.config.chunk_size, vector_index=kind, nprobe=64)
        approximate = Index.build(documents, config, embedder=embedder)
        for pair in corpus[0][:10]:
            ids = [c for c, _ in approximate.ranking(pair.question, 5, mode="dense")]
            assert ids == [c for c, _ in exact.ranking(pair.question, 5, mode="dense")], kind


def test_qdrant_store_equals_exact_search_and_persists(index, embedder, tmp_path) -> None:
    live = [c for c in index.chunks if c is not None]
    vectors = index.vectors[[i for i, c in enumerate(index.chunks) if c is not None]]
    store = QdrantStore(tmp_path / "qdrant", dim=embedder.dim)
    store.upsert(live, vectors)
    query = embedder.encode(["How do I copy a file?"])[0]
    ours = index.dense_ranking("How do I copy a file?", 10)
    theirs = store.search(query, 10)
    diff = max(abs(a[1] - b[1]) for a, b in zip(ours, theirs, strict=True))
    assert [c for c, _ in ours] == [c for c, _ in theirs] and diff < 1e-5, f"max_abs_diff={diff}"
    store.delete_documents([live[0].doc_id])
    assert len(store) == len(live) - sum(c.doc_id == live[0].doc_id for c in live)
    store.close()
    reopened = QdrantStore(tmp_path / "qdrant", dim=embedder.dim)
    assert len(reopened) == len(live) - sum(c.doc_id == live[0].doc_id for c in live)
    kept = next(c for c in live if c.doc_id != live[0].doc_id)
    assert reopened.chunk(kept.id) == kept
    reopened.close()
    with pytest.raises(ValueError, match="384-d vectors, not 10-d"):
        QdrantStore(tmp_path / "qdrant", dim=10)


def _hit(n: int, doc: str, text: str) -> Hit:
    return Hit(chunk_id=f"{doc}#{n}", doc_id=doc, score=1.0, start=0, end=len(text), text=text, meta={})


def test_citations_support_and_refusals() -> None:
    passages = [_hit(0, "a", "Use shutil.copy to copy files."), _hit(0, "b", "Lists are mutable sequences.")]
    assert parse_citations("Copy with shutil [1]. Also [1, 2] and [7].", passages) == ["a#0", "b#0"]
    answer = GroundedAnswer(question="q", text="Use shutil.copy to copy [1].", citations=["a#0"], passages=passages,
                            refused=False)
    assert citation_precision(answer, {"a"}) == 1.0 and citation_precision(answer, {"b"}) == 0.0
    assert answer_support(answer) == 1.0
    invented = GroundedAnswer(question="q", text="Call os.teleport twice [2].", citations=["b#0"], passages=passages,
                              refused=False)
    assert answer_support(invented) == 0.0
    assert is_refusal("I don't know.") and not is_refusal("Use a dict.")
    # below the threshold nothing is generated: the model is never touched
    refused = answer_questions(["q1", "q2"], [passages, []], model=None, tokenizer=None, min_score=2.0)
    assert [a.text for a in refused] == [REFUSAL, REFUSAL] and all(a.refused for a in refused)


def test_evaluation_helpers(index, corpus) -> None:
    pairs = corpus[0]
    queries = faq_queries(pairs)
    assert {q.kind for qs in queries.values() for q in qs} == {"en", "zh", "zh→en"}
    cross = queries["zh→en"][0]
    assert next(iter(cross.relevant)).startswith("debian-faq-en")
    assert document_ranking(["x#0", "y#2", "x#1", "z#0"]) == ["x", "y", "z"]
    assert best_threshold([0.9, 0.8, 0.7], [0.2, 0.75]) == (0.7, 0.8)
    examples = reranker_examples(index, queries["en"][:3], negatives=2)
    assert [label for _, _, label in examples] == [1.0, 0.0, 0.0] * 3


def test_cli_indexes_searches_and_refuses(tmp_path, capsys) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "logs.md").write_text("# Logs\n\nRotate the logs with logrotate every week.\n")
    (folder / "page.html").write_text("<html><body><h1>Cooking</h1><p>Boil pasta for nine minutes.</p></body></html>")
    (folder / "rows.jsonl").write_text(json.dumps({"id": "tip", "text": "Back up your disks nightly."}) + "\n")
    (folder / "blob.bin.txt").write_bytes(b"\x00\x00\x01")
    out = tmp_path / "ix"
    assert cli.main(["rag", "index", str(folder), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "skipped" in captured.err and "binary" in captured.err and "3 documents" in captured.out
    assert cli.main(["rag", "search", str(out), "how long to cook pasta", "-k", "2", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rows[0]["doc_id"] == "page.html" and len(rows) == 2
    source = "# Cooking\n\nBoil pasta for nine minutes."
    assert source[rows[0]["start"]:rows[0]["end"]] == rows[0]["text"]
    assert cli.main(["rag", "ask", str(out), "how long to cook pasta", "--min-cosine", "1.01"]) == 0
    assert capsys.readouterr().out.strip() == REFUSAL
    assert cli.main(["rag", "search", str(tmp_path / "missing"), "x"]) == 1
    assert "not a saved index" in capsys.readouterr().err
    assert cli.main(["rag", "index", str(tmp_path / "nowhere"), "--out", str(out)]) == 1
