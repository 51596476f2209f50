"""Rebuild data/web_pages.jsonl.gz, the labelled set for HTML main-text extraction (run by hand, not by tests).

    .venv/bin/python data/build_web_pages.py      # needs apt-get and dpkg-deb on PATH

Downloads (nothing is installed):
  * Debian bookworm `python3.11-doc` 3.11.2-6+deb12u9: the Python 3.11 documentation as Sphinx HTML
    (`html/<section>/<page>.html`) with the reST source of every page (`html/_sources/<section>/<page>.rst.txt`).
    Licence PSF-2.0.
  * Debian bookworm `debian-reference-en` 2.100: the Debian Reference as DocBook HTML, one file per chapter
    (`usr/share/debian-reference/chNN.en.html`), and the same book as plain text (`debian-reference.en.txt.gz`).
    Licence GPL-2+.

Writes data/web_pages.jsonl.gz, one page per line:
    {"id", "url", "html", "gold", "meta": {"section", "split", "source", "licence", "package"}}
  * python-docs pages: `gold` is the page's reST source turned into plain text by the converter of
    build_faq.py (directives, roles like :func:`x` -> x(), link targets, `.. index::` blocks and code-block
    markers removed; code kept as indented lines; the section titles kept). So the gold never came from the
    HTML: it is what the page's author wrote, and an extractor is scored on how much of it it recovers.
  * debian-reference chapters: `gold` is the chapter cut out of the book's own text rendering (from its
    "Chapter N." line to the next one) with the chapter's table of contents removed. Always split "test":
    a second site's template, so a test score is not one template's.
  * split: python pages are "dev" or "test" by the parity of sha1(id) (about half each), so the two splits
    never share a page; tune on dev, report test.
Output is deterministic (stable order, gzip mtime 0): same packages, same bytes.
"""

from __future__ import annotations

import gzip
import hashlib
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_corpora import fetch_deb  # noqa: E402  (same download helper as the corpora)
from build_faq import deb_version, join_paragraphs, rst_blocks, rst_sections, write_jsonl  # noqa: E402

DATA = Path(__file__).resolve().parent
OUT = "web_pages.jsonl.gz"
PY_URL = "https://docs.python.org/3.11/"
DEBREF_URL = "https://www.debian.org/doc/manuals/debian-reference/"
LICENCE = {"python-docs": "PSF-2.0", "debian-reference": "GPL-2+"}
# Sections and how many pages of each: a mix of reference pages (many cross-reference links, signatures)
# and prose (tutorial, howto, faq). Pages are taken evenly spread over the sorted file names.
SECTIONS = {"library": 80, "tutorial": 16, "howto": 12, "faq": 8, "reference": 8, "whatsnew": 5, "using": 6,
            "extending": 5}
MAX_HTML = 120_000  # bytes; bigger pages would blow the ~3 MB budget of the bundle
MAX_HTML_WHATSNEW = 260_000  # what's-new pages are all long; the shortest few are taken
DEBREF_CHAPTERS = ["pr01", "ch03", "ch04", "ch05", "ch08"]  # the shorter chapters (< 100 KB of HTML each)
MIN_GOLD = 200  # characters; stub pages (a title and a toctree) say nothing about extraction


def split_of(page_id: str) -> str:
    return "test" if hashlib.sha1(page_id.encode()).digest()[-1] % 2 else "dev"


def rst_to_text(text: str) -> str:
    """A reST file as plain text: each section's title line, then its paragraphs (code as indented lines)."""
    paras: list[str] = []
    for s in rst_sections(text):
        if s["title"]:
            paras.append(s["title"])
        paras += rst_blocks(s["body"])
    return join_paragraphs(paras)


def spread(items: list[Any], k: int) -> list[Any]:
    """``k`` items evenly spread over ``items`` (all of them when there are fewer)."""
    if len(items) <= k:
        return items
    return [items[round(i * (len(items) - 1) / (k - 1))] for i in range(k)] if k > 1 else items[:1]


