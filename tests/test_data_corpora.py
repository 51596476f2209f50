"""Bundled corpora: every corpus loads and matches its manifest, text is clean, the loader's
truncation and split are exact and deterministic, bad input is refused clearly."""

from __future__ import annotations

import gzip
import json

import pytest

from llmbook.data import Document, corpus_info, corpus_text, list_corpora, load_documents, split_text
from llmbook.data.corpora import DATA_DIR_ENV, truncate_utf8

# Frequent characters whose Traditional form differs from the Simplified one: (Traditional, Simplified)
TRAD_SIMP = [("們", "们"), ("國", "国"), ("說", "说"), ("這", "这"), ("來", "来"), ("時", "时"),
             ("會", "会"), ("為", "为"), ("後", "后"), ("與", "与"), ("門", "门"), ("長", "长"),
             ("無", "无"), ("風", "风"), ("雲", "云"), ("書", "书"), ("馬", "马"), ("東", "东")]
BOILERPLATE = ["Project Gutenberg", "PROJECT GUTENBERG", "gutenberg.org", "*** START", "*** END",
               "This eBook is for the use of anyone", "Transcriber"]


@pytest.fixture(scope="module")
def all_docs() -> dict[str, list[dict]]:
    return {name: list(load_documents(name)) for name in list_corpora()}


def test_expected_corpora_are_bundled():
    names = list_corpora()
    assert {"austen", "moby_dick", "chinese_classics", "tang_song_poetry"} <= set(names)
    assert names == sorted(names)


def test_every_corpus_loads_and_matches_manifest(all_docs):
    for name, docs in all_docs.items():
        info = corpus_info(name)
        assert {"source", "licence", "lang", "bytes", "documents"} <= set(info)
        assert len(docs) == info["documents"] > 0, name
        assert sum(len(d["text"].encode("utf-8")) for d in docs) == info["bytes"], name
        for d in docs:
            assert set(d) == {"id", "text", "meta"}, d.get("id")
            assert isinstance(d["text"], str) and d["text"].strip(), d["id"]
            assert d["meta"]["lang"] == info["lang"], d["id"]
            assert d["meta"]["licence"] and d["meta"]["source"], d["id"]
            # documents never hold a blank line, so "\n\n" marks document boundaries exactly
            assert "\n\n" not in d["text"], d["id"]


def test_sizes_are_in_the_planned_range():
    en = sum(corpus_info(n)["bytes"] for n in list_corpora() if corpus_info(n)["lang"] == "en")
    zh = sum(corpus_info(n)["bytes"] for n in list_corpora() if corpus_info(n)["lang"] == "zh")
    assert 2_500_000 < en < 4_000_000, en
    assert 1_000_000 < zh < 2_000_000, zh


def test_ids_unique_across_all_corpora(all_docs):
    ids = [d["id"] for docs in all_docs.values() for d in docs]
    dupes = sorted({i for i in ids if ids.count(i) > 1}) if len(ids) != len(set(ids)) else []
    assert not dupes, f"duplicate ids: {dupes[:10]}"


def test_ids_are_stable_names():
    first = {name: next(load_documents(name))["id"] for name in list_corpora()}
    assert first["austen"] == "austen-pride-and-prejudice-ch001"
    assert first["moby_dick"] == "melville-moby-dick-000"
    assert first["chinese_classics"] == "zh-lunyu-001"
    assert first["tang_song_poetry"] == "zh-tang300-001"


def test_no_gutenberg_boilerplate(all_docs):
    for docs in all_docs.values():
        for d in docs:
            hits = [b for b in BOILERPLATE if b in d["text"]]
            assert not hits, f"{d['id']} contains {hits}"
    moby = all_docs["moby_dick"]
    assert moby[1]["text"].startswith("CHAPTER 1. Loomings.\nCall me Ishmael.")
    assert moby[-1]["text"].rstrip().endswith("only found another orphan.")


def test_chinese_is_simplified():
    text = corpus_text("zh")
    n_trad = sum(text.count(t) for t, _ in TRAD_SIMP)
    n_simp = sum(text.count(s) for _, s in TRAD_SIMP)
    assert n_simp > 10_000, n_simp  # the Simplified forms are really there (test can fail)
    assert n_trad <= 0.001 * n_simp, f"{n_trad} Traditional vs {n_simp} Simplified characters"


def test_load_documents_by_lang_and_limit(all_docs):
    zh_ids = [d["id"] for d in load_documents(lang="zh")]
    assert zh_ids == [d["id"] for n in ("chinese_classics", "tang_song_poetry") for d in all_docs[n]]
    assert all(d["meta"]["lang"] == "en" for d in load_documents(lang="en"))
    assert len(list(load_documents(lang="en", limit=5))) == 5
    assert len(list(load_documents("moby_dick", limit=0))) == 0
    all_ids = [d["id"] for d in load_documents(limit=len(all_docs["austen"]) + 3)]
    assert all_ids[-3:] == [d["id"] for d in all_docs["chinese_classics"][:3]]


