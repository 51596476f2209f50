"""The site builds from the executed smoke chapters with no Sphinx warnings, offline math included."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from llmbook.book import report, runner

pytestmark = pytest.mark.xdist_group("book")


def test_table_of_contents_lists_exactly_the_chapters(repo: Path) -> None:
    import yaml

    toc = yaml.safe_load((repo / "_toc.yml").read_text())
    listed = [entry["file"] for part in toc["parts"] for entry in part["chapters"] if "chapters/" in entry["file"]]
    chapters = [f"book/chapters/{c.stem}" for c in runner.discover(runner.BookPaths.at(repo))]
    assert listed == chapters, "keep _toc.yml in step with chapters/"


def test_every_chapter_has_a_page_and_a_download(built_site: Path, smoke_book: runner.BookPaths) -> None:
    assert (built_site / "index.html").exists()
    assert (built_site / "book" / "setup.html").exists()
    for chapter in runner.discover(smoke_book):
        page = built_site / "book" / "chapters" / f"{chapter.stem}.html"
        assert page.exists(), page
        assert f"_sources/book/chapters/{chapter.stem}.ipynb" in page.read_text()
        assert (built_site / "_sources" / "book" / "chapters" / f"{chapter.stem}.ipynb").exists()


def test_glued_numbers_are_rendered(built_site: Path, smoke_book: runner.BookPaths) -> None:
    for chapter in runner.discover(smoke_book):
        source = chapter.source.read_text()
        glued = set(re.findall(r"\{glue(?::text)?\}`([A-Za-z_0-9]+)", source))
        assert glued, f"{chapter.stem} quotes no glued number"
        html = (built_site / "book" / "chapters" / f"{chapter.stem}.html").read_text()
        metrics = report.load_metrics(chapter.name, "smoke", smoke_book.runs_dir)
        assert glued <= set(metrics), f"glued but never recorded: {sorted(glued - set(metrics))}"
        # A glue reference that did not resolve stays in the page as its raw role text.
        assert "{glue" not in html and "glue:text" not in html


def test_math_is_served_from_the_site(built_site: Path) -> None:
    assert (built_site / "_static" / "mathjax" / "tex-svg.js").stat().st_size > 1_000_000
    html = (built_site / "book" / "chapters" / "01_tokenization.html").read_text()  # a page with formulas
    assert 'class="math' in html
    assert "_static/mathjax/tex-svg.js" in html
    assert "cdn.jsdelivr.net/npm/mathjax" not in html
