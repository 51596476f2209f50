"""Scoring main-text extractors on a labelled set of real pages (data/web_pages.jsonl.gz).

Each page comes with a gold text that never came from its HTML (the reST source of a Python docs page; the
Debian Reference's own text rendering). An extractor is scored as in trafilatura's evaluation and the
ScrapingHub article-extraction benchmark: the extracted and gold texts as bags of word tokens,

    precision = |E ∩ G| / |E|,   recall = |E ∩ G| / |G|,   F1 = 2PR / (P + R)   (∩ of multisets),

per page, then the mean over pages; plus pages per second. The set has a ``dev`` and a ``test`` split that
never share a page: tune an extractor's knobs on dev (:func:`tune_config`), report test (:func:`compare_by_split`).
"""

from __future__ import annotations

import gzip
import itertools
import json
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path

from llmbook.data.corpora import data_dir
from llmbook.data.extract import ExtractConfig, extract_main_text, html_to_text

WEB_PAGES = "web_pages.jsonl.gz"
SPLITS = ("dev", "test")
Extractor = Callable[[str], str]  # page HTML -> its main text


@dataclass(kw_only=True, frozen=True)
class WebPage:
    """One labelled page: the HTML as served and the text a reader should get out of it."""

    id: str
    url: str
    html: str
    gold: str
    section: str  # python docs: library, tutorial, ...; debian-reference: the chapter file
    split: str  # dev | test
    source: str  # python-docs | debian-reference: one template each
    licence: str


