"""The bundled FAQ pairs and RAG distractors (data/faq.jsonl.gz, data/rag_distractors.jsonl.gz)."""

from __future__ import annotations

import gzip
import json
import re
import shutil
from collections import Counter

import pytest

from llmbook.data.corpora import DATA_DIR_ENV, data_dir
from llmbook.data.faq import (
    DISTRACTOR_SOURCES,
    DISTRACTORS_FILE,
    FAQ_FILE,
    FAQ_SOURCES,
    FaqPair,
    faq_documents,
    load_distractors,
    load_faq,
    split_faq,
)
from llmbook.rag.documents import Document

CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]")
# markup that must not survive in prose (reST, POD, HTML, wikitext)
PROSE_MARKUP = re.compile(
    r"^=(head\d|item|over|back|cut|pod|begin|end|for)\b|^\.\. |:(ref|func|mod|meth|class|term|c:func|pep):`|"
    r"\b[BCIFLEXSZ]<\S|</?(p|code|span|div|em|strong|li|ul|pre|ref)\b[^>]*>|<a\s+\w+=|</a>|&(amp|lt|gt|nbsp);",
    re.M,
)
RST_MARKUP = re.compile(r"``|`_|:[a-z:]+:`|::$|^\.\. \w", re.M)  # also checked in the Python docs' prose
WIKI_MARKUP = re.compile(r"\{\{|\}\}|\[\[|\]\]|\{\||\|\}|'''|^=+ .* =+$|thumb\||<ref", re.M)  # templates, links, tables


@pytest.fixture(scope="module")
def pairs() -> list[FaqPair]:
    return load_faq()


@pytest.fixture(scope="module")
def distractors() -> list[Document]:
    return load_distractors()


def cjk_fraction(text: str) -> float:
    chars = [c for c in text if not c.isspace()]
    return sum(bool(CJK.match(c)) for c in chars) / max(len(chars), 1)


def prose(text: str) -> str:
    """The text without its code blocks (lines indented by four spaces keep source code as is)."""
    return "\n".join(line for line in text.split("\n") if not line.startswith("    "))


def test_counts_per_source_and_language(pairs):
    counts = Counter((p.source, p.lang) for p in pairs)
    expected = {("python-faq", "en"): (150, 190), ("perlfaq", "en"): (280, 320),
                ("debian-faq", "en"): (100, 130), ("debian-faq", "zh"): (100, 130)}
    assert set(counts) == set(expected), counts
    for key, (low, high) in expected.items():
        assert low <= counts[key] <= high, f"{key}: {counts[key]} pairs, expected {low}..{high}"


def test_ids_unique_and_named_for_their_source(pairs):
    ids = [p.id for p in pairs]
    assert len(ids) == len(set(ids)), [k for k, v in Counter(ids).items() if v > 1]
    for p in pairs:
        pattern = {"python-faq": r"python-faq-[a-z]+-[a-z0-9-]+", "perlfaq": r"perlfaq-[1-9]-[a-z0-9-]+",
                   "debian-faq": rf"debian-faq-{p.lang}-[\w.-]+"}[p.source]
        assert re.fullmatch(pattern, p.id), p.id
        assert p.meta["licence"] and p.meta["file"] and "section" in p.meta, p.id


def test_questions_and_answers_are_clean_plain_text(pairs):
    for p in pairs:
        assert "?" in p.question or "？" in p.question, p.id
        assert len(p.answer) >= 40, (p.id, p.answer)
        assert p.answer == p.answer.strip() and "\n\n\n" not in p.answer, p.id
        assert not re.search(r"[ \t]+\n", p.answer), f"trailing spaces in {p.id}"
        found = PROSE_MARKUP.search(prose(p.answer)) or PROSE_MARKUP.search(p.question)
        if p.source == "python-faq":
            found = found or RST_MARKUP.search(prose(p.answer))
        assert found is None, f"markup {found and found.group()!r} left in {p.id}"
    with_code = sum("\n    " in p.answer for p in pairs if p.source in ("python-faq", "perlfaq"))
    assert with_code > 100, f"only {with_code} answers kept a code block"


