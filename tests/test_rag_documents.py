"""Loading files, HTML extraction, chunkers (exact offsets), fusion (= Qdrant), ranking metrics (= sklearn)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from llmbook.data.extract import html_to_text
from llmbook.evaluation.retrieval import ndcg_at_k, per_query_metrics, recall_at_k, reciprocal_rank
from llmbook.rag.chunking import (
    chunk_by_tokens,
    chunk_documents,
    chunk_recursive,
    chunk_semantic,
    semantic_breaks,
    sentence_spans,
)
from llmbook.rag.documents import Document, load_documents
from llmbook.rag.fusion import normalize_scores, reciprocal_rank_fusion, weighted_score_fusion

PAGE = """<html><head><title>Install &amp; run</title><style>p {color: red}</style></head><body>
<nav><a href="/">Home</a> | <a href="/docs">Docs</a></nav>
<h1>Installing</h1><p>Run the   <b>installer</b> and wait.</p>
<ul><li>first step<li>second step</ul>
<pre>def main():
    return 0</pre>
<script>var tracking = 1;</script><footer>Copyright 2026</footer></body></html>"""


def test_html_to_text_keeps_content_and_structure_and_drops_furniture() -> None:
    text, title = html_to_text(PAGE)
    assert title == "Install & run"
    assert text.startswith("# Installing\n\nRun the installer and wait.")
    assert "- first step\n- second step" in text
    assert "def main():\n    return 0" in text  # code layout kept
    for furniture in ("Home", "tracking", "Copyright", "color"):
        assert furniture not in text


def test_html_words_equal_beautifulsoup_text_without_the_skipped_elements() -> None:
    bs4 = pytest.importorskip("bs4")
    soup = bs4.BeautifulSoup(PAGE, "html.parser")
    for tag in soup(["script", "style", "nav", "footer", "head"]):
        tag.decompose()
    ours = [w for w in html_to_text(PAGE)[0].split() if w not in ("#", "-")]
    assert ours == soup.get_text(" ").split()


def test_load_documents_reads_formats_and_counts_what_it_skips(tmp_path) -> None:
    (tmp_path / "notes.md").write_text("# Notes\n\nSome text.\n")
    (tmp_path / "page.html").write_text(PAGE)
    (tmp_path / "empty.txt").write_text("   \n")
    (tmp_path / "blob.txt").write_bytes(b"\x00\x01\x02binary")
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    (tmp_path / "legacy.txt").write_bytes("编码是GB18030的文件".encode("gb18030"))
    rows = [{"id": "q1", "text": "first row", "lang": "en"}, {"text": "no id"}, {"id": "bad"}]
    (tmp_path / "rows.jsonl").write_text("\n".join(map(json.dumps, rows)) + "\n{not json\n")
    report = load_documents([tmp_path])
    by_id = {d.id: d for d in report.documents}
    assert set(by_id) == {"notes.md", "page.html", "legacy.txt", "q1", "rows.jsonl:2"}
    assert by_id["legacy.txt"].text == "编码是GB18030的文件"
    assert by_id["page.html"].meta["title"] == "Install & run"
    assert by_id["q1"].meta == {"lang": "en"}
    reasons = sorted(why.split(" (")[0] for _, why in report.skipped)
    assert reasons == ["binary content", "empty", "malformed JSON", 'no non-empty "text" field',
                       "unsupported file type '.png'"]
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_documents([tmp_path / "missing"])


def _random_document(seed: int) -> Document:
    rng = random.Random(seed)
    words = ["alpha", "beta", "gamma", "delta", "数据", "模型。", "end.", "Start", "x"]
    paragraphs = []
    for _ in range(rng.randint(1, 6)):
        heading = f"# Heading {rng.randint(0, 9)}\n\n" if rng.random() < 0.4 else ""
        sentences = [" ".join(rng.choices(words, k=rng.randint(1, 12))) for _ in range(rng.randint(1, 5))]
        paragraphs.append(heading + " ".join(sentences))
    return Document(id=f"d{seed}", text="\n\n".join(paragraphs))


@pytest.mark.parametrize("seed", range(20))
def test_chunk_offsets_are_exact_and_sizes_bounded(seed: int) -> None:
    doc = _random_document(seed)
    for size in (20, 60, 400):
        chunks = chunk_recursive(doc, size=size)
        assert chunks and all(doc.text[c.start:c.end] == c.text for c in chunks)
        assert all(len(c.text) <= size for c in chunks)
        assert all(a.end <= b.start for a, b in zip(chunks, chunks[1:], strict=False))  # in order, disjoint
        # nothing but whitespace falls between chunks: the text is covered
        gaps = [doc.text[a.end:b.start] for a, b in zip(chunks, chunks[1:], strict=False)]
        assert all(not g.strip() for g in gaps) and not doc.text[:chunks[0].start].strip()
    windows = chunk_by_tokens(doc, size=7, overlap=2)
    words = doc.text.split()
    assert all(doc.text[c.start:c.end] == c.text and len(c.text.split()) <= 7 for c in windows)
    assert sum(len(c.text.split()) for c in windows) - 2 * (len(windows) - 1) == len(words)  # each overlap counted


def test_recursive_prefers_headings_then_paragraphs() -> None:
    doc = Document(id="d", text="# A\n\nOne two three.\n\nFour five.\n\n# B\n\nSix seven eight nine.")
    assert [c.text for c in chunk_recursive(doc, size=35)] == ["# A\n\nOne two three.\n\nFour five.",
                                                             "# B\n\nSix seven eight nine."]
    assert [c.id for c in chunk_recursive(doc, size=35)] == ["d#0", "d#1"]


def test_sentences_split_english_and_chinese() -> None:
    text = "It works. Does it? Yes!\n第一句。第二句！"
    assert [text[s:e] for s, e in sentence_spans(text)] == ["It works.", "Does it?", "Yes!", "第一句。", "第二句！"]


def test_semantic_chunker_cuts_where_the_topic_changes() -> None:
    text = "Cats purr. Cats meow. Cats nap. Stocks fell. Stocks rose."
    topics = {"Cats": [1.0, 0.0], "Stocks": [0.0, 1.0]}
    noise = iter(np.random.default_rng(0).normal(0, 0.05, size=(5, 2)))
    embed = lambda sentences: np.array([np.array(topics[s.split()[0]]) + next(noise) for s in sentences])  # noqa: E731
    chunks = chunk_semantic(Document(id="d", text=text), embed=embed, percentile=70)
    assert [c.text for c in chunks] == ["Cats purr. Cats meow. Cats nap.", "Stocks fell. Stocks rose."]
    assert semantic_breaks(np.ones((1, 3))) == []


def test_chunk_documents_rejects_bad_settings() -> None:
    doc = Document(id="d", text="a b c")
    with pytest.raises(ValueError, match="unknown chunker"):
        chunk_documents([doc], "sentences")
    with pytest.raises(ValueError, match="overlap"):
        chunk_by_tokens(doc, size=4, overlap=4)
    assert [c.text for c in chunk_documents([doc], "none")] == ["a b c"]


def _qdrant_points(ranking):
    from qdrant_client.http import models

    return [models.ScoredPoint(id=i, version=0, score=s) for i, s in ranking]


def test_rrf_equals_qdrant_with_its_constant_shifted_by_one() -> None:
    from qdrant_client.hybrid.fusion import reciprocal_rank_fusion as qdrant_rrf

    rng = np.random.default_rng(0)
    lists = [[int(x) for x in rng.permutation(30)[:rng.integers(5, 20)]] for _ in range(3)]
    for k in (1, 2, 60):
        ours = reciprocal_rank_fusion([[str(i) for i in ranking] for ranking in lists], k=k)
        theirs = qdrant_rrf([_qdrant_points([(i, 1.0) for i in ranking]) for ranking in lists], limit=100,
                            ranking_constant_k=k + 1)
        diff = max(abs(s - p.score) for (_, s), p in zip(ours, theirs, strict=True))
        assert [int(i) for i, _ in ours] == [p.id for p in theirs] and diff < 1e-12, f"max_abs_diff={diff}"
    # hand-derived: "a" is first in one list, second in the other
    assert reciprocal_rank_fusion([["a", "b"], ["b", "a"]], k=0) == [("a", 1.5), ("b", 1.5)]
    assert reciprocal_rank_fusion([["a"], ["b"]], k=0, weights=[1.0, 3.0])[0] == ("b", 3.0)


def test_dbsf_normalisation_equals_qdrant() -> None:
    from qdrant_client.hybrid.fusion import distribution_based_score_fusion

    rng = np.random.default_rng(1)
    lists = [[(int(i), float(s)) for i, s in zip(rng.permutation(20)[:12], np.sort(rng.normal(size=12))[::-1],
                                                  strict=True)] for _ in range(2)]
    ours = weighted_score_fusion([[(str(i), s) for i, s in ranking] for ranking in lists], normalization="dbsf")
    theirs = distribution_based_score_fusion([_qdrant_points(ranking) for ranking in lists], limit=100)
    ours_by_id = {int(i): s for i, s in ours}
    diff = max(abs(ours_by_id[p.id] - p.score) for p in theirs)
    assert len(ours) == len(theirs) and diff < 1e-12, f"max_abs_diff={diff}"
    assert normalize_scores([3.0, 3.0]).tolist() == [0.5, 0.5]
    assert normalize_scores([1.0, 2.0, 3.0]).tolist() == [0.0, 0.5, 1.0]
    with pytest.raises(ValueError, match="weight"):
        reciprocal_rank_fusion([["a"]], weights=[1.0, 1.0])


def test_ranking_metrics_equal_sklearn_and_hand_values() -> None:
    from sklearn.metrics import ndcg_score

    rng = np.random.default_rng(0)
    for _ in range(20):
        gains = rng.integers(0, 3, size=15).astype(float)
        gains[rng.integers(15)] = 2.0  # at least one relevant
        scores = rng.permutation(15).astype(float)  # distinct: no ties for sklearn to average
        ranked = [str(i) for i in np.argsort(-scores)]
        relevance = {str(i): g for i, g in enumerate(gains) if g > 0}
        expected = ndcg_score(gains[None], scores[None], k=10)
        assert abs(ndcg_at_k(ranked, relevance, 10) - expected) < 1e-12
    assert reciprocal_rank(["x", "y", "z"], {"z"}) == pytest.approx(1 / 3)
    assert reciprocal_rank(["x"], {"z"}) == 0.0
    assert recall_at_k(["a", "b", "c"], {"c", "d"}, 2) == 0.0 and recall_at_k(["a", "b", "c"], {"c", "d"}, 3) == 0.5
    metrics = per_query_metrics([["a", "b"], ["b", "a"]], [{"a"}, {"a"}])
    assert metrics["R@1"].tolist() == [1.0, 0.0] and metrics["MRR"].tolist() == [1.0, 0.5]


def test_token_chunks_count_model_tokens_past_the_tokenizers_own_truncation() -> None:
    from transformers import AutoTokenizer

    from llmbook.rag.chunking import tokenizer_spans
    from llmbook.rag.embeddings import minilm_path

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    doc = Document(id="d", text=" ".join(f"word{i % 50} and more text" for i in range(200)))
    spans = tokenizer_spans(tokenizer)(doc.text)
    assert len(spans) == len(tokenizer(doc.text, add_special_tokens=False, truncation=False)["input_ids"]) > 512
    chunks = chunk_by_tokens(doc, size=128, overlap=16, spans=tokenizer_spans(tokenizer))
    assert len(chunks) == -(-(len(spans) - 16) // 112)
    assert all(len(tokenizer(c.text, add_special_tokens=False)["input_ids"]) <= 128 for c in chunks)
    assert all(doc.text[c.start:c.end] == c.text for c in chunks)
