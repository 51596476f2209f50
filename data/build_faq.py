"""Rebuild the RAG evaluation data in data/ from the package registries (run by hand, not by tests).

    .venv/bin/python data/build_faq.py      # needs apt-get, dpkg-deb and pip on PATH

Downloads (nothing is installed):
  * Debian bookworm `python3.11-doc` (Python FAQ and library reference, reST sources
    `html/_sources/**/*.rst.txt`), `perl-doc` (perlfaq1-9, POD), `debian-faq` and
    `debian-faq-zh-cn` (DocBook HTML, one file per chapter, the same section ids in both
    languages), `debian-reference-en` and `debian-reference-zh-cn` (DocBook HTML).
  * PyPI `gensim` 4.4.0 wheel (`pip download --no-deps`, read as a zip, never installed):
    `gensim/test/test_data/enwiki-latest-pages-articles1.xml-*.bz2`, real Wikipedia articles.

Writes
  * data/faq.jsonl.gz: one question/answer pair per line,
    {"id", "source", "lang", "question", "answer", "pair", "meta": {"file", "licence", "section", "package"}};
    `pair` is the key shared by the English and Chinese versions of a Debian FAQ question.
  * data/rag_distractors.jsonl.gz: documents the answers are pooled among,
    {"id", "text", "meta": {"source", "licence", "lang", "title"}}.

All markup (reST, POD, HTML, wikitext) is turned into plain text by the small converters below:
paragraphs separated by one blank line, code blocks kept as lines indented by four spaces, list
items as "- item". Output is deterministic (stable order, gzip mtime 0): same inputs, same bytes.
"""

from __future__ import annotations

import bz2
import gzip
import html
import io
import json
import re
import subprocess
import sys
import tempfile
import textwrap
import xml.etree.ElementTree as ET
import zipfile
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import unquote

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_corpora import fetch_deb  # noqa: E402  (same download helper as the corpora)

DATA = Path(__file__).resolve().parent
GENSIM = "gensim==4.4.0"
WIKI_MEMBER = "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"

LICENCE = {
    "python": "PSF-2.0",
    "perl": "Artistic-1.0 or GPL-1+ (same terms as Perl); code examples public domain",
    "debian-faq": "Debian FAQ licence (verbatim and modified copies allowed under an identical notice), "
                  "(C) 1996-2021 Software in the Public Interest",
    "wikipedia": "CC BY-SA 3.0",
    "debian-reference": "GPL-2+",
}
MIN_ANSWER = 40  # shorter answers are empty or only a cross-reference ("See perlfaq4.")
DOC_MIN, DOC_MAX = 300, 6000  # distractor document size in characters

# Python library pages used as distractors: the modules the Python FAQ talks about most, so some
# distractors are on the same topic as the answers (a retriever must tell them apart).
PY_LIBRARY = [
    "functions", "stdtypes", "exceptions", "os", "os.path", "sys", "re", "string", "json", "pickle",
    "copy", "datetime", "time", "random", "math", "collections", "itertools", "functools",
    "subprocess", "threading", "multiprocessing", "socket", "select", "signal", "io", "tempfile",
    "shutil", "pathlib", "glob", "csv", "logging", "unittest", "pdb", "timeit", "dis", "gc", "weakref",
    "ctypes", "array", "struct", "locale", "tkinter", "importlib", "inspect", "dataclasses", "contextlib",
    "heapq", "bisect", "queue", "decimal", "fractions", "zipfile",
]


# ----------------------------------------------------------------------------- plain-text helpers

CJK = "\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uff00-\uffef"
CJK_WRAP = re.compile(f"(?<=[{CJK}])\\s*\\n\\s*(?=[{CJK}])")


def inline_ws(text: str) -> str:
    """Collapse whitespace in running text; a line break between two CJK characters is no space."""
    return re.sub(r"\s+", " ", CJK_WRAP.sub("", text)).strip()


def code_block(lines: list[str]) -> str:
    """A code block as plain text: dedented, each line indented by four spaces, no blank runs."""
    body = textwrap.dedent("\n".join(s.expandtabs(8).rstrip() for s in lines)).strip("\n")
    body = re.sub(r"\n{3,}", "\n\n", body)
    return "\n".join(("    " + s) if s else "" for s in body.split("\n"))


def join_paragraphs(paras: list[str]) -> str:
    return "\n\n".join(p.rstrip() for p in paras if p.strip())