def test_corpus_text_joins_documents_deterministically(all_docs):
    head = corpus_text("en", max_bytes=20_000)
    assert head == corpus_text("en", max_bytes=20_000)
    assert head.startswith(all_docs["austen"][0]["text"] + "\n\n" + all_docs["austen"][1]["text"][:100])
    full = corpus_text("zh")
    expected = "\n\n".join(d["text"] for n in ("chinese_classics", "tang_song_poetry") for d in all_docs[n])
    assert full == expected


@pytest.mark.parametrize("max_bytes", [0, 1, 2, 3, 4, 5, 1000, 1001, 1002, 4097])
def test_corpus_text_truncates_on_character_boundary(max_bytes):
    ref = corpus_text("zh", max_bytes=10_000)
    out = corpus_text("zh", max_bytes=max_bytes)
    n = len(out.encode("utf-8"))
    assert n <= max_bytes, (n, max_bytes)
    assert ref.startswith(out)
    # maximal: one more character would not fit (Chinese chars are 3 bytes, so some cuts drop 1-2 bytes)
    assert n + len(ref[len(out)].encode("utf-8")) > max_bytes
    out.encode("utf-8").decode("utf-8")  # well-formed


def test_truncate_utf8_never_splits_a_character():
    s = "a中é😀b"
    for k in range(len(s.encode()) + 2):
        t = truncate_utf8(s, k)
        assert s.startswith(t) and len(t.encode()) <= k
    assert truncate_utf8(s, 4) == "a中" and truncate_utf8(s, 3) == "a"


def test_split_text_deterministic_disjoint_and_complete():
    text = corpus_text("en", max_bytes=300_000)
    docs = [d for d in text.split("\n\n") if d.strip()]
    train, held = split_text(text, 0.2, seed=0)
    assert (train, held) == split_text(text, 0.2, seed=0)
    tr, he = train.split("\n\n"), held.split("\n\n")
    assert not set(tr) & set(he)
    assert sorted(tr + he) == sorted(docs)
    assert abs(len(he) - round(0.2 * len(docs))) <= 1, (len(he), len(docs))
    # original order is kept inside each part
    pos = {d: i for i, d in enumerate(docs)}
    assert [pos[d] for d in he] == sorted(pos[d] for d in he)
    assert split_text(text, 0.2, seed=1)[1] != held


def test_split_text_edge_cases():
    assert split_text("a\n\nb", 0.0) == ("a\n\nb", "")
    train, held = split_text("a\n\nb", 0.01)
    assert {train, held} == {"a", "b"}  # at least one held out, never all
    assert split_text("", 0.5) == ("", "")
    with pytest.raises(ValueError, match="heldout_fraction"):
        split_text("a", 1.0)
    with pytest.raises(TypeError, match="text"):
        split_text(["a"], 0.1)  # type: ignore[arg-type]


def test_bad_names_raise_value_error_listing_allowed_values():
    with pytest.raises(ValueError, match="austen"):
        load_documents("no_such_corpus")
    with pytest.raises(ValueError, match=r"\['en', 'zh'\]"):
        load_documents(lang="xx")
    with pytest.raises(ValueError, match="name must be one of"):
        corpus_info("nope")
    with pytest.raises(ValueError, match="lang must be one of"):
        corpus_text("fr")
    with pytest.raises(ValueError, match="max_bytes"):
        corpus_text("en", max_bytes=-1)
    with pytest.raises(ValueError, match="limit"):
        load_documents("austen", limit=-2)


def test_document_dataclass_round_trip():
    d = next(load_documents("moby_dick"))
    doc = Document.from_dict(d)
    assert doc.as_dict() == d
    with pytest.raises(TypeError):
        Document("x", "y", {})  # kw_only


def test_data_dir_override(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match=DATA_DIR_ENV):
        list_corpora()
    docs = [{"id": f"t-{i}", "text": f"doc {i} 文", "meta": {"lang": "xx", "source": "s", "licence": "l"}}
            for i in range(3)]
    with gzip.open(tmp_path / "tiny.jsonl.gz", "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(d, ensure_ascii=False) + "\n" for d in docs)
    manifest = {"corpora": {"tiny": {"file": "tiny.jsonl.gz", "lang": "xx", "source": "s", "licence": "l",
                                     "bytes": 21, "documents": 3}}}
    (tmp_path / "corpora.json").write_text(json.dumps(manifest), encoding="utf-8")
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    assert list_corpora() == ["tiny"]
    assert list(load_documents("tiny")) == docs
    assert corpus_text("xx") == "doc 0 文\n\ndoc 1 文\n\ndoc 2 文"
    assert corpus_text("xx", max_bytes=8) == "doc 0 "  # "文" is 3 bytes: cut before it