def python_pages(root: Path, package: str) -> list[dict[str, Any]]:
    html_root = root / "usr/share/doc/python3.11/html"
    rows: list[dict[str, Any]] = []
    for section, k in SECTIONS.items():
        limit = MAX_HTML_WHATSNEW if section == "whatsnew" else MAX_HTML
        candidates = []
        for f in sorted((html_root / section).glob("*.html")):
            src = html_root / "_sources" / section / (f.stem + ".rst.txt")
            if f.stem in ("index", "changelog") or not src.is_file() or f.stat().st_size > limit:
                continue
            gold = rst_to_text(src.read_text(encoding="utf-8"))
            if len(gold) >= MIN_GOLD:
                candidates.append((f, gold))
        if section == "whatsnew":
            candidates = sorted(candidates, key=lambda c: c[0].stat().st_size)[:k]
        for f, gold in spread(candidates, k):
            page_id = f"python-{section}-{f.stem}"
            rows.append({"id": page_id, "url": f"{PY_URL}{section}/{f.name}",
                         "html": f.read_text(encoding="utf-8"), "gold": gold,
                         "meta": {"section": section, "split": split_of(page_id), "source": "python-docs",
                                  "licence": LICENCE["python-docs"], "package": package}})
    return rows


def debref_chapters(text: str) -> dict[str, str]:
    """The book's text rendering cut into chapters: {"pr01": ..., "ch03": ...}; each chapter's TOC removed."""
    lines = text.replace("\xa0", " ").split("\n")  # the rendering uses no-break spaces in headings and indents
    starts: list[tuple[int, str]] = []
    seen_preface = False
    for i, line in enumerate(lines):
        if line == "Preface":
            if seen_preface:  # the first "Preface" is the book's table of contents
                starts.append((i, "pr01"))
            seen_preface = True
        elif m := re.match(r"Chapter (\d+)\. ", line):
            starts.append((i, f"ch{int(m[1]):02d}"))
        elif line.startswith("Appendix A. "):
            starts.append((i, "apa"))
    out: dict[str, str] = {}
    for (start, name), (end, _) in zip(starts, starts[1:] + [(len(lines), "")], strict=True):
        body = "\n".join(lines[start:end])
        # "Table of Contents" then the numbered entries, up to the first line that is not one
        body = re.sub(r"\nTable of Contents\n\n(?:(?: *[\d.]+ .*| *)\n)*", "\n\n", body, count=1)
        out[name] = body.strip()
    return out


def debian_pages(root: Path, package: str) -> list[dict[str, Any]]:
    d = root / "usr/share/debian-reference"
    chapters = debref_chapters(gzip.decompress((d / "debian-reference.en.txt.gz").read_bytes()).decode("utf-8"))
    rows = []
    for name in DEBREF_CHAPTERS:
        rows.append({"id": f"debref-{name}", "url": f"{DEBREF_URL}{name}.en.html",
                     "html": (d / f"{name}.en.html").read_text(encoding="utf-8"), "gold": chapters[name],
                     "meta": {"section": name, "split": "test", "source": "debian-reference",
                              "licence": LICENCE["debian-reference"], "package": package}})
    return rows


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        roots = {pkg: fetch_deb(pkg, work) for pkg in ("python3.11-doc", "debian-reference-en")}
        versions = {pkg: deb_version(root, pkg) for pkg, root in roots.items()}
        rows = (python_pages(roots["python3.11-doc"], f"python3.11-doc {versions['python3.11-doc']}")
                + debian_pages(roots["debian-reference-en"], f"debian-reference-en {versions['debian-reference-en']}"))
    size = write_jsonl(OUT, rows)
    for key in sorted({(r["meta"]["source"], r["meta"]["split"]) for r in rows}):
        sel = [r for r in rows if (r["meta"]["source"], r["meta"]["split"]) == key]
        print(f"{key[0]:16s} {key[1]:4s}: {len(sel):3d} pages, html {sum(len(r['html']) for r in sel):9d} chars, "
              f"gold {sum(len(r['gold']) for r in sel):8d} chars")
    print(f"{OUT}: {len(rows)} pages, {size} B; versions: {versions}")


if __name__ == "__main__":
    main()