def slug(text: str, width: int = 60) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower().replace("+", "plus")).strip("-")[:width].rstrip("-")


def is_question(title: str) -> bool:
    return "?" in title or "？" in title


def pack(paras: list[str], limit: int = DOC_MAX) -> list[str]:
    """Greedy packing of paragraphs into texts of at most ``limit`` characters (an over-long
    paragraph is cut at line boundaries, then hard-cut)."""
    pieces: list[str] = []
    for p in paras:
        while len(p) > limit:
            cut = p.rfind("\n", 0, limit)
            cut = cut if cut > limit // 2 else p.rfind(" ", 0, limit)
            cut = cut if cut > 0 else limit
            pieces.append(p[:cut].rstrip())
            p = p[cut:].lstrip("\n ")
        pieces.append(p)
    out: list[str] = []
    for p in pieces:
        if out and len(out[-1]) + 2 + len(p) <= limit:
            out[-1] += "\n\n" + p
        else:
            out.append(p)
    return out


# ----------------------------------------------------------------------------- reST (Python docs)

ADORN = re.compile(r"([=\-~^*\"+#.`'])\1{2,}\s*$")
DIRECTIVE = re.compile(r"\.\.\s+([\w:-]+)::\s*(.*)$")
CODE_DIRECTIVES = {"code-block", "sourcecode", "code", "doctest", "testcode", "productionlist", "testoutput"}
DROP_DIRECTIVES = {"index", "toctree", "highlight", "testsetup", "testcleanup", "contents", "currentmodule",
                   "module", "moduleauthor", "sectionauthor", "image", "figure", "literalinclude", "raw",
                   "include", "tabularcolumns", "csv-table", "list-table", "table", "audit-event",
                   "audit-event-table", "only-if-not-html", "maxdepth", "c:namespace"}
VERSION_DIRECTIVES = {"versionadded": "New in version {}.", "versionchanged": "Changed in version {}.",
                      "deprecated": "Deprecated since version {}.",
                      "deprecated-removed": "Deprecated since version {}."}
LIST_ITEM = re.compile(r"([*+\-•]|#\.|\d+\.|\(?[a-zA-Z0-9]\))\s+(.*)$")
ROLE_PREFIX = {"pep": "PEP ", "rfc": "RFC "}
INLINE = re.compile(
    r"``(?P<lit>.+?)``"
    r"|(?::(?P<role>[\w:.-]+):)`(?P<rtext>[^`]+)`"
    r"|`(?P<ltext>[^`<]*?)\s*<(?P<url>[^`>]+)>`__?"
    r"|`(?P<ref>[^`]+)`_{0,2}"
    r"|(?<![\w*])\*\*(?P<strong>[^*\s](?:[^*]*[^*\s])?)\*\*(?![\w*])"
    r"|(?<![\w*\\])\*(?P<emph>[^*\s](?:[^*]*[^*\s])?)\*(?![\w*])"
    r"|\[#\w*\]_|\[\d+\]_",
    re.S,
)


def rst_inline(text: str) -> str:
    """Sphinx/reST inline markup -> text: roles keep their title, links their text, literals their code."""

    def sub(m: re.Match) -> str:
        if m["lit"] is not None:
            return m["lit"]
        if m["role"] is not None:
            t = m["rtext"]
            link = re.fullmatch(r"(.*?)\s*<([^<>]+)>", t, re.S)
            if link and link[1]:
                return link[1]
            t = (link[2] if link else t).lstrip("~!")
            if m["role"] in ("func", "meth", "c:func", "c:macro") and not t.endswith(")"):
                t += "()"
            if m["role"] in ("ref", "doc") and link is None:
                t = t.replace("-", " ")  # a bare label: the best stand-in for the section title
            return ROLE_PREFIX.get(m["role"], "") + t
        if m["url"] is not None:
            return m["ltext"] or m["url"]
        if m["ref"] is not None:
            return m["ref"]
        if m["strong"] is not None:
            return m["strong"]
        if m["emph"] is not None:
            return m["emph"]
        return ""

    text = INLINE.sub(sub, text)
    text = re.sub(r"\\ ", "", text)
    return re.sub(r"\\([\\*`_|])", r"\1", text)


