"""A crawl through a WARC file: documents served as pages, read back with their metadata, and the extraction
stage that turns them into text again (checked against trafilatura on the same pages)."""

from __future__ import annotations

import gzip

import pytest

from llmbook.data.crawl import (
    document_page,
    document_url,
    extract_stage,
    page_html,
    read_crawl,
    web_page_documents,
    write_crawl,
)
from llmbook.data.extract_eval import trafilatura_extract
from llmbook.data.pipeline import run_pipeline

NOVEL = ("CHAPTER I\nEmma Woodhouse, handsome, clever, and rich, with a comfortable home and happy disposition, "
         "seemed to unite some of the best blessings of existence.\nShe was the youngest of the two daughters of "
         "a most affectionate, indulgent father; and had, in consequence of her sister's marriage, been mistress "
         "of his house from a very early period.")
POEM = "静夜思\n李白\n床前明月光，\n疑是地上霜。\n举头望明月，\n低头思故乡。"
DOCS = [
    {"id": "austen-emma-ch001", "text": NOVEL, "meta": {"source": "austen", "dirt": "clean", "lang": "en"}},
    {"id": "zh-tang-00001+1", "text": POEM, "meta": {"source": "tang_song_poetry", "dirt": "clean", "lang": "zh"}},
    {"id": "binary-0", "text": b"\x00\x01\x02PK\x03\x04" * 50, "meta": {"source": "web", "dirt": "binary"}},
    {"id": "links-0", "text": "<html><body>" + " ".join(f'<a href="/{i}">link {i}</a>' for i in range(40))
     + "</body></html>", "meta": {"source": "web", "dirt": "menu", "format": "html"}},
]


@pytest.fixture
def crawled(tmp_path):
    path = tmp_path / "crawl.warc.gz"
    assert write_crawl(path, DOCS) == len(DOCS)
    docs, report = read_crawl(path, {document_url(d): d for d in DOCS})
    return path, docs, report


def test_round_trip_keeps_ids_metadata_and_bodies(crawled) -> None:
    path, docs, report = crawled
    assert gzip.open(path).read(7) == b"WARC/1."
    assert [d["id"] for d in docs] == [d["id"] for d in DOCS]
    assert report.pages == len(DOCS) and dict(report.skipped) == {"not_response": 1}  # the warcinfo record
    for sent, got in zip(DOCS, docs, strict=True):
        assert got["text"] == document_page(sent)[0]
        assert got["meta"]["dirt"] == sent["meta"]["dirt"] and got["meta"]["url"] == document_url(sent)
    assert docs[2]["meta"]["content_type"] == "application/octet-stream"
    assert docs[0]["meta"]["charset"] == "utf-8"


def test_extract_stage_gives_back_the_text_and_drops_what_has_none(crawled) -> None:
    _, docs, _ = crawled
    kept, report = run_pipeline(docs, [extract_stage()])
    by_id = {d["id"]: d["text"] for d in kept}
    # the site's navigation and footer are gone; paragraphs come back one block each, verse as lines
    # (the first line is the page's heading: a "# " line of the extractor's light Markdown)
    assert by_id["austen-emma-ch001"] == "# " + NOVEL.replace("\n", "\n\n")
    assert by_id["zh-tang-00001+1"] == "# " + POEM.replace("\n", "\n\n", 1)
    assert report.dropped == {"binary-0": "extract: not_html", "links-0": "extract: all_boilerplate"}
    # documents that did not come from a crawl (no content type) are text already: passed unchanged
    plain = {"id": "t", "text": "<b>not markup</b>", "meta": {}}
    assert extract_stage().fn(plain) is plain


def test_trafilatura_reads_the_served_pages_as_we_do() -> None:
    for doc in DOCS[:2]:
        markup = document_page(doc)[0].decode()
        ours = extract_stage().fn({**doc, "text": markup, "meta": {"content_type": "text/html"}})["text"]
        reference = trafilatura_extract(markup).split("\n")
        # the same lines: every one we keep, trafilatura keeps (it also keeps the poem page's navigation bar)
        assert [line.removeprefix("# ") for line in ours.split("\n") if line] == [
            line for line in reference if line in doc["text"].split("\n")]
        assert "Privacy" not in ours and "Reading lists" not in ours


def test_web_pages_are_seeded_samples_of_the_labelled_set() -> None:
    first, again, other = web_page_documents(5, seed=0), web_page_documents(5, seed=0), web_page_documents(5, seed=1)
    assert [d["id"] for d in first] == [d["id"] for d in again] != [d["id"] for d in other]
    assert all(d["meta"]["format"] == "html" and d["text"].lstrip().lower().startswith("<") for d in first)
    assert len(web_page_documents(-1)) == 139


def test_bad_input_is_named(tmp_path) -> None:
    with pytest.raises(ValueError, match="text must be str or bytes"):
        document_page({"id": "x", "text": 3, "meta": {}})
    path = tmp_path / "c.warc.gz"
    write_crawl(path, DOCS[:1])
    with pytest.raises(ValueError, match="no given document"):
        read_crawl(path, {})
    with pytest.raises(ValueError, match="same URL"):
        write_crawl(path, [DOCS[0], DOCS[0]])
    assert "&lt;b&gt;" in page_html("t", "<b>")  # text is escaped, never markup


def test_documentation_pages_are_the_language_of_their_prose() -> None:
    # the chapter's en/zh/code model called most Python-docs pages "code" when it read a page whole;
    # labelled paragraph by paragraph with the characters voting, a page is its prose's language, and
    # planted source files stay code
    from llmbook.book import profiles
    from llmbook.chain import corpus as chain
    from llmbook.data.corpus_build import train_filters
    from llmbook.data.extract import extract_main_text
    from llmbook.data.langid import document_language
    from llmbook.data.raw_corpus import make_raw_corpus

    cfg = profiles.resolve("pretraining_data", "smoke")
    raw = make_raw_corpus(chain.raw_config(cfg))
    model = train_filters(raw, cfg.classifier_train_docs, cfg.seed).langid
    pages = [extract_main_text(d["text"]).text for d in web_page_documents(40)]
    whole = model.predict(pages, fast_path=True, fast_scripts=("zh",))
    voted = [document_language(model, page, fast_scripts=("zh",)) for page in pages]
    assert whole.count("code") >= 10 and voted.count("en") >= 36, (whole.count("code"), voted.count("en"))
    code = [d["text"] for d in raw.docs if d["meta"]["dirt"] == "code"]
    assert code and all(document_language(model, t, fast_scripts=("zh",)) == "code" for t in code)
