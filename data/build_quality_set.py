"""Rebuild data/quality_segments.jsonl.gz: real "high" and "low" quality text segments (run by hand, not by tests).

    .venv/bin/python data/build_quality_set.py [--work DIR]   # needs apt-get and dpkg-deb; --work keeps downloads

Downloads (Debian bookworm, nothing is installed): `python3.11-doc` (Sphinx HTML + reST sources),
`debian-reference-en` (DocBook HTML), `postgresql-doc-15` (DocBook HTML), `sqlite3-doc` (the sqlite.org
site), `nodejs-doc` (Node.js API docs) and `apache2-doc` (the Apache httpd manual). Also reads the bundled
data/rag_distractors.jsonl.gz, data/austen.jsonl.gz and data/moby_dick.jsonl.gz.

Every segment is multi-line text as a text extractor would give it (paragraphs separated by a blank line,
list items one per line), of varied length (a log-uniform target of 150-3000 characters, cut at block
boundaries):

  * label "high": the main content of the HTML pages (low link density), Python reST sources turned into
    plain text, the Wikipedia / Python / Debian Reference passages of rag_distractors, a few book chapters;
  * label "low": the page furniture of the same HTML pages - navigation bars, breadcrumbs, sidebars,
    footers, language pickers, tables of contents -, whole index pages (Python genindex-*.html and
    py-modindex.html, PostgreSQL bookindex.html, Apache sitemap.html, ...), main-content stretches that are
    mostly links (link lists), and spam-like pages assembled from a page's own link texts and boilerplate
    lines (keyword-stuffed repeats, tag clouds).

Each HTML page gets one rendering style (headings as "# " lines or not, list items with "- " or bare),
for its high and its low segments alike, so that markup conventions carry no label.

Splits never share a source page: the Apache manual (a site template seen nowhere else) is test only;
every other page (or article, or book chapter) is hashed to train 70 % / dev 15 % / test 15 %.
Row: {"id", "text", "label", "source", "kind", "page", "split"}. Exact duplicate texts are dropped
(first occurrence kept, in a stable order), and output is byte-for-byte reproducible (gzip mtime 0).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import math
import random
import re
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import lxml.html

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_corpora import fetch_deb  # noqa: E402  (apt-get download + dpkg-deb -x)
from build_faq import PY_LIBRARY, rst_blocks, rst_sections, slug, write_jsonl  # noqa: E402  (the same reST converter)

DATA = Path(__file__).resolve().parent
OUT = "quality_segments.jsonl.gz"
PACKAGES = ["python3.11-doc", "debian-reference-en", "postgresql-doc-15", "sqlite3-doc", "nodejs-doc", "apache2-doc"]
TEST_SITE = "apache-httpd-docs"  # held out whole: its template never appears in train or dev
SEG_MIN, SEG_MAX = 150, 3000  # target segment length range in characters (log-uniform)
LOW_MIN_CHARS, LOW_MIN_WORDS = 30, 4  # shorter boilerplate (a lone "Next") says nothing either way
LINK_LOW, LINK_HIGH = 0.5, 0.2  # main-content segment: link density >= 0.5 -> "low" link list, <= 0.2 -> "high"
INDEX_LINKS = 0.3  # a segment of an index page is kept (as "low") when at least 30 % of its characters are links
PER_PAGE, PER_PAGE_INDEX = 4, 40  # at most this many segments of one kind from one HTML page (variety)
# Per-source caps on segments (before dedup) keep the file under ~3 MB and the classes roughly balanced.
CAPS = {"wikipedia": 700, "python-docs/rag": 500, "debian-reference/rag": 350, "books": 160}
HTML_HIGH_CAP, HTML_LOW_CAP = 600, 400  # per site (high), per site and kind of furniture (low)

SKIP_TAGS = {"script", "style", "noscript", "template", "svg", "head", "form", "select", "button", "iframe", "input"}
BLOCK_TAGS = {"p", "div", "section", "article", "main", "blockquote", "table", "tr", "ul", "ol", "dl", "dt", "dd",
              "figure", "figcaption", "li", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "body", "details",
              "summary", "nav", "header", "footer", "aside", "hr", "br", "caption", "center"}
LINE_TAGS = {"li", "tr", "dt", "dd", "br"}  # blocks that a list-like run puts on consecutive lines

# Per site: where the HTML lives, which elements are furniture (kind -> XPath), which pages are index pages.
SITES: dict[str, dict[str, Any]] = {
    "python-docs": {
        "package": "python3.11-doc", "dir": "usr/share/doc/python3.11/html", "glob": "**/*.html",
        "skip": r"^(_static|_sources|_downloads|search\.html|genindex-all\.html)",
        "index": r"^(genindex.*|py-modindex|contents)\.html$",
        "regions": {"nav": "//div[contains(@class,'related')] | //div[@class='mobile-nav']",
                    "sidebar": "//div[contains(@class,'sphinxsidebar')]", "footer": "//div[@class='footer']"},
        "main": "//div[@role='main']", "licence": "PSF-2.0",
    },
    "debian-reference": {
        "package": "debian-reference-en", "dir": "usr/share/debian-reference", "glob": "*.en.html",
        "skip": r"^$", "index": r"^index\.en\.html$",
        "regions": {"nav": "//div[@class='navheader'] | //div[@class='navfooter']", "toc": "//div[@class='toc']"},
        "main": None, "licence": "GPL-2+",  # main text comes from rag_distractors (the same sections)
    },
    "postgresql-docs": {
        "package": "postgresql-doc-15", "dir": "usr/share/doc/postgresql-doc-15/html", "glob": "*.html",
        "skip": r"^$", "index": r"^(bookindex|index)\.html$",
        "regions": {"nav": "//div[@class='navheader'] | //div[@class='navfooter']",
                    "toc": "//div[@class='toc'] | //div[@class='list-of-tables'] | //div[@class='list-of-figures']"},
        "main": "//body", "licence": "PostgreSQL",
    },
    "sqlite-docs": {
        "package": "sqlite3-doc", "dir": "usr/share/doc/sqlite3", "glob": "*.html",
        "skip": r"^$", "index": r"^(keyword_index|toc|sitemap|docs|chronology|doclist)\.html$",
        "regions": {"nav": "//div[contains(@class,'menu')] | //div[contains(@class,'tagline')]",
                    "toc": "//div[@class='fancy_toc']",
                    "footer": "//p[@align='center'][.//a[@id='mtimelink']]"},
        "main": "//body", "licence": "public domain",
    },
    "nodejs-docs": {
        "package": "nodejs-doc", "dir": "usr/share/doc/nodejs/api", "glob": "*.html",
        "skip": r"^all\.html$", "index": r"^index\.html$",
        "regions": {"sidebar": "//div[@id='column2']", "toc": "//div[@id='toc']",
                    "nav": "//header | //div[@id='gtoc'] | //div[contains(@class,'header-container')]"},
        "main": "//div[@id='apicontent']", "licence": "MIT",
    },
    "apache-httpd-docs": {
        "package": "apache2-doc", "dir": "usr/share/doc/apache2-doc/manual/en", "glob": "**/*.html",
        "skip": r"^$", "index": r"^(sitemap|mod/index|mod/quickreference|mod/directives|.*/index)\.html$",
        "regions": {"nav": "//div[@id='page-header'] | //div[@id='path'] | //div[@class='up']",
                    "lang": "//div[@class='toplang'] | //div[@class='bottomlang']",
                    "sidebar": "//div[@id='quickview']", "footer": "//div[@id='footer']",
                    "toc": "//ul[@id='toc']"},
        "main": "//div[@id='page-content']", "licence": "Apache-2.0",
    },
}
STYLES = ("markdown", "plain", "bare")  # "# " headings + "- " items / "- " items only / no markers at all


def h(key: str) -> int:
    return int.from_bytes(hashlib.sha1(key.encode()).digest()[:8], "big")


def split_of(source: str, page: str) -> str:
    if source == TEST_SITE:
        return "test"
    u = h(f"split:{source}:{page}") / 2**64
    return "train" if u < 0.70 else "dev" if u < 0.85 else "test"


def target_len(rng: random.Random) -> int:
    return int(math.exp(rng.uniform(math.log(SEG_MIN), math.log(SEG_MAX))))


# ----------------------------------------------------------------------------- HTML -> blocks


class Blocks:
    """Walk an element into text blocks [(text, link_chars, kind)] the way a text extractor lays them out."""

    def __init__(self, style: str) -> None:
        self.style = style
        self.out: list[tuple[str, int, str]] = []
        self.buf: list[str] = []
        self.link = 0
        self.kind = "p"

    def flush(self) -> None:
        text = "".join(self.buf)
        if self.kind != "pre":
            text = re.sub(r"[ \t\r\n\xa0]+", " ", text).strip()
            text = re.sub(r"^(\| )+|( \|)+$", "", text).strip()
        else:
            text = text.strip("\n").rstrip()
        if re.search(r"\w", text) and text.strip("-# "):
            self.out.append((text, self.link, self.kind))
        self.buf, self.link, self.kind = [], 0, "p"

    def add(self, text: str | None, in_link: bool) -> None:
        if text:
            self.buf.append(text)
            if in_link:
                self.link += len(text.strip())

    def walk(self, el: Any, in_link: bool = False, in_pre: bool = False, skip: frozenset = frozenset()) -> None:
        tag = el.tag if isinstance(el.tag, str) else ""
        if not tag or tag in SKIP_TAGS or el in skip:  # comments, scripts, furniture (their tails are the parent's)
            return
        block = tag in BLOCK_TAGS
        if block:
            self.flush()
        if tag in ("h1", "h2", "h3", "h4", "h5", "h6"):
            self.kind = "h"
            if self.style == "markdown":
                self.buf.append("#" * int(tag[1]) + " ")
        elif tag == "li":
            self.kind = "li"
            if self.style != "bare":
                self.buf.append("- ")
        elif tag in LINE_TAGS:
            self.kind = "li"
        elif tag == "pre":
            self.kind, in_pre = "pre", True
        elif tag in ("td", "th"):
            self.buf.append(" | ")
        in_link = in_link or tag == "a"
        self.add(el.text, in_link)
        for child in el:
            self.walk(child, in_link, in_pre, skip)
            if child.tail:
                self.add(child.tail, in_link)
        if block:
            self.flush()
            if in_pre:
                self.kind = "pre"


def render(el: Any, style: str, skip: frozenset = frozenset()) -> list[tuple[str, int, str]]:
    b = Blocks(style)
    b.walk(el, skip=skip)
    b.flush()
    return b.out


def pack(blocks: list[tuple[str, int, str]], rng: random.Random, cap: int | None = None) -> list[tuple[str, float]]:
    """Consecutive blocks -> segments of a random target length: [(text, link density)]."""
    segs: list[tuple[str, float]] = []
    cur: list[tuple[str, int, str]] = []
    goal = cap or target_len(rng)

    def emit() -> None:
        parts = []
        for i, (t, _, k) in enumerate(cur):
            sep = "\n" if i and k == "li" and cur[i - 1][2] == "li" else "\n\n"
            parts.append((sep if i else "") + t)
        text = "".join(parts)
        segs.append((text, sum(c[1] for c in cur) / max(len(text), 1)))

    size = 0
    for blk in blocks:
        cur.append(blk)
        size += len(blk[0]) + 2
        if size >= goal:
            emit()
            cur, size, goal = [], 0, cap or target_len(rng)
    if cur:
        emit()
    return segs


# ----------------------------------------------------------------------------- sources


def html_pages(site: str, cfg: dict[str, Any], root: Path) -> list[dict[str, Any]]:
    base = root / cfg["dir"]
    rows: list[dict[str, Any]] = []
    for path in sorted(base.glob(cfg["glob"])):
        page = path.relative_to(base).as_posix()
        if re.match(cfg["skip"], page):
            continue
        raw = path.read_bytes()
        if not raw.strip():
            continue
        doc = lxml.html.document_fromstring(raw)
        rng = random.Random(h(f"{site}:{page}"))
        style = STYLES[h(f"style:{site}:{page}") % len(STYLES)]
        row = {"source": site, "page": page}
        furniture: set[Any] = set()
        for kind, xp in cfg["regions"].items():
            for el in doc.xpath(xp):
                if any(a in furniture for a in el.iterancestors()):
                    continue
                furniture.add(el)
                for text, _ in pack(render(el, style), rng, cap=SEG_MAX):
                    rows.append({**row, "text": text, "label": "low", "kind": kind})
        mains = doc.xpath(cfg["main"]) if cfg["main"] else []
        if re.match(cfg["index"], page):
            for el in mains[:1] or [doc.body]:
                for text, density in pack(render(el, style, frozenset(furniture)), rng):
                    if density >= INDEX_LINKS:  # an index page's prose (a title page's abstract) is not a list
                        rows.append({**row, "text": text, "label": "low", "kind": "index"})
            continue
        for el in mains[:1]:
            for text, density in pack(render(el, style, frozenset(furniture)), rng):
                if density >= LINK_LOW:
                    rows.append({**row, "text": text, "label": "low", "kind": "link-list"})
                elif density <= LINK_HIGH:
                    rows.append({**row, "text": text, "label": "high", "kind": "main"})
        rows += spam(row, doc, rng)
    return rows


def spam(row: dict[str, Any], doc: Any, rng: random.Random) -> list[dict[str, Any]]:
    """Spam-like pages from a page's own strings: keyword-stuffed lines and tag clouds of its link texts."""
    links = list(dict.fromkeys(re.sub(r"\s+", " ", a.text_content()).strip() for a in doc.iter("a")))
    links = [t for t in links if 2 < len(t) < 60 and re.search(r"[A-Za-z]{3}", t)]
    title = re.sub(r"\s+", " ", doc.findtext(".//title") or "").strip()
    if len(links) < 4 or rng.random() > 0.35:  # about one page in three gets a spam twin
        return []
    pool = rng.sample(links, min(len(links), rng.randint(3, 6))) + ([title] if title else [])
    if rng.random() < 0.5:  # keyword stuffing: the same few phrases over and over
        sep = rng.choice([" ", " | ", ", ", " - ", " :: "])
        lines = [sep.join(rng.choice(pool) for _ in range(rng.randint(3, 9))) for _ in range(rng.randint(4, 25))]
        return [{**row, "text": "\n".join(lines), "label": "low", "kind": "spam"}]
    cloud = rng.sample(links, min(len(links), rng.randint(15, 60)))
    sep = rng.choice([", ", " ", " | ", " · "])
    text = (title + "\n\n" if title and rng.random() < 0.5 else "") + sep.join(cloud)
    return [{**row, "text": text, "label": "low", "kind": "spam"}]