def indent_of(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def take_block(lines: list[str], i: int, base: int) -> int:
    """Index after the block of lines from ``i`` that are blank or indented deeper than ``base``."""
    while i < len(lines) and (not lines[i].strip() or indent_of(lines[i]) > base):
        i += 1
    return i


def dedent_lines(lines: list[str]) -> list[str]:
    return textwrap.dedent("\n".join(s.expandtabs(8) for s in lines)).split("\n")


def rst_blocks(lines: list[str]) -> list[str]:
    """reST body (already dedented) -> plain-text paragraphs."""
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i].expandtabs(8)
        if not line.strip():
            i += 1
            continue
        if indent_of(line) > 0:  # block quote: convert its content
            end = take_block(lines, i, 0)
            out += rst_blocks(dedent_lines(lines[i:end]))
            i = end
            continue
        if line.startswith(".."):
            end = take_block(lines, i + 1, 0)
            out += rst_directive(line, lines[i + 1 : end])
            i = end
            continue
        if re.match(r"[=+][=+\- ]+$", line):  # a simple or grid table: left out
            while i < len(lines) and lines[i].strip():
                i += 1
            continue
        item = LIST_ITEM.match(line)
        if item and (item[1] in "*+-•" or i + 1 >= len(lines) or not lines[i + 1].strip() or
                     indent_of(lines[i + 1]) > 0 or LIST_ITEM.match(lines[i + 1])):
            end = take_block(lines, i + 1, 0)
            body = rst_blocks([item[2]] + dedent_lines(lines[i + 1 : end]))
            marker = "-" if item[1] in "*+-•" else item[1]
            if body:
                out.append(f"{marker} {body[0]}")
                out += body[1:]
            i = end
            continue
        para = []
        while i < len(lines) and lines[i].strip() and indent_of(lines[i]) == 0:
            para.append(lines[i])
            i += 1
        text = " ".join(s.strip() for s in para)
        if text.startswith(">>>"):
            out.append(code_block(para))
            continue
        literal = text.endswith("::")
        text = re.sub(r"\s*::$", "", text) + (":" if literal and not text.endswith(" ::") else "")
        if text.strip(":"):
            out.append(inline_ws(rst_inline(text)))
        end = take_block(lines, i, 0)
        if end > i and any(s.strip() for s in lines[i:end]):  # indented block after the paragraph
            block = lines[i:end]
            out += [code_block(block)] if literal else rst_blocks(dedent_lines(block))
            i = end
    return out


def rst_directive(first: str, rest: list[str]) -> list[str]:
    m = DIRECTIVE.match(first)
    if not m:  # a comment, a hyperlink target or a substitution definition
        return []
    name, arg = m[1], m[2].strip()
    content = dedent_lines(rest)
    while content and content[0].strip().startswith(":"):  # directive options
        content = content[1:]
    if name in DROP_DIRECTIVES:
        return []
    if name in CODE_DIRECTIVES:
        return [code_block(content)] if any(s.strip() for s in content) else []
    body = rst_blocks(content)
    if name in VERSION_DIRECTIVES:
        version = arg.split()[0] if arg else ""
        head = VERSION_DIRECTIVES[name].format(version)
        rest_of_arg = rst_inline(arg[len(version):].strip())
        first_para = " ".join(x for x in [head, rest_of_arg, body[0] if body else ""] if x)
        return [first_para] + body[1:]
    if name == "only":
        return body
    if name == "seealso":
        return ["See also: " + inline_ws(rst_inline(arg))] + body if arg else body
    if name == "availability":
        return [f"Availability: {arg}."]
    return ([inline_ws(rst_inline(arg))] if arg else []) + body  # object descriptions, notes, rubrics


def rst_sections(text: str) -> list[dict[str, Any]]:
    """Split a reST file at its section titles: [{"title", "level", "body": [lines]}] (level 0 = first style)."""
    lines = text.split("\n")
    styles: list[tuple[str, bool]] = []
    sections: list[dict[str, Any]] = [{"title": "", "level": -1, "body": []}]
    i = 0
    while i < len(lines):
        over = ADORN.match(lines[i]) and i + 2 < len(lines) and ADORN.match(lines[i + 2]) and lines[i + 1].strip()
        under = (not over and lines[i].strip() and not ADORN.match(lines[i]) and indent_of(lines[i]) == 0
                 and i + 1 < len(lines) and ADORN.match(lines[i + 1])
                 and len(lines[i + 1].strip()) >= len(lines[i].strip()) - 1)
        if over or under:
            title, char = (lines[i + 1], lines[i][0]) if over else (lines[i], lines[i + 1][0])
            style = (char, bool(over))
            if style not in styles:
                styles.append(style)
            sections.append({"title": inline_ws(rst_inline(title.strip())), "level": styles.index(style), "body": []})
            i += 3 if over else 2
            continue
        sections[-1]["body"].append(lines[i])
        i += 1
    return sections


