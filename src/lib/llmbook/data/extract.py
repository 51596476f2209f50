"""HTML -> readable text: the main content of a page, with its structure kept as light Markdown.

A page's text is what a reader sees, not its markup: scripts, styles, forms and the furniture around
the content (``nav``, ``header``, ``footer``, ``aside``) are dropped; headings become ``#`` lines so a
chunker can split at them; list items become ``- `` lines; ``pre`` blocks keep their line breaks;
every other block element ends a paragraph. Built on the standard library's tolerant
:class:`html.parser.HTMLParser`, so malformed pages (unclosed tags, stray ``</div>``) still give text.

:func:`extract_main_text` goes further: bytes or str in (charset from BOM, HTTP header, ``<meta>``, with a
fallback when the declaration is wrong), lxml's DOM walked into blocks, and the boilerplate removed by link
and text density with jusText's context pass plus a main-region step; each block comes back with the reason
it was kept or dropped. Scored against trafilatura and resiliparse in :mod:`llmbook.data.extract_eval`.
"""

from __future__ import annotations

import codecs
import html
import re
import textwrap
from dataclasses import dataclass, field
from html.parser import HTMLParser

from lxml import etree

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


# ============================================================================ main-text extraction
# The functions above turn a whole page into text. Below: the page's *main* text, with the boilerplate
# (menus, link lists, footers, "share this" bars) removed by the block classification of jusText
# (Pomikálek 2011, PhD thesis "Removing boilerplate and duplicate content from web corpora") with the
# language-independent shallow text features of boilerpipe (Kohlschütter, Fankhauser & Nejdl 2010,
# "Boilerplate detection using shallow text features", WSDM, doi:10.1145/1718487.1718542).