def test_debian_pairs_are_parallel_and_chinese_is_chinese(pairs):
    debian = [p for p in pairs if p.source == "debian-faq"]
    by_pair = {}
    for p in debian:
        assert p.pair == "debian-faq-" + p.id.split("-", 3)[3], p.id
        by_pair.setdefault(p.pair, {})[p.lang] = p
    assert all(set(v) == {"en", "zh"} for v in by_pair.values()), [k for k, v in by_pair.items() if len(v) != 2]
    for langs in by_pair.values():
        en, zh = langs["en"], langs["zh"]
        assert en.meta["section"] == zh.meta["section"], en.id
        assert cjk_fraction(zh.question + zh.answer) > 0.2, zh.id  # code and package names are ASCII
        assert cjk_fraction(en.question + en.answer) == 0.0, en.id
    assert cjk_fraction("".join(p.answer for p in debian if p.lang == "zh")) > 0.5
    assert all(p.pair is None for p in pairs if p.source != "debian-faq")


def test_split_disjoint_covering_stable_and_stratified(pairs):
    dev, test = split_faq(pairs)
    assert {p.id for p in dev}.isdisjoint({p.id for p in test})
    assert sorted(p.id for p in dev + test) == sorted(p.id for p in pairs)
    assert [p.id for p in split_faq(pairs)[0]] == [p.id for p in dev]  # stable across calls
    assert [p.id for p in split_faq(list(reversed(pairs)))[0]] == [p.id for p in reversed(dev)]  # order-free
    dev_keys = {p.pair or p.id for p in dev}
    assert not dev_keys & {p.pair or p.id for p in test}, "a Debian question is split across dev and test"
    for source in FAQ_SOURCES:
        keys = {p.pair or p.id for p in pairs if p.source == source}
        assert abs(len(keys & dev_keys) - len(keys) / 2) <= 0.5, source
    small = {p.id for p in split_faq(pairs, dev_fraction=0.2)[0]}
    assert abs(len(small) / len(pairs) - 0.2) < 0.02
    assert {p.id for p in split_faq(pairs, seed=1)[0]} != {p.id for p in dev}


def test_split_of_a_subset_agrees_with_the_full_split(pairs):
    dev_ids = {p.id for p in split_faq(pairs)[0]}
    for subset in (load_faq(lang="zh"), load_faq(lang="en"), load_faq(sources=["perlfaq"])):
        assert {p.id for p in split_faq(subset)[0]} == dev_ids & {p.id for p in subset}


def test_filters(pairs):
    zh = load_faq(lang="zh")
    assert zh and all(p.lang == "zh" and p.source == "debian-faq" for p in zh)
    two = load_faq(sources=["python-faq", "perlfaq"])
    assert [p.id for p in two] == [p.id for p in pairs if p.source in ("python-faq", "perlfaq")]
    assert load_faq(sources=["python-faq"], lang="zh") == []


def test_faq_documents_index_the_answers(pairs):
    docs = faq_documents(pairs[:5])
    assert all(isinstance(d, Document) for d in docs)
    assert [(d.id, d.text) for d in docs] == [(p.id, p.answer) for p in pairs[:5]]
    assert [d.meta["question"] for d in docs] == [p.question for p in pairs[:5]]
    assert docs[0].meta["source"] == pairs[0].source and docs[0].meta["lang"] == pairs[0].lang