# ----------------------------------------------------------------------------- POD (perlfaq)

POD_CODE = re.compile(r"([BCEFILSXZ])(<+)(\s?)")
POD_ESCAPES = {"lt": "<", "gt": ">", "verbar": "|", "sol": "/"}


def pod_inline(s: str) -> str:
    """POD formatting codes (B<> C<> I<> F<> S<> L<> E<> X<> Z<>, also C<< ... >>) -> text."""
    out, i = [], 0
    while i < len(s):
        m = POD_CODE.match(s, i)
        if not m or (len(m[2]) > 1 and not m[3]):
            out.append(s[i])
            i += 1
            continue
        code, n = m[1], len(m[2])
        if n == 1:  # single brackets: ends at the first ">" not closing a nested code
            depth, j = 0, m.end(2)
            while j < len(s):
                if POD_CODE.match(s, j):
                    depth += 1
                    j += 1
                elif s[j] == ">":
                    if depth == 0:
                        break
                    depth -= 1
                j += 1
            inner, i = s[m.end(2) : j], j + 1
        else:
            close = re.compile(r"\s" + ">" * n).search(s, m.end())
            j = close.start() if close else len(s)
            inner, i = s[m.end() : j], (close.end() if close else len(s))
        out.append(pod_code(code, inner))
    return "".join(out)


def pod_code(code: str, inner: str) -> str:
    if code in "XZ":
        return ""
    if code == "E":
        if inner in POD_ESCAPES:
            return POD_ESCAPES[inner]
        if inner.isdigit() or inner.lower().startswith("0x"):
            return chr(int(inner, 0))
        return html.unescape(f"&{inner};")
    if code != "L":
        return pod_inline(inner)
    text, _, target = inner.partition("|") if "|" in inner else ("", "", inner)
    if text:
        return pod_inline(text)
    if "://" in target:
        return target
    page, _, section = target.partition("/")
    section = pod_inline(section).strip('"')
    return f'"{section}" in {page}' if page and section else (f'"{section}"' if section else page)


def pod_sections(text: str) -> list[dict[str, Any]]:
    """Split a POD file at =head1/=head2: [{"title", "level", "paras": [text]}] with plain-text paragraphs."""
    sections: list[dict[str, Any]] = [{"title": "", "level": 0, "paras": []}]
    lists: list[str] = []  # marker of each open =over list
    prefix = ""
    skipping = False
    for block in re.split(r"\n(?:[ \t]*\n)+", text.replace("\r", "")):
        block = block.strip("\n")
        if not block.strip():
            continue
        if block.startswith("="):
            cmd, _, arg = block.partition(" ") if " " in block.split("\n")[0] else (block.split("\n")[0], "", "")
            arg = " ".join(arg.split())
            if cmd in ("=begin", "=for"):
                skipping = cmd == "=begin"
            elif cmd == "=end":
                skipping = False
            elif cmd in ("=head1", "=head2", "=head3", "=head4"):
                sections.append({"title": inline_ws(pod_inline(arg)), "level": int(cmd[-1]), "paras": []})
            elif cmd == "=over":
                lists.append("-")
            elif cmd == "=back" and lists:
                lists.pop()
            elif cmd == "=item":
                if arg in ("*", "") or arg.startswith("* "):
                    prefix, arg = "- ", arg[1:].strip()
                elif re.fullmatch(r"\d+\.?", arg):
                    prefix, arg = arg.rstrip(".") + ". ", ""
                if arg:
                    sections[-1]["paras"].append(prefix + inline_ws(pod_inline(arg)))
                    prefix = ""
            continue
        if skipping:
            continue
        if block[0] in " \t":  # verbatim paragraph: code
            sections[-1]["paras"].append(code_block(block.split("\n")))
        else:
            sections[-1]["paras"].append(prefix + inline_ws(pod_inline(block)))
            prefix = ""
    return sections


# ----------------------------------------------------------------------------- DocBook HTML (Debian)