@dataclass(kw_only=True)
class ExtractConfig:
    """Knobs of :func:`extract_main_text`; the defaults were tuned on the dev split of data/web_pages.jsonl.gz."""

    max_bytes: int = 5_000_000  # bigger inputs are refused ("too_large"): a 10 MB page is a crawl trap, not an article
    length_low: int = 70  # characters; shorter blocks are "short" and decided by their neighbours (jusText)
    length_high: int = 200  # characters; a dense block at least this long is good on its own
    density_low: float = 4.0  # words per 80-column line; below it a long block is boilerplate (boilerpipe)
    density_high: float = 9.0  # words per line of running prose; dense and long -> good
    max_link_density: float = 0.35  # share of a block's characters inside <a>; above it the block is a link list
    max_short_link_density: float = 0.0  # a short block with more link text than this is bad (jusText: 0, any link)
    max_heading_distance: int = 200  # characters; a heading this close before good text is kept (jusText)
    main_share: float = 0.9  # the main region is the deepest element holding this share of the good text; 0: off
    main_max_link_density: float = 0.8  # inside the main region only link lists are dropped (cross-references stay)
    drop_outside_main: bool = False  # True: keep nothing outside the main region, even good blocks
    keep_code: bool = True  # <pre> blocks are near-good: kept when the text around them is kept
    markup_hints: bool = True  # drop nav/aside/footer, ARIA landmark roles and class/id names like "sidebar" at once
    drop_names: str = (r"nav|navbar|navigation|menu|sidebar|footer|breadcrumbs?|related|share|sharing|social|cookies?"
                       r"|comments?|advert|ads|banner|skip|pagination|masthead|toolbar|popup|newsletter")
    # tokens of class/id values (split at - _ and spaces) that mark furniture when markup_hints is on

    def __post_init__(self) -> None:
        for name in ("max_bytes", "length_low", "length_high", "max_heading_distance"):
            if getattr(self, name) < 0:
                raise ValueError(f"ExtractConfig.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("max_link_density", "max_short_link_density", "main_share", "main_max_link_density"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"ExtractConfig.{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0.0 <= self.density_low <= self.density_high:
            raise ValueError(f"ExtractConfig needs 0 <= density_low <= density_high, got "
                             f"{self.density_low}, {self.density_high}")


@dataclass(kw_only=True)
class Block:
    """One text block of a page and the classifier's verdict on it."""

    text: str
    tag: str  # the block element: p, h2, li, pre, tr, div, ... ("nav" etc. for a dropped furniture subtree)
    kept: bool
    reason: str  # kept: good | near_good | short_in_context | heading | in_main | fallback; dropped: DROP_REASONS
    n_words: int = 0
    link_density: float = 0.0
    text_density: float = 0.0


DROP_REASONS = ("markup", "link_dense", "copyright", "short", "low_density", "context", "outside_main")


@dataclass(kw_only=True)
class ExtractedPage:
    """What :func:`extract_main_text` returns: the title, the main text and why each block was kept or dropped."""

    title: str
    text: str
    blocks: list[Block] = field(default_factory=list)
    reason: str = "ok"  # ok | empty | binary | too_large | no_text | all_boilerplate
    charset: str | None = None  # the encoding the bytes were decoded with (None for str input)


# ----------------------------------------------------------------------------- bytes -> str

# longest first: the UTF-32-LE mark starts with the UTF-16-LE one
_BOMS = ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF32_LE, "utf-32-le"), (codecs.BOM_UTF32_BE, "utf-32-be"),
         (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"))
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([a-zA-Z0-9_:.\-]+)""", re.I)
_HEADER_CHARSET = re.compile(r"charset\s*=\s*[\"']?([a-zA-Z0-9_:.\-]+)", re.I)


def _codec(name: str | None) -> str | None:
    """The Python codec for a charset label, or None when unknown; latin-1/ascii labels mean windows-1252 (WHATWG)."""
    if not name:
        return None
    name = name.strip().lower()
    if name in ("iso-8859-1", "latin1", "latin-1", "us-ascii", "ascii", "iso8859-1"):
        return "cp1252"
    try:
        return codecs.lookup(name).name
    except LookupError:
        return None


def looks_binary(data: bytes) -> bool:
    """True for bytes that are no text page: NUL bytes or many control bytes in the first 4 KiB (UTF-16/32
    pages are recognised by their BOM before this is asked)."""
    head = data[:4096]
    if b"\x00" in head:
        return True
    controls = sum(1 for b in head if b < 32 and b not in (9, 10, 12, 13, 27))
    return controls >= 8 and controls > 0.05 * len(head)  # a stray control byte or two is a sloppy page


def decode_html(data: bytes, declared_charset: str | None = None) -> tuple[str, str]:
    """Bytes of a page -> (text, codec used). The order of the HTML standard's encoding sniffing: a byte-order
    mark, then the transport's charset (``declared_charset``: a label such as ``"utf-8"`` or a whole
    ``Content-Type`` value), then ``<meta charset>`` in the first 4 KiB, then UTF-8. A declared charset that does
    not decode the bytes (a server that says latin-1 but sends UTF-8, or the reverse) is passed over; the last
    resort is windows-1252 with replacement characters, so this never raises on bytes.
    """
    for bom, codec in _BOMS:
        if data.startswith(bom):
            return data[len(bom):].decode(codec, errors="replace"), codec
    if declared_charset and "charset" in declared_charset.lower():
        m = _HEADER_CHARSET.search(declared_charset)
        declared_charset = m[1] if m else None
    meta = _META_CHARSET.search(data[:4096])
    candidates = [_codec(declared_charset), _codec(meta[1].decode("ascii")) if meta else None, "utf-8"]
    for codec in dict.fromkeys(c for c in candidates if c):
        if codec == "cp1252" and _is_utf8(data):
            continue  # labelled latin-1 but valid non-ASCII UTF-8: the label is wrong (a common server default)
        try:
            return data.decode(codec), codec
        except (UnicodeDecodeError, LookupError):
            continue
    return data.decode("cp1252", errors="replace"), "cp1252"


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return not data.isascii()


# ----------------------------------------------------------------------------- DOM -> blocks

_HEADINGS = frozenset({"h1", "h2", "h3", "h4", "h5", "h6"})
# elements that end a text block (the block model of jusText: a block is the text between two of these)
# (a <br> is a line break inside its block: verse and addresses stay one block)
_BLOCK_TAGS = (BLOCKS - {"br"}) | frozenset({"address", "caption", "center", "fieldset", "legend", "main", "nav",
                                             "tbody", "thead", "tfoot", "menu", "dir", "noscript", "option", "textarea",
                                             "header", "aside", "footer", "form", "iframe", "select", "object",
                                             "embed"})
_NEVER_TEXT = frozenset({"script", "style", "noscript", "template", "svg", "math", "head", "iframe", "object",
                         "embed", "canvas", "video", "audio", "map", "select", "textarea", "button", "input"})
_FURNITURE_TAGS = frozenset({"nav", "footer", "form", "menu"})  # not <aside>: Sphinx puts footnotes in it
_FURNITURE_ROLES = frozenset({"navigation", "banner", "contentinfo", "complementary", "search", "menu", "menubar",
                              "toolbar", "dialog", "alert"})
_WORD = re.compile(r"\w+")
# Chinese, Japanese and Korean are written without spaces: each character counts as a word two columns wide
# (display width), and lengths weigh it as four characters (an English word with its space is ~6 characters,
# a Chinese word ~1.5), so a paragraph of Chinese is judged like a paragraph of English that says as much.
_CJK = "\u3001-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef"  # with CJK punctuation
_TOKEN = re.compile(f"[{_CJK}]|[^\\s{_CJK}]+")
_CJK_CHAR = re.compile(f"[{_CJK}]")
_WORDS = re.compile(f"[{_CJK}]|[^\\W{_CJK}]+")  # a CJK character, or a run of other word characters
_SPACES = re.compile(r"\s+")
_NAME_SPLIT = re.compile(r"[\s_\-]+")
# text-level blocks: never a main region by themselves, their container is
_LEAF_BLOCKS = _HEADINGS | frozenset({"p", "li", "dt", "dd", "pre", "blockquote", "tr", "td", "th", "caption",
                                      "figcaption", "summary", "address", "a", "span", "b", "i", "em", "code"})


@dataclass(kw_only=True)
class _RawBlock:
    parts: list[str] = field(default_factory=list)
    link_chars: int = 0
    tag: str = "body"
    pre: bool = False
    element: object = None  # the lxml element the block's text sits in (for the main-content region)


def text_density(n_words: int, text: str, width: int = 80) -> float:
    """Words per line when the block is wrapped at ``width`` columns, the last line left out unless it is the
    only one (Kohlschütter et al. 2010, sec. 4): ~10-14 for running prose, ~2-6 for menus and captions."""
    if n_words == 0:
        return 0.0
    lines, col, words_before_last = 1, 0, 0
    words_in_line, prev_cjk = 0, False
    for word in _TOKEN.findall(text):
        cjk = len(word) == 1 and bool(_CJK_CHAR.match(word))
        size = 2 if cjk else len(word)
        gap = 0 if not col or (cjk and prev_cjk) else 1  # no space between CJK characters
        if col and col + gap + size > width:
            lines += 1
            words_before_last += words_in_line
            col, words_in_line, gap = 0, 0, 0
        col += size + gap
        words_in_line += 1
        prev_cjk = cjk
    return n_words if lines == 1 else words_before_last / (lines - 1)


def _furniture(el, tag: str, names: re.Pattern, cache: dict[str, bool]) -> bool:
    """Is ``el`` page furniture by its markup alone: tag, ARIA role, ``hidden``, or a class/id name in ``names``."""
    if tag in _FURNITURE_TAGS:
        return True
    attrib = el.attrib
    if not attrib:
        return False
    if (attrib.get("role") or "").lower() in _FURNITURE_ROLES or attrib.get("aria-hidden") == "true":
        return True
    if "hidden" in attrib:
        return True
    # class tokens ("site-footer" -> site, footer); an id only as a whole, since ids are often slugs of headings
    key = f"{attrib.get('class') or ''}#{attrib.get('id') or ''}".lower()
    if key not in cache:
        classes, _, ident = key.rpartition("#")
        cache[key] = any(names.fullmatch(t) for t in [*_NAME_SPLIT.split(classes), ident] if t)
    return cache[key]


def page_blocks(root, config: ExtractConfig) -> tuple[list[_RawBlock], list[Block], str]:
    """Walk the DOM once: the text blocks (with the characters inside links counted), the furniture subtrees
    dropped by markup alone, and the ``<title>``."""
    names = re.compile(f"(?:{config.drop_names})")
    cache: dict[str, bool] = {}
    blocks: list[_RawBlock] = []
    furniture: list[Block] = []
    title = _SPACES.sub(" ", root.findtext(".//title") or "").strip()
    cur = _RawBlock(element=root)
    link_depth = pre_depth = 0

    def flush(element) -> None:
        nonlocal cur
        if cur.parts:
            blocks.append(cur)
        tag = element.tag.lower() if element is not None and isinstance(element.tag, str) else "body"
        cur = _RawBlock(tag=tag, pre=pre_depth > 0, element=element if element is not None else root)

    def add(text: str | None) -> None:
        if not text:
            return
        if not cur.pre:
            text = _SPACES.sub(" ", text)
        cur.parts.append(text)
        if link_depth:  # word characters only: a "¶" permalink in a heading is no link text
            cur.link_chars += sum(len(w) for w in _WORD.findall(text))

    walker = etree.iterwalk(root, events=("start", "end"))
    for event, el in walker:
        tag = el.tag if isinstance(el.tag, str) else ""
        tag = tag.lower()
        if event == "start":
            if tag in _NEVER_TEXT or tag == "title":
                walker.skip_subtree()
                continue
            if config.markup_hints and _furniture(el, tag, names, cache):
                walker.skip_subtree()
                text = re.sub(r"\s+", " ", etree.tostring(el, method="text", encoding="unicode", with_tail=False))
                if text.strip():
                    furniture.append(Block(text=text.strip(), tag=tag, kept=False, reason="markup"))
                el.set("data-llmbook-skipped", "1")
                continue
            if tag in _BLOCK_TAGS or tag in ("pre",):
                if tag == "pre":
                    pre_depth += 1
                flush(el)
            elif tag == "br":
                cur.parts.append("\n")  # not through add(): it folds whitespace
            elif tag == "a":
                link_depth += 1
            elif tag in ("td", "th") and cur.parts:
                add(" | ")
            add(el.text)
        else:
            skipped = el.get("data-llmbook-skipped") is not None
            if tag in _NEVER_TEXT or tag == "title" or skipped:
                pass
            elif tag == "a":
                link_depth = max(0, link_depth - 1)
            elif tag in _BLOCK_TAGS or tag == "pre":
                if tag == "pre":
                    pre_depth = max(0, pre_depth - 1)
                flush(el.getparent())
            add(el.tail)
    flush(None)
    return blocks, furniture, title


# ----------------------------------------------------------------------------- blocks -> classes


def classify_block(text: str, tag: str, link_chars: int, config: ExtractConfig) -> tuple[str, str, dict]:
    """Context-free class of one block: ``good``, ``near_good``, ``short`` or ``bad``, with the reason.

    jusText's rules with boilerpipe's text density in place of the stop-word density:
    link density > max -> bad; © -> bad; length < length_low -> short (bad when it holds a link);
    density >= density_high and length >= length_high -> good; density >= density_low -> near-good; else bad.
    """
    n_cjk = len(_CJK_CHAR.findall(text))
    n_chars = len(text) + 3 * n_cjk
    n_words = len(_WORDS.findall(text))
    link_density = min(1.0, link_chars / max(1, sum(len(w) for w in _WORD.findall(text))))
    density = text_density(n_words, text)
    stats = {"n_words": n_words, "link_density": link_density, "text_density": density}
    if link_density > config.max_link_density:
        return "bad", "link_dense", stats
    if "\xa9" in text and n_chars < 2 * config.length_high:
        return "bad", "copyright", stats
    if tag == "pre" and config.keep_code:
        return "near_good", "near_good", stats
    if n_chars < config.length_low:
        return ("bad", "short", stats) if link_density > config.max_short_link_density else ("short", "short", stats)
    if density >= config.density_high and n_chars >= config.length_high:
        return "good", "good", stats
    if density >= config.density_low:
        return "near_good", "near_good", stats
    return "bad", "low_density", stats


def _neighbour(classes: list[str], i: int, step: int, ignore_near_good: bool) -> str:
    i += step
    while 0 <= i < len(classes):
        if classes[i] in ("good", "bad") or (classes[i] == "near_good" and not ignore_near_good):
            return classes[i]
        i += step
    return "bad"


def revise_classes(classes: list[str], headings: list[bool], lengths: list[int],
                   max_heading_distance: int) -> list[str]:
    """jusText's context-sensitive pass (Pomikálek 2011, sec. 3.2.4) over context-free classes -> good/bad.

    A short heading followed by good text within ``max_heading_distance`` characters becomes near-good; a short
    block between good ones is good, between bad ones bad, and between good and bad it is good only when a
    near-good block separates it from the bad side; a near-good block is bad only between two bad ones.
    """
    cf = list(classes)
    classes = list(classes)
    n = len(classes)

    def good_follows(i: int) -> bool:
        distance, j = 0, i + 1
        while j < n and distance <= max_heading_distance:
            if classes[j] == "good":
                return True
            distance += lengths[j]
            j += 1
        return False

    for i in range(n):
        if headings[i] and classes[i] == "short" and good_follows(i):
            classes[i] = "near_good"
    new = list(classes)
    for i in range(n):
        if classes[i] != "short":
            continue
        prev, nxt = _neighbour(classes, i, -1, True), _neighbour(classes, i, 1, True)
        if prev == nxt:
            new[i] = prev
        elif ((prev == "bad" and _neighbour(classes, i, -1, False) == "near_good")
              or (nxt == "bad" and _neighbour(classes, i, 1, False) == "near_good")):
            new[i] = "good"
        else:
            new[i] = "bad"
    classes = new  # near-good blocks are judged among the short ones already decided
    for i in range(n):
        if classes[i] == "near_good":
            both_bad = _neighbour(classes, i, -1, True) == "bad" and _neighbour(classes, i, 1, True) == "bad"
            classes[i] = "bad" if both_bad else "good"
    for i in range(n):  # headings dropped by context but followed closely by good text come back
        if headings[i] and classes[i] == "bad" and cf[i] != "bad" and good_follows(i):
            classes[i] = "good"
    return classes


def main_region(elements: list, good_chars: list[int], share: float) -> list[bool | None]:
    """Which blocks lie in the page's main region: the deepest element holding at least ``share`` of the
    characters of the blocks judged good (with ``share > 0.5`` those elements nest, so "deepest" is one).

    Inside it every block but link lists is content (a reference page's one-line definitions and its
    cross-reference-heavy sentences are short or link-rich, yet content): the idea of Readability's "top
    candidate" and trafilatura's main-body search, found here from the good-text mass alone, not from markup.
    ``None`` for every block when ``share`` is 0 or nothing is good.
    """
    total = sum(good_chars)
    if share <= 0 or total == 0:
        return [None] * len(elements)
    mass: dict = {}
    depth: dict = {}
    for el, n in zip(elements, good_chars, strict=True):
        if n:
            chain = [el, *el.iterancestors()]
            for d, anc in enumerate(chain):
                mass[anc] = mass.get(anc, 0) + n
                depth[anc] = len(chain) - d
    main = max((el for el, m in mass.items() if m >= share * total), key=lambda el: depth[el])
    while main.tag in _LEAF_BLOCKS and main.getparent() is not None:  # one good paragraph: its container is the region
        main = main.getparent()
    region = set(main.iter())
    return [el in region for el in elements]


def _block_text(raw: _RawBlock) -> str:
    text = "".join(raw.parts)
    if raw.pre:
        return textwrap.dedent(text.strip("\n")).rstrip()
    text = re.sub(r" *\n[\s]*", "\n", re.sub(r"[^\S\n]+", " ", text))  # only <br> put newlines here
    return text.strip(" |").strip()


def extract_main_text(html_input: str | bytes, config: ExtractConfig | None = None, *,
                      declared_charset: str | None = None) -> ExtractedPage:
    """The main text of an HTML page: the blocks kept by the jusText/boilerpipe classification, as light
    Markdown (``#`` headings, ``- `` list items, ``pre`` verbatim, blank lines between blocks).

    ``html_input`` is a str, or bytes decoded by :func:`decode_html` (``declared_charset``: the HTTP
    ``Content-Type`` charset, if any). Never raises on content: empty, binary, oversized or all-boilerplate
    input gives ``text == ""`` with ``reason`` saying why; broken markup is parsed as browsers do.
    """
    config = config or ExtractConfig()
    if not isinstance(html_input, str | bytes | bytearray):
        raise ValueError(f"html_input must be str or bytes, got {type(html_input).__name__}")
    charset = None
    size = len(html_input) if isinstance(html_input, bytes | bytearray) else len(html_input.encode("utf-8", "replace"))
    if size > config.max_bytes:
        return ExtractedPage(title="", text="", reason="too_large")
    if isinstance(html_input, bytes | bytearray):
        data = bytes(html_input)
        if not data.strip():
            return ExtractedPage(title="", text="", reason="empty")
        if looks_binary(data) and not data.startswith(tuple(bom for bom, _ in _BOMS)):  # UTF-16/32 hold NULs
            return ExtractedPage(title="", text="", reason="binary")
        html_input, charset = decode_html(data, declared_charset)
    if not html_input.strip():
        return ExtractedPage(title="", text="", reason="empty", charset=charset)
    if "\x00" in html_input[:4096]:
        return ExtractedPage(title="", text="", reason="binary", charset=charset)
    # lxml gets UTF-8 bytes with the encoding fixed, so a stale <meta charset> cannot re-decode the text
    parser = etree.HTMLParser(encoding="utf-8", remove_comments=True, remove_pis=True, no_network=True)
    root = etree.fromstring(html_input.encode("utf-8", errors="replace"), parser)
    if root is None:
        return ExtractedPage(title="", text="", reason="empty", charset=charset)
    raw, furniture, title = page_blocks(root, config)
    texts = [_block_text(b) for b in raw]
    keep = [i for i, t in enumerate(texts) if _WORD.search(t)]
    raw, texts = [raw[i] for i in keep], [texts[i] for i in keep]
    verdicts = [classify_block(t, b.tag, b.link_chars, config) for t, b in zip(texts, raw, strict=True)]
    headings = [b.tag in _HEADINGS for b in raw]
    final = revise_classes([v[0] for v in verdicts], headings, [len(t) for t in texts], config.max_heading_distance)
    inside = main_region([b.element for b in raw], [len(t) if c == "good" else 0 for t, c in zip(texts, final,
                                                                                                strict=True)],
                         config.main_share)
    blocks = list(furniture)
    out: list[str] = []
    for b, t, (cf, why, stats), cls, in_main in zip(raw, texts, verdicts, final, inside, strict=True):
        if in_main is None:  # no main region found: jusText's verdict stands
            kept = cls == "good"
        elif in_main:  # headings stay even when linked: FAQ and docs headings link to themselves or to a TOC
            kept = (stats["link_density"] <= config.main_max_link_density or b.tag in _HEADINGS) and why != "copyright"
        else:
            kept = cls == "good" and not config.drop_outside_main
        if kept:
            reason = ("heading" if b.tag in _HEADINGS and cf != "good" else "in_main" if cls != "good"
                      else why if cf != "short" else "short_in_context")
            prefix = "#" * int(b.tag[1]) + " " if b.tag in _HEADINGS else "- " if b.tag == "li" else ""
            out.append(prefix + t)
        else:
            reason = why if cf == "bad" else "outside_main" if in_main is False else "context"
        blocks.append(Block(text=t, tag=b.tag, kept=kept, reason=reason, **stats))
    cf_classes = {v[0] for v in verdicts}
    if not out and cf_classes & {"near_good", "short"}:
        # a short page (an intro paragraph over a list of links, a one-line page) has no good block to anchor
        # the context pass; rather than nothing, keep what the context-free pass found near-good (or, if
        # nothing is, the short blocks without links), with a heading just before them
        level = "near_good" if "near_good" in cf_classes else "short"
        blocks, out = list(furniture), []
        for i, (b, t, (cf, why, stats)) in enumerate(zip(raw, texts, verdicts, strict=True)):
            nxt = verdicts[i + 1][0] if i + 1 < len(verdicts) else "bad"
            kept = cf == level or (b.tag in _HEADINGS and cf == "short" and nxt == level)
            if kept:
                out.append("#" * int(b.tag[1]) + " " + t if b.tag in _HEADINGS else "- " + t if b.tag == "li" else t)
            blocks.append(Block(text=t, tag=b.tag, kept=kept, reason="fallback" if kept else why, **stats))
    text = "\n\n".join(out)
    if not text:
        return ExtractedPage(title=title, text="", blocks=blocks, charset=charset,
                             reason="all_boilerplate" if blocks else "no_text")
    return ExtractedPage(title=title, text=text, blocks=blocks, charset=charset)


def html_to_text_bytes(html_bytes: bytes, declared_charset: str | None = None) -> str:
    """The main text of a page given as bytes (``""`` when there is none); see :func:`extract_main_text`."""
    return extract_main_text(html_bytes, declared_charset=declared_charset).text