def rst_pages(root: Path, rag_pages: set[str]) -> list[dict[str, Any]]:
    """Python reST sources as plain text, for the pages whose HTML main text is not used."""
    base = root / SITES["python-docs"]["dir"] / "_sources"
    rows = []
    for path in sorted(base.glob("**/*.rst.txt")):
        page = path.relative_to(base).as_posix().removesuffix(".rst.txt") + ".html"
        if page in rag_pages or not use_rst(page):
            continue
        rng = random.Random(h(f"rst:{page}"))
        paras: list[str] = []
        for s in rst_sections(path.read_text(encoding="utf-8")):
            paras += ([s["title"]] if s["title"] else []) + rst_blocks(s["body"])
        blocks = [(p, 0, "p") for p in paras]
        for text, _ in pack(blocks, rng):
            rows.append({"source": "python-docs", "page": page, "text": text, "label": "high", "kind": "rst"})
    return rows


def use_rst(page: str) -> bool:
    """Half the Python pages (by hash) give their high text from the reST source, half from the HTML."""
    return h(f"rst?{page}") % 2 == 0


def text_docs(rows: list[dict[str, Any]], source: str, kind: str, page_of: Any) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        rng = random.Random(h(f"{kind}:{r['id']}"))
        sep = "\n\n" if "\n\n" in r["text"] else "\n"  # the books have one paragraph per line
        blocks = [(p, 0, "p") for p in r["text"].split(sep) if p.strip()]
        for text, _ in pack(blocks, rng)[:1]:  # one segment per document: variety over volume
            out.append({"source": source, "page": page_of(r), "text": text, "label": "high", "kind": kind})
    return out