class DocBookText(HTMLParser):
    """DocBook XSL HTML -> a stream of ("heading", level, anchor, title) and ("para", text) events."""

    SKIP_CLASSES = {"navheader", "navfooter", "toc", "list-of-tables", "list-of-figures", "table",
                    "footnotes", "informaltable", "legalnotice"}
    BLOCKS = {"p", "div", "li", "dt", "dd", "pre", "tr", "table", "blockquote", "ul", "ol", "dl", "br", "hr",
              "h1", "h2", "h3", "h4", "h5", "h6", "caption", "body"}
    VOID = {"br", "hr", "img", "meta", "link", "col", "input", "area", "base"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.events: list[tuple] = []
        self.stack: list[str] = []
        self.skip_at: int | None = None  # stack depth of the element being skipped
        self.buf: list[str] = []
        self.pre: list[str] | None = None
        self.heading: list | None = None  # [level, anchor]
        self.prefix = ""
        self.counters: list[int | None] = []

    def flush(self) -> None:
        text = inline_ws("".join(self.buf))
        self.buf = []
        if text:
            self.events.append(("para", self.prefix + text))
            self.prefix = ""

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        if tag not in self.VOID:
            self.stack.append(tag)
        if self.skip_at is not None:
            return
        if tag in ("script", "style", "sup", "head") or (tag == "div" and a.get("class") in self.SKIP_CLASSES):
            self.skip_at = len(self.stack)
            return
        if tag == "a" and "id" in a and self.heading is not None and self.heading[1] is None:
            self.heading[1] = a["id"]
        if tag in self.BLOCKS and self.pre is None:
            self.flush()
        if re.fullmatch(r"h[1-6]", tag):
            self.heading = [int(tag[1]), None]
        elif tag == "pre":
            self.pre = []
        elif tag in ("ul", "ol"):
            self.counters.append(0 if tag == "ol" else None)
        elif tag == "li":
            n = self.counters[-1] if self.counters else None
            if n is not None:
                self.counters[-1] = n + 1
            self.prefix = "- " if n is None else f"{n + 1}. "
        elif tag in ("td", "th"):
            self.buf.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.VOID:
            return
        depth = len(self.stack)
        while self.stack and self.stack.pop() != tag:  # tolerate unclosed tags
            depth -= 1
        if self.skip_at is not None:
            if depth <= self.skip_at:
                self.skip_at = None
            return
        if tag == "pre" and self.pre is not None:
            self.events.append(("para", code_block("".join(self.pre).split("\n"))))
            self.pre = None
        elif re.fullmatch(r"h[1-6]", tag) and self.heading is not None:
            level, anchor = self.heading
            title = inline_ws("".join(self.buf))
            self.buf, self.heading = [], None
            self.events.append(("heading", level, anchor, title) if anchor else ("para", title))
        elif tag in ("ul", "ol") and self.counters:
            self.flush()
            self.counters.pop()
        elif tag in self.BLOCKS:
            self.flush()

    def handle_data(self, data: str) -> None:
        if self.skip_at is not None:
            return
        (self.pre if self.pre is not None else self.buf).append(data)


SECTION_NUMBER = re.compile(r"((?:Chapter |Appendix |第\s*)?(?:\d+(?:\.\d+)*\.?|[A-Z](?:\.\d+)*\.)(?:\s*章)?)\s+(.*)$")


def docbook_sections(path: Path) -> list[dict[str, Any]]:
    """[{"anchor", "level", "number", "title", "paras"}] for each titled section of a DocBook HTML page."""
    parser = DocBookText()
    parser.feed(path.read_text(encoding="utf-8"))
    parser.close()
    sections: list[dict[str, Any]] = []
    for event in parser.events:
        if event[0] == "heading":
            _, level, anchor, title = event
            m = SECTION_NUMBER.match(title)
            number, title = (m[1].strip().rstrip("."), m[2]) if m else ("", title)
            sections.append({"anchor": anchor, "level": level, "number": number, "title": title, "paras": []})
        elif sections:
            sections[-1]["paras"].append(event[1])
    return sections


# ----------------------------------------------------------------------------- wikitext (Wikipedia)

WIKI_END_SECTIONS = {"see also", "references", "external links", "further reading", "notes", "bibliography",
                     "footnotes", "sources", "citations", "notes and references", "references and notes"}
WIKI_DROP_LINKS = re.compile(r"^:?(file|image|category|media|[a-z]{2,3}(-[a-z]+)?|simple|wikipedia|wikt):", re.I)


def drop_balanced(text: str, start: re.Pattern, open_tok: str, close_tok: str) -> str:
    """Remove every span that begins at a match of ``start`` and ends at its balanced ``close_tok``."""
    out, i = [], 0
    while m := start.search(text, i):
        out.append(text[i : m.start()])
        depth, j = 0, m.start()
        while j < len(text):
            if text.startswith(open_tok, j):
                depth, j = depth + 1, j + len(open_tok)
            elif text.startswith(close_tok, j):
                depth, j = depth - 1, j + len(close_tok)
                if depth == 0:
                    break
            else:
                j += 1
        i = j
    return "".join(out) + text[i:]


def wiki_link(m: re.Match) -> str:
    target, _, label = m[1].partition("|")
    if WIKI_DROP_LINKS.match(target):
        return ""
    return (label.split("|")[-1] if label else target).strip().lstrip(":")


def wiki_text(raw: str) -> list[str]:
    """Wikitext -> plain-text paragraphs: templates, tables, references, files, categories and
    link targets removed (nested markup is removed as balanced spans, links innermost first)."""
    text = re.sub(r"<!--.*?-->", "", raw, flags=re.S)
    text = re.sub(r"<ref[^>]*/>|<ref[^>]*>.*?</ref>", "", text, flags=re.S | re.I)
    text = re.sub(r"<(gallery|math|timeline|imagemap|score)[^>]*>.*?</\1>", "", text, flags=re.S | re.I)
    text = drop_balanced(text, re.compile(r"\{\{"), "{{", "}}")  # templates
    text = drop_balanced(text, re.compile(r"\{\|"), "{|", "|}")  # tables
    text = drop_balanced(text, re.compile(r"\[\[:?(?:file|image|media):", re.I), "[[", "]]")
    while (linked := re.sub(r"\[\[([^\[\]]*)\]\]", wiki_link, text)) != text:  # links, categories
        text = linked
    text = re.sub(r"\[(?:https?|ftp)://[^\s\]]+\s*([^\]]*)\]", r"\1", text)
    text = re.sub(r"<[^>]+>", "", text)
    text = html.unescape(text).replace("\xa0", " ")
    text = re.sub(r"'{2,}", "", text)
    paras: list[str] = []
    for block in re.split(r"\n\s*\n|\n(?==)|(?<=\=)\n", text):
        lines = []
        for line in block.split("\n"):
            line = line.strip()
            heading = re.fullmatch(r"(=+)\s*(.*?)\s*\1", line)
            if heading:
                if heading[2].lower() in WIKI_END_SECTIONS and len(heading[1]) == 2:
                    return [p for p in paras if len(p) > 1]
                lines.append(heading[2])
                continue
            if re.match(r"[|!{}]|__\w+__$|-{4,}", line):  # table remnants, magic words, rules
                continue
            bullet = re.match(r"[*#:;]+\s*", line)
            if bullet:
                line = ("- " if bullet[0][0] in "*#" else "") + line[bullet.end():]
            line = re.sub(r"\s+", " ", line).strip()
            if re.search(r"\w", line):
                lines.append(line)
        if lines:
            paras.append("\n".join(lines))
    return [p for p in paras if len(p) > 1]


# ----------------------------------------------------------------------------- FAQ pairs


def deb_version(root: Path, pkg: str) -> str:
    deb = next(root.parent.glob(f"{pkg}_*.deb"))
    return unquote(deb.name.split("_")[1])


def python_faq(root: Path, package: str, dropped: dict[str, int]) -> list[dict[str, Any]]:
    src = root / "usr/share/doc/python3.11/html/_sources"
    pairs: list[dict[str, Any]] = []
    for f in sorted((src / "faq").glob("*.rst.txt")):
        part = ""
        for s in rst_sections(f.read_text(encoding="utf-8")):
            if not is_question(s["title"]):
                part = s["title"] if s["level"] <= 1 else part
                continue
            answer = join_paragraphs(rst_blocks(s["body"]))
            if len(answer) < MIN_ANSWER:
                dropped["python-faq"] += 1
                continue
            stem = f.name.split(".")[0]
            pairs.append({"id": f"python-faq-{stem}-{slug(s['title'])}", "source": "python-faq", "lang": "en",
                          "question": s["title"], "answer": answer, "pair": None,
                          "meta": {"file": str(f.relative_to(src)), "licence": LICENCE["python"],
                                   "section": part, "package": package}})
    return pairs


def perlfaq(root: Path, package: str, dropped: dict[str, int]) -> list[dict[str, Any]]:
    pod = root / "usr/share/perl/5.36.0/pod"
    pairs: list[dict[str, Any]] = []
    for n in range(1, 10):
        part = ""
        for s in pod_sections((pod / f"perlfaq{n}.pod").read_text(encoding="utf-8")):
            if s["level"] == 1:
                part = s["title"]
            if s["level"] != 2 or not is_question(s["title"]):
                continue
            answer = join_paragraphs(s["paras"])
            if len(answer) < MIN_ANSWER:
                dropped["perlfaq"] += 1
                continue
            pairs.append({"id": f"perlfaq-{n}-{slug(s['title'])}", "source": "perlfaq", "lang": "en",
                          "question": s["title"], "answer": answer, "pair": None,
                          "meta": {"file": f"pod/perlfaq{n}.pod", "licence": LICENCE["perl"],
                                   "section": part, "package": package}})
    return pairs


def debian_faq(en_root: Path, zh_root: Path, packages: dict[str, str], dropped: dict[str, int]) -> list[dict]:
    """English and Chinese Debian FAQ pairs aligned by section id; a question is kept only when both
    languages have a real answer, so every pair key has exactly one English and one Chinese row."""
    faq_dir = {"en": en_root / "usr/share/doc/debian/FAQ", "zh": zh_root / "usr/share/doc/debian/FAQ/zh-cn"}
    index = {lang: re.findall(r'href="([\w-]+)\.(?:en|zh-cn)\.html"',
                              (d / f"index.{'en' if lang == 'en' else 'zh-cn'}.html").read_text(encoding="utf-8"))
             for lang, d in faq_dir.items()}
    chapters = list(dict.fromkeys(index["en"]))  # chapter files in reading order
    rows: dict[str, dict[str, dict[str, Any]]] = {"en": {}, "zh": {}}
    for lang, d in faq_dir.items():
        suffix = "en" if lang == "en" else "zh-cn"
        for chapter in chapters:
            f = d / f"{chapter}.{suffix}.html"
            for s in docbook_sections(f):
                rows[lang][s["anchor"]] = {**s, "file": str(f.relative_to(f.parents[1 if lang == "en" else 2]))}
    pairs: dict[str, list[dict[str, Any]]] = {"en": [], "zh": []}
    for anchor, en in rows["en"].items():
        zh = rows["zh"].get(anchor)
        if not is_question(en["title"]):
            continue
        answers = {"en": join_paragraphs(en["paras"]), "zh": join_paragraphs(zh["paras"]) if zh else ""}
        if min(len(a) for a in answers.values()) < MIN_ANSWER:
            dropped["debian-faq"] += 1  # the question, in both languages
            continue
        for lang, row in (("en", en), ("zh", zh)):
            pkg = "debian-faq" if lang == "en" else "debian-faq-zh-cn"
            pairs[lang].append({"id": f"debian-faq-{lang}-{anchor}", "source": "debian-faq", "lang": lang,
                                "question": row["title"], "answer": answers[lang], "pair": f"debian-faq-{anchor}",
                                "meta": {"file": row["file"], "licence": LICENCE["debian-faq"],
                                         "section": en["number"], "package": f"{pkg} {packages[pkg]}"}})
    return pairs["en"] + pairs["zh"]


# ----------------------------------------------------------------------------- distractors


def documents(prefix: str, title: str, paras: list[str], meta: dict[str, Any]) -> list[dict[str, Any]]:
    """One section or article -> documents of DOC_MIN..DOC_MAX characters (split at paragraphs)."""
    texts = [t for t in pack(paras) if len(t) >= DOC_MIN]
    return [{"id": f"{prefix}-{k:02d}", "text": t, "meta": {**meta, "title": title}} for k, t in enumerate(texts)]


def wikipedia_docs(wheel: Path) -> list[dict[str, Any]]:
    with zipfile.ZipFile(wheel) as zf:
        xml_text = bz2.decompress(zf.read(WIKI_MEMBER))
    ns = "{http://www.mediawiki.org/xml/export-0.10/}"
    out: list[dict[str, Any]] = []
    meta = {"source": "wikipedia", "licence": LICENCE["wikipedia"], "lang": "en"}
    for page in ET.fromstring(xml_text).iter(f"{ns}page"):
        raw = page.findtext(f"{ns}revision/{ns}text") or ""
        if page.findtext(f"{ns}ns") != "0" or page.find(f"{ns}redirect") is not None or \
                raw.lstrip().upper().startswith("#REDIRECT"):
            continue
        title = page.findtext(f"{ns}title") or ""
        out += documents(f"wiki-{slug(title)}", title, [title] + wiki_text(raw), meta)
    return out


def python_library_docs(root: Path) -> list[dict[str, Any]]:
    src = root / "usr/share/doc/python3.11/html/_sources/library"
    meta = {"source": "python-docs", "licence": LICENCE["python"], "lang": "en"}
    out: list[dict[str, Any]] = []
    for page in PY_LIBRARY:
        for k, s in enumerate(rst_sections((src / f"{page}.rst.txt").read_text(encoding="utf-8"))):
            if s["title"]:
                paras = [s["title"]] + rst_blocks(s["body"])
                out += documents(f"pylib-{slug(page)}-{k:02d}", s["title"], paras, meta)
    return out


def debian_reference_docs(root: Path, lang: str) -> list[dict[str, Any]]:
    suffix = "en" if lang == "en" else "zh-cn"
    d = root / "usr/share/debian-reference"
    pages = list(dict.fromkeys(re.findall(rf'href="((?:ch|ap|pr)\w+)\.{suffix}\.html',
                                          (d / f"index.{suffix}.html").read_text(encoding="utf-8"))))
    meta = {"source": "debian-reference", "licence": LICENCE["debian-reference"], "lang": lang}
    out: list[dict[str, Any]] = []
    for page in pages:
        for s in docbook_sections(d / f"{page}.{suffix}.html"):
            paras = [f"{s['number']} {s['title']}".strip()] + s["paras"]
            out += documents(f"debref-{lang}-{page}-{s['anchor'].strip('_')}", s["title"], paras, meta)
    return out


# ----------------------------------------------------------------------------- output


def write_jsonl(name: str, rows: list[dict[str, Any]]) -> int:
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)), f"duplicate ids in {name}"
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as gz:
        for r in rows:
            gz.write((json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8"))
    (DATA / name).write_bytes(buf.getvalue())
    return len(buf.getvalue())


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        names = ["python3.11-doc", "perl-doc", "debian-faq", "debian-faq-zh-cn", "debian-reference-en",
                 "debian-reference-zh-cn"]
        roots = {pkg: fetch_deb(pkg, work) for pkg in names}
        versions = {pkg: deb_version(root, pkg) for pkg, root in roots.items()}
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                        "--python-version", "3.11", "--platform", "manylinux_2_28_x86_64", "-d", str(work), GENSIM],
                       check=True, capture_output=True)
        wheel = next(work.glob("gensim-*.whl"))

        dropped = {"python-faq": 0, "perlfaq": 0, "debian-faq": 0}
        pairs = (python_faq(roots["python3.11-doc"], f"python3.11-doc {versions['python3.11-doc']}", dropped)
                 + perlfaq(roots["perl-doc"], f"perl-doc {versions['perl-doc']}", dropped)
                 + debian_faq(roots["debian-faq"], roots["debian-faq-zh-cn"], versions, dropped))
        distractors = (wikipedia_docs(wheel) + python_library_docs(roots["python3.11-doc"])
                       + debian_reference_docs(roots["debian-reference-en"], "en")
                       + debian_reference_docs(roots["debian-reference-zh-cn"], "zh"))

    faq_bytes = write_jsonl("faq.jsonl.gz", pairs)
    dis_bytes = write_jsonl("rag_distractors.jsonl.gz", distractors)
    for key in sorted({(p["source"], p["lang"]) for p in pairs}):
        rows = [p for p in pairs if (p["source"], p["lang"]) == key]
        print(f"faq {key[0]:11s} {key[1]}: {len(rows):4d} pairs, {sum(len(p['answer']) for p in rows):8d} chars")
    print(f"dropped (answer < {MIN_ANSWER} chars): {dropped} (Debian: questions, dropped in both languages)")
    for key in sorted({(d["meta"]["source"], d["meta"]["lang"]) for d in distractors}):
        rows = [d for d in distractors if (d["meta"]["source"], d["meta"]["lang"]) == key]
        print(f"distractors {key[0]:16s} {key[1]}: {len(rows):4d} docs, {sum(len(d['text']) for d in rows):8d} chars")
    print(f"faq.jsonl.gz {faq_bytes} B, rag_distractors.jsonl.gz {dis_bytes} B, total {faq_bytes + dis_bytes} B")
    print("versions:", versions, GENSIM)


if __name__ == "__main__":
    main()