def test_distractors(distractors, pairs):
    counts = Counter((d.meta["source"], d.meta["lang"]) for d in distractors)
    assert set(counts) == {("wikipedia", "en"), ("python-docs", "en"), ("debian-reference", "en"),
                           ("debian-reference", "zh")}, counts
    assert counts[("wikipedia", "en")] >= 300 and counts[("python-docs", "en")] >= 300, counts
    assert counts[("debian-reference", "en")] >= 200 and counts[("debian-reference", "zh")] >= 150, counts
    assert cjk_fraction("".join(d.text for d in distractors if d.meta["lang"] == "zh")) > 0.3
    ids = [d.id for d in distractors]
    assert len(ids) == len(set(ids)) and not set(ids) & {p.id for p in pairs}
    assert len({d.meta["title"] for d in distractors if d.meta["source"] == "wikipedia"}) >= 100
    for d in distractors:
        assert 300 <= len(d.text) <= 6000, (d.id, len(d.text))
        assert set(d.meta) == {"source", "licence", "lang", "title"}, d.id
        assert d.text == d.text.rstrip().strip("\n") and "\n\n\n" not in d.text, d.id  # may open with code
        found = PROSE_MARKUP.search(prose(d.text))
        if d.meta["source"] == "python-docs":
            found = found or RST_MARKUP.search(prose(d.text))
        assert found is None, f"markup {found.group()!r} left in {d.id}"
        if d.meta["lang"] == "zh":  # commands, paths and package names are ASCII, so the fraction varies
            assert cjk_fraction(d.text) > 0.03, d.id
        else:
            assert cjk_fraction(d.text) < 0.01, d.id
        if d.meta["source"] == "wikipedia":
            assert WIKI_MARKUP.search(d.text) is None, f"wikitext {WIKI_MARKUP.search(d.text).group()!r} in {d.id}"


def test_distractor_filters(distractors):
    zh = load_distractors(lang="zh")
    assert [d.id for d in zh] == [d.id for d in distractors if d.meta["lang"] == "zh"]
    wiki = load_distractors(sources=["wikipedia"])
    assert wiki and all(d.meta["source"] == "wikipedia" for d in wiki)


def test_bundled_files_stay_small():
    size = (data_dir() / FAQ_FILE).stat().st_size + (data_dir() / DISTRACTORS_FILE).stat().st_size
    assert size <= 3_000_000, f"{size} bytes"


def test_data_dir_env_is_honoured(tmp_path, monkeypatch):
    shutil.copy(data_dir() / "corpora.json", tmp_path / "corpora.json")
    row = {"id": "perlfaq-1-x", "source": "perlfaq", "lang": "en", "question": "Why?", "answer": "Because " * 8,
           "pair": None, "meta": {"file": "f", "licence": "l", "section": "s"}}
    doc = {"id": "wiki-x-00", "text": "y" * 400, "meta": {"source": "wikipedia", "licence": "l", "lang": "en",
                                                          "title": "X"}}
    for name, record in ((FAQ_FILE, row), (DISTRACTORS_FILE, doc)):
        with gzip.open(tmp_path / name, "wt", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    assert [p.id for p in load_faq()] == ["perlfaq-1-x"]
    assert [d.id for d in load_distractors()] == ["wiki-x-00"]
    (tmp_path / FAQ_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="build_faq.py"):
        load_faq()


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: load_faq(sources=["stackoverflow"]), "python-faq"),
        (lambda: load_faq(sources="perlfaq"), "not a str"),
        (lambda: load_faq(lang="fr"), "'en', 'zh'"),
        (lambda: load_distractors(sources=["news"]), "wikipedia"),
        (lambda: load_distractors(lang="de"), "'en', 'zh'"),
        (lambda: split_faq([], dev_fraction=0.0), "dev_fraction"),
        (lambda: split_faq([], dev_fraction=1.5), "dev_fraction"),
        (lambda: split_faq(["a question"]), "FaqPair"),
    ],
)
def test_bad_arguments_raise(call, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        call()


def test_duplicate_pairs_raise(pairs):
    with pytest.raises(ValueError, match="duplicate"):
        split_faq([pairs[0], pairs[0]])
    assert DISTRACTOR_SOURCES == ("wikipedia", "python-docs", "debian-reference")
