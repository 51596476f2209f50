"""HTML -> readable text: the main content of a page, with its structure kept as light Markdown.

A page's text is what a reader sees, not its markup: scripts, styles, forms and the furniture around
the content (``nav``, ``header``, ``footer``, ``aside``) are dropped; headings become ``#`` lines so a
chunker can split at them; list items become ``- `` lines; ``pre`` blocks keep their line breaks;
every other block element ends a paragraph. Built on the standard library's tolerant
:class:`html.parser.HTMLParser`, so malformed pages (unclosed tags, stray ``</div>``) still give text.
"""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser

# Elements whose whole subtree is not content.
SKIPPED = frozenset({"script", "style", "noscript", "template", "svg", "nav", "header", "footer", "aside", "form",
                     "button", "select", "iframe", "head"})
# Elements that start and end a paragraph.
BLOCKS = frozenset({"p", "div", "section", "article", "main", "blockquote", "table", "tr", "ul", "ol", "dl", "dt", "dd",
                    "figure", "figcaption", "br", "hr", "li", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "title",
                    "body", "details", "summary"})
VOID = frozenset({"br", "hr", "img", "input", "meta", "link", "area", "base", "col", "embed", "source", "wbr"})


class _TextCollector(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip_depth = 0  # > 0 inside a skipped subtree
        self.pre_depth = 0
        self.title = ""
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":  # inside the skipped <head>, but kept
            self._in_title = True
        if tag in SKIPPED and tag not in VOID:
            self.skip_depth += 1
        if self.skip_depth:
            return
        if tag in BLOCKS:
            self.parts.append("\n\n" if tag not in ("br", "li", "tr", "dt", "dd") else "\n")
        if tag in ("h1", "h2", "h3", "h4", "h5", "h6"):
            self.parts.append("#" * int(tag[1]) + " ")
        elif tag == "li":
            self.parts.append("- ")
        elif tag == "pre":
            self.pre_depth += 1
        elif tag in ("td", "th"):
            self.parts.append(" | ")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        if tag in SKIPPED and tag not in VOID:
            self.skip_depth = max(0, self.skip_depth - 1)
            return
        if self.skip_depth:
            return
        if tag == "pre":
            self.pre_depth = max(0, self.pre_depth - 1)
        if tag in BLOCKS:
            self.parts.append("\n\n")

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
            return
        if self.skip_depth:
            return
        if self.pre_depth:  # keep code layout; mark its lines so whitespace folding leaves them alone
            self.parts.append("\n".join("\x00" + line for line in data.split("\n")))
        else:
            self.parts.append(re.sub(r"\s+", " ", data))


def html_to_text(markup: str) -> tuple[str, str]:
    """The readable text of an HTML page and its ``<title>``: ``(text, title)``.

    Paragraphs are separated by one blank line; runs of spaces fold to one except inside ``pre``.
    """
    collector = _TextCollector()
    collector.feed(markup)
    collector.close()
    lines = []
    for line in "".join(collector.parts).split("\n"):
        if line.startswith("\x00") or "\x00" in line:
            lines.append(line.replace("\x00", "").rstrip())
        else:
            lines.append(re.sub(r" {2,}", " ", line).strip(" |").strip())
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
    text = re.sub(r"^(#+ )\s*$\n*", "", text, flags=re.MULTILINE)  # headings left empty by skipped content
    return text, html.unescape(re.sub(r"\s+", " ", collector.title)).strip()
