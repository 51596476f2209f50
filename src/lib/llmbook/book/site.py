"""Sphinx extension for the book's site: offline MathJax, and search snippets without raw TeX.

MathJax: the `book` extra installs MathJax 3 (PyPI `django-static-mathjax`); after the HTML build
this copies its self-contained `tex-svg.js` into `_static/mathjax/`, and `_config.yml` points
Sphinx's `mathjax_path` there, so formulas render on a machine with no internet.

Search snippets: Sphinx's `searchtools.js` shows, under each result, text cut from the result's
HTML page (`Search.htmlToText`, which drops only `.headerlink`, `script` and `style`). Formulas are
still TeX source in that HTML (MathJax typesets them in the browser), so the snippet would show
`\\(\\frac{QK^\\top}{\\sqrt{d}}\\)`. On the search page only, a short script wraps `Search.htmlToText`
to replace each formula (`.math`, inline or display) by "[formula]" first. The search index
(`searchindex.js`) is left as Sphinx writes it: it holds stemmed words, never shown to a reader.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from typing import Any

MATHJAX_FILE = "tex-svg.js"  # TeX input, SVG output, fonts inlined: one file, no further loads

# Runs before searchtools.js (Sphinx puts extension scripts first); wraps it once the page has parsed,
# before Search.init (also a DOMContentLoaded listener, registered later) starts a query.
SEARCH_SNIPPET_JS = """\
document.addEventListener("DOMContentLoaded", () => {
  if (typeof Search === "undefined" || typeof Search.htmlToText !== "function") return;
  const htmlToText = Search.htmlToText;
  Search.htmlToText = (htmlString, anchor) => {
    const page = new DOMParser().parseFromString(htmlString, "text/html");
    page.querySelectorAll(".math").forEach((formula) => formula.replaceWith("[formula]"));
    return htmlToText(page.documentElement.outerHTML, anchor);
  };
});"""


def mathjax_source() -> Path:
    spec = importlib.util.find_spec("mathjax")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("MathJax is missing: install the book extra (pip install -e '.[book]')")
    path = Path(list(spec.submodule_search_locations)[0]) / "static" / "mathjax" / "es5" / MATHJAX_FILE
    if not path.exists():
        raise RuntimeError(f"MathJax file {path} is missing: reinstall django-static-mathjax")
    return path


def _copy_mathjax(app: Any, exception: Exception | None) -> None:
    if exception is None and app.builder.format == "html":
        target = Path(app.outdir) / "_static" / "mathjax"
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy2(mathjax_source(), target / MATHJAX_FILE)


def _search_snippets_without_tex(app: Any, pagename: str, templatename: str, context: dict, doctree: Any) -> None:
    if pagename == "search":
        app.add_js_file(None, body=SEARCH_SNIPPET_JS)  # added on html-page-context: this page only


def setup(app: Any) -> dict[str, Any]:
    mathjax_source()  # fail at start, not after a long build
    app.connect("build-finished", _copy_mathjax)
    app.connect("html-page-context", _search_snippets_without_tex)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
