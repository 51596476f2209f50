"""A crawl the way Common Crawl ships one: every document an HTTP response in a WARC file, and a first pipeline
stage that turns pages back into text.

:func:`document_page` serves a text document as a page of one site template (a navigation bar and a footer
around the text, the first line as its heading, paragraphs as ``<p>``, verse lines joined by ``<br>``) and
a binary one as ``application/octet-stream``; a document that is a page already (``meta["format"] ==
"html"``, e.g. the labelled pages of :func:`web_page_documents`) is served as it is. :func:`write_crawl` and
:func:`read_crawl` take documents through a ``.warc.gz`` and back, keeping each one's id and metadata by its
URL; :func:`extract_stage` is the pipeline stage that extracts the main text
(:func:`llmbook.data.extract.extract_main_text`) and drops what has none, under the extractor's reason.
"""

from __future__ import annotations

import hashlib
import html
from collections.abc import Iterable, Mapping
from pathlib import Path
from urllib.parse import quote

from llmbook.data.extract import ExtractConfig, extract_main_text
from llmbook.data.extract_eval import load_web_pages
from llmbook.data.pipeline import Doc, Stage
from llmbook.data.warc import HTML_TYPES, WarcReadReport, read_warc, write_warc

SITE_LINKS = ("Home", "Books", "Poetry", "Authors", "Reading lists", "About", "Contact")
VERSE_LINE = 60  # characters; consecutive lines shorter than this are verse (or a title block), kept as one <p>


def _paragraphs(text: str) -> list[list[str]]:
    """Lines grouped into paragraphs: a long line alone, a run of short lines together."""
    groups: list[list[str]] = []
    short_run = False
    for line in text.split("\n"):
        short = len(line) < VERSE_LINE
        if short and short_run:
            groups[-1].append(line)
        else:
            groups.append([line])
        short_run = short
    return groups


def page_html(title: str, text: str) -> str:
    """``text`` as the body of a page of the crawl's one site template: its first line the ``<h1>`` (a
    chapter's heading, a poem's title), the rest paragraphs."""
    nav = " | ".join(f'<a href="/{quote(name.lower())}">{name}</a>' for name in SITE_LINKS)
    heading, _, rest = text.partition("\n")
    body = f"<h1>{html.escape(heading)}</h1>\n" + "\n".join(
        "<p>" + "<br>".join(html.escape(line) for line in group) + "</p>" for group in _paragraphs(rest) if rest)
    return (f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title></head>\n'
            f"<body><header><nav>{nav}</nav></header>\n<main><article>\n{body}\n</article></main>\n"
            '<footer><p>&copy; 2026 Example Reader. <a href="/privacy">Privacy</a> | '
            '<a href="/terms">Terms</a></p></footer></body></html>\n')


def document_page(doc: Doc) -> tuple[bytes, dict[str, str]]:
    """The HTTP body and headers a crawler would have fetched for ``doc``."""
    text = doc["text"]
    if isinstance(text, bytes | bytearray):
        return bytes(text), {"Content-Type": "application/octet-stream"}
    if not isinstance(text, str):
        raise ValueError(f"document {doc.get('id')!r}: text must be str or bytes, got {type(text).__name__}")
    if doc.get("meta", {}).get("format") == "html":
        return text.encode("utf-8"), {"Content-Type": "text/html; charset=utf-8"}
    title = text.split("\n", 1)[0][:80]
    return page_html(title, text).encode("utf-8"), {"Content-Type": "text/html; charset=utf-8"}


def document_url(doc: Doc) -> str:
    """A URL unique to the document: the source as the host, the id as the path."""
    meta = doc.get("meta", {})
    if meta.get("url"):
        return meta["url"]
    return f"https://{quote(str(meta.get('source', 'web')))}.crawl.example/{quote(str(doc['id']), safe='')}"


def web_page_documents(n: int, seed: int = 0, path: str | Path | None = None) -> list[Doc]:
    """``n`` real pages of the labelled set (all with ``n < 0``), in an order seeded by ``seed``, as documents
    whose text is the page's HTML (``meta["format"] == "html"``)."""
    pages = load_web_pages(path=path)
    pages.sort(key=lambda p: hashlib.sha1(f"{seed}:{p.id}".encode()).hexdigest())
    pages = pages if n < 0 else pages[:n]
    return [{"id": p.id, "text": p.html,
             "meta": {"format": "html", "url": p.url, "source": p.source, "lang": "en", "licence": p.licence}}
            for p in pages]


def write_crawl(path: str | Path, docs: Iterable[Doc]) -> int:
    """Write ``docs`` as response records of a gzipped WARC file (see :func:`document_page`); returns the count."""
    pages = [(document_url(d), *document_page(d)) for d in docs]
    urls = [url for url, *_ in pages]
    if len(set(urls)) != len(urls):
        raise ValueError("two documents have the same URL: read_crawl could not tell them apart")
    return write_warc(path, pages, warcinfo={"software": "llmbook", "description": "a planted crawl"})


def read_crawl(path: str | Path, docs_by_url: Mapping[str, Doc]) -> tuple[list[Doc], WarcReadReport]:
    """The responses of a crawl file as documents (text = the body's bytes), with the id and metadata of the
    document each URL was written for (see :func:`write_crawl`) plus ``content_type`` and ``charset``."""
    report = WarcReadReport()
    out = []
    for page in read_warc(path, report, html_only=False):
        doc = docs_by_url.get(page.url)
        if doc is None:
            raise ValueError(f"the crawl holds {page.url!r}, which no given document has as its URL")
        meta = {**doc.get("meta", {}), "url": page.url, "content_type": page.content_type, "charset": page.charset}
        out.append({"id": doc["id"], "text": page.body, "meta": meta})
    return out, report


def extract_stage(config: ExtractConfig | None = None, name: str = "extract") -> Stage:
    """A pipeline stage: the main text of each fetched page; meta gains ``title``.

    A document with a ``content_type`` in its meta came from a crawl: a non-HTML one is dropped ("not_html"),
    a page without main text under the extractor's reason (``empty``, ``binary``, ``too_large``,
    ``all_boilerplate``, ``no_text``). A document without one is text already and passes unchanged.
    """

    def fn(doc: Doc) -> Doc | str:
        meta = doc.get("meta", {})
        content_type = meta.get("content_type")
        if content_type is None:
            return doc
        if content_type.split(";")[0].strip().lower() not in HTML_TYPES:
            return "not_html"
        page = extract_main_text(doc["text"], config, declared_charset=meta.get("charset"))
        if page.reason != "ok":
            return page.reason
        return {**doc, "text": page.text, "meta": {**meta, "title": page.title}}

    return Stage(name=name, fn=fn)