def read_jsonl(name: str) -> list[dict[str, Any]]:
    with gzip.open(DATA / name, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def capped(rows: list[dict[str, Any]], cap: int, key: str, per_page: int = 1 << 30) -> list[dict[str, Any]]:
    """A pseudo-random (hash-ordered) subset of at most ``cap`` rows, at most ``per_page`` per page."""
    seen: Counter[str] = Counter()
    out = []
    for r in sorted(rows, key=lambda r: h(f"{key}:{r['page']}:{r['text'][:200]}")):
        seen[r["page"]] += 1
        if seen[r["page"]] <= per_page and len(out) < cap:
            out.append(r)
    return out


# ----------------------------------------------------------------------------- main


def build(work: Path) -> list[dict[str, Any]]:
    roots = {}
    for pkg in PACKAGES:
        roots[pkg] = work / pkg if (work / pkg).is_dir() else fetch_deb(pkg, work)
    rag = read_jsonl("rag_distractors.jsonl.gz")
    rows: list[dict[str, Any]] = []
    wiki = [r for r in rag if r["meta"]["source"] == "wikipedia"]
    rows += capped(text_docs(wiki, "wikipedia", "wiki", lambda r: r["meta"]["title"]), CAPS["wikipedia"], "wiki")
    pylib = [r for r in rag if r["meta"]["source"] == "python-docs"]
    py_page = {slug(p): f"library/{p}.html" for p in PY_LIBRARY}  # rag ids hold slug(page); key = the HTML page
    pyrows = text_docs(pylib, "python-docs", "rag", lambda r: py_page[re.sub(r"-\d\d-\d\d$", "", r["id"][6:])])
    rows += capped(pyrows, CAPS["python-docs/rag"], "pylib")
    rag_pages = {r["page"] for r in pyrows}
    deb = [r for r in rag if r["meta"]["source"] == "debian-reference" and r["meta"]["lang"] == "en"]
    debrows = text_docs(deb, "debian-reference", "rag",
                        lambda r: re.match(r"debref-en-(\w+?)-", r["id"])[1] + ".en.html")
    rows += capped(debrows, CAPS["debian-reference/rag"], "debref")
    bookrows = []
    for src, name in (("austen", "austen.jsonl.gz"), ("moby-dick", "moby_dick.jsonl.gz")):
        bookrows += text_docs(read_jsonl(name), src, "book", lambda r: r["id"])
    rows += capped(bookrows, CAPS["books"], "books")

    for site, cfg in SITES.items():
        site_rows = html_pages(site, cfg, roots[cfg["package"]])
        if site == "python-docs":  # high text of a page comes from one rendering only (no near-duplicates)
            site_rows = [r for r in site_rows if r["label"] == "low" or (r["page"] not in rag_pages
                                                                          and not use_rst(r["page"]))]
        for kind in sorted({r["kind"] for r in site_rows}):
            group = [r for r in site_rows if r["kind"] == kind]
            cap = HTML_HIGH_CAP if group[0]["label"] == "high" else HTML_LOW_CAP
            rows += capped(group, cap, f"{site}:{kind}", PER_PAGE_INDEX if kind == "index" else PER_PAGE)
    rows += capped(rst_pages(roots["python3.11-doc"], rag_pages), HTML_HIGH_CAP, "rst", PER_PAGE)

    out, seen = [], set()
    for r in rows:
        text = r["text"].strip()
        if text in seen or (r["label"] == "low" and (len(text) < LOW_MIN_CHARS or len(text.split()) < LOW_MIN_WORDS)):
            continue
        if r["label"] == "high" and len(text) < SEG_MIN // 2:
            continue
        seen.add(text)
        out.append(r | {"text": text, "split": split_of(r["source"], r["page"])})
    for i, r in enumerate(out):
        r["id"] = f"q{i:05d}"
    return [{k: r[k] for k in ("id", "text", "label", "source", "kind", "page", "split")} for r in out]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, help="download/extract here and keep it (default: a temp dir)")
    args = ap.parse_args()
    if args.work:
        args.work.mkdir(parents=True, exist_ok=True)
        rows = build(args.work)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            rows = build(Path(tmp))
    size = write_jsonl(OUT, rows)
    counts = Counter((r["split"], r["label"]) for r in rows)
    kinds = Counter((r["source"], r["kind"], r["label"]) for r in rows)
    for k in sorted(kinds):
        print(f"{k[0]:18s} {k[1]:10s} {k[2]:4s} {kinds[k]:5d}")
    print({f"{s}/{lab}": counts[s, lab] for s, lab in sorted(counts)})
    print(f"{OUT}: {len(rows)} segments, {sum(len(r['text']) for r in rows)} chars, {size} bytes")


if __name__ == "__main__":
    main()