def load_web_pages(split: str | None = None, source: str | None = None, path: str | Path | None = None
                   ) -> list[WebPage]:
    """The bundled labelled pages (or those of a JSONL(.gz) file at ``path``), optionally of one split/source."""
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")
    path = Path(path) if path is not None else data_dir() / WEB_PAGES
    opener = gzip.open if path.suffix == ".gz" else open
    pages = []
    with opener(path, "rt", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            meta = row["meta"]
            page = WebPage(id=row["id"], url=row["url"], html=row["html"], gold=row["gold"],
                           section=meta["section"], split=meta["split"], source=meta["source"],
                           licence=meta["licence"])
            if (split is None or page.split == split) and (source is None or page.source == source):
                pages.append(page)
    return pages


# ----------------------------------------------------------------------------- scoring

_TOKEN = re.compile(r"\w+")


def word_tokens(text: str) -> list[str]:
    """Lower-cased word tokens (runs of letters, digits and ``_``); punctuation and markup marks (``#``, ``-``)
    do not count."""
    return _TOKEN.findall(text.lower())


def token_prf(extracted: str, gold: str) -> tuple[float, float, float]:
    """Bag-of-words (precision, recall, F1) of an extracted text against the gold one (multiset overlap).

    Both empty: (1, 1, 1). Nothing extracted from a page with text: (0, 0, 0), so an extractor cannot win by
    abstaining.
    """
    e, g = Counter(word_tokens(extracted)), Counter(word_tokens(gold))
    if not e and not g:
        return 1.0, 1.0, 1.0
    overlap = sum((e & g).values())
    if overlap == 0:
        return 0.0, 0.0, 0.0
    p, r = overlap / sum(e.values()), overlap / sum(g.values())
    return p, r, 2 * p * r / (p + r)


@dataclass(kw_only=True)
class ExtractionScore:
    """Mean per-page scores of one extractor on a set of pages."""

    precision: float
    recall: float
    f1: float
    pages_per_s: float
    n_pages: int
    per_page: dict[str, tuple[float, float, float]]  # page id -> (precision, recall, f1)

    def as_row(self) -> dict[str, float]:
        return {"precision": self.precision, "recall": self.recall, "f1": self.f1, "pages_per_s": self.pages_per_s}


def score_extractor(extract: Extractor, pages: Sequence[WebPage]) -> ExtractionScore:
    """Run ``extract`` on every page's HTML; mean token P/R/F1 against the gold and pages per second (the time
    of the extraction calls only)."""
    if not pages:
        raise ValueError("pages must not be empty")
    ids = [page.id for page in pages]
    if len(set(ids)) != len(ids):  # per-page scores are keyed by id: a repeat would be averaged in twice
        raise ValueError(f"page ids must be unique; repeated: {sorted({i for i in ids if ids.count(i) > 1})[:5]}")
    per_page: dict[str, tuple[float, float, float]] = {}
    seconds = 0.0
    for page in pages:
        start = time.perf_counter()
        text = extract(page.html) or ""  # trafilatura returns None when it finds nothing
        seconds += time.perf_counter() - start
        per_page[page.id] = token_prf(text, page.gold)
    n = len(pages)
    mean = [sum(s[k] for s in per_page.values()) / n for k in range(3)]
    return ExtractionScore(precision=mean[0], recall=mean[1], f1=mean[2], pages_per_s=n / max(seconds, 1e-9),
                           n_pages=n, per_page=per_page)


# ----------------------------------------------------------------------------- extractors side by side


def ours(config: ExtractConfig | None = None) -> Extractor:
    """The book's extractor (:func:`llmbook.data.extract.extract_main_text`) as an HTML -> text function."""
    return lambda markup: extract_main_text(markup, config).text


def whole_page(markup: str) -> str:
    """Baseline without boilerplate removal: all the visible text (:func:`llmbook.data.extract.html_to_text`)."""
    return html_to_text(markup)[0]


def trafilatura_extract(markup: str) -> str:
    """trafilatura (Barbaresi 2021, ACL demo) with its defaults and comments left out."""
    import trafilatura  # an optional dependency, imported only when this extractor is asked for

    return trafilatura.extract(markup, include_comments=False) or ""


def resiliparse_extract(markup: str) -> str:
    """Resiliparse's main-content extraction (Bevendorff et al., the ChatNoir web-archive tools)."""
    from resiliparse.extract.html2text import extract_plain_text

    return extract_plain_text(markup, main_content=True)


def justext_extract(markup: str) -> str:
    """jusText itself (Pomikálek 2011) with its English stop list and default thresholds."""
    import justext

    paragraphs = justext.justext(markup.encode("utf-8"), justext.get_stoplist("English"), encoding="utf-8")
    return "\n\n".join(p.text for p in paragraphs if not p.is_boilerplate)


def default_extractors(config: ExtractConfig | None = None) -> dict[str, Extractor]:
    """The extractors compared in the chapter: ours, trafilatura, resiliparse, jusText and the no-removal
    baseline (each third-party one only if its package is installed)."""
    table: dict[str, Extractor] = {"ours": ours(config), "whole_page": whole_page}
    for name, module, fn in (("trafilatura", "trafilatura", trafilatura_extract),
                             ("resiliparse", "resiliparse", resiliparse_extract),
                             ("justext", "justext", justext_extract)):
        try:
            __import__(module)
        except ImportError:
            continue
        table[name] = fn
    return table


def compare_extractors(pages: Sequence[WebPage], extractors: Mapping[str, Extractor] | None = None
                       ) -> dict[str, dict[str, float]]:
    """{extractor: {precision, recall, f1, pages_per_s}} on ``pages``."""
    extractors = extractors if extractors is not None else default_extractors()
    return {name: score_extractor(fn, pages).as_row() for name, fn in extractors.items()}


def compare_by_split(pages: Sequence[WebPage] | None = None, extractors: Mapping[str, Extractor] | None = None
                     ) -> dict[str, dict[str, dict[str, float]]]:
    """{split: {extractor: {precision, recall, f1, pages_per_s}}} for the dev and test splits."""
    pages = pages if pages is not None else load_web_pages()
    return {split: compare_extractors([p for p in pages if p.split == split], extractors)
            for split in SPLITS if any(p.split == split for p in pages)}


def tune_config(dev_pages: Sequence[WebPage], grid: Mapping[str, Iterable[object]],
                base: ExtractConfig | None = None) -> tuple[ExtractConfig, list[tuple[dict[str, object], float]]]:
    """Grid search of :class:`ExtractConfig` fields by mean F1 on ``dev_pages`` (never the test split):
    the best config and every (setting, F1) tried, best first."""
    if any(p.split == "test" for p in dev_pages):
        raise ValueError("tune_config got test pages: tune on the dev split only")
    known = {f.name for f in fields(ExtractConfig)}
    if unknown := set(grid) - known:
        raise ValueError(f"grid has unknown ExtractConfig fields {sorted(unknown)}; allowed: {sorted(known)}")
    base = base or ExtractConfig()
    results: list[tuple[dict[str, object], float]] = []
    for values in itertools.product(*grid.values()):
        setting = dict(zip(grid, values, strict=True))
        results.append((setting, score_extractor(ours(replace(base, **setting)), dev_pages).f1))
    results.sort(key=lambda r: -r[1])
    return replace(base, **results[0][0]), results
