"""Sphinx extension for the book's site: serve MathJax from the built site, never from a CDN.

The `book` extra installs MathJax 3 (PyPI `django-static-mathjax`); after the HTML build this
copies its self-contained `tex-svg.js` into `_static/mathjax/`, and `_config.yml` points Sphinx's
`mathjax_path` there, so formulas render on a machine with no internet.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from typing import Any

MATHJAX_FILE = "tex-svg.js"  # TeX input, SVG output, fonts inlined: one file, no further loads


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


def setup(app: Any) -> dict[str, Any]:
    mathjax_source()  # fail at start, not after a long build
    app.connect("build-finished", _copy_mathjax)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
