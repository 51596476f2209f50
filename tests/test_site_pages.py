"""The site as a reader sees it, built fast: the real config and pages, a stub for each executed chapter.

No notebook is executed: every chapter listed in `_toc.yml` is replaced by a small notebook that
looks executed (a title, a formula, a code cell with its output). The build is strict (Sphinx
warnings are errors) and runs on a scratch copy of the site sources that also holds tool caches and
build outputs with pages in them, none of which may be published.
"""

from __future__ import annotations

import html
import json
import re
import shutil
from pathlib import Path

import nbformat
import pytest
import yaml

from llmbook.book import runner, site

pytestmark = pytest.mark.xdist_group("site")

REPO = Path(__file__).resolve().parents[1]

# Directories a checkout accumulates that hold pages Sphinx could pick up; none may reach the site.
NEVER_PUBLISHED = {
    ".pytest_cache/README.md": "# pytest cache directory\n\nThis directory contains data from pytest.\n",
    ".pytest_cache/v/index.html": "<html><body>cache</body></html>\n",
    ".ruff_cache/notes.md": "# ruff cache\n",
    "book/.ipynb_checkpoints/setup-checkpoint.md": "# Setup (checkpoint)\n",
    "exports/01_tokenization.html": "<html><body>an exported report</body></html>\n",
    "runs/tokenization/notes.md": "# run notes\n",
    "build/leftover.md": "# a build output\n",
}


def toc_files(toc: dict) -> list[str]:
    """Every document `_toc.yml` lists (root, then parts and chapters in order)."""
    found = [toc["root"]]

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if "file" in node:
                found.append(node["file"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(toc.get("parts", toc.get("chapters", [])))
    return found


def stub_chapter(path: Path, title: str) -> None:
    notebook = nbformat.v4.new_notebook()
    output = nbformat.v4.new_output("execute_result", {"text/plain": "2"}, execution_count=1)
    notebook.cells = [
        nbformat.v4.new_markdown_cell(f"# {title}\n\nThe scaled score $\\frac{{q^\\top k}}{{\\sqrt{{d}}}}$ of a key."),
        nbformat.v4.new_code_cell("1 + 1", execution_count=1, outputs=[output]),
    ]
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, path)


@pytest.fixture(scope="module")
def toc() -> dict:
    return yaml.safe_load((REPO / "_toc.yml").read_text())


@pytest.fixture(scope="module")
def html_dir(tmp_path_factory: pytest.TempPathFactory, toc: dict) -> Path:
    root = tmp_path_factory.mktemp("site_pages")
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy(REPO / name, root / name)
    shutil.copytree(REPO / "book", root / "book", ignore=shutil.ignore_patterns("chapters", ".ipynb_checkpoints"))
    for docname in toc_files(toc):
        if not (root / f"{docname}.md").exists():
            stub_chapter(root / f"{docname}.ipynb", Path(docname).stem)
    for relative, text in NEVER_PUBLISHED.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text)
    paths = runner.BookPaths(
        chapters_dir=REPO / "chapters", site_root=root, runs_dir=root / "runs", cache_dir=root / ".cache"
    )
    runner.render_site(paths, strict=True)
    return paths.html_dir


def pages(html_dir: Path) -> list[Path]:
    """Every HTML page of the site except the root redirect and theme assets."""
    found = [p for p in html_dir.rglob("*.html") if "_static" not in p.relative_to(html_dir).parts]
    return sorted(p for p in found if p.relative_to(html_dir).as_posix() != "index.html")


def visible_text(page: Path) -> str:
    """The page's text with tags dropped (highlighted code splits words into spans) and entities decoded."""
    return html.unescape(re.sub(r"<[^>]+>", "", page.read_text()))


def search_index(html_dir: Path) -> dict:
    text = (html_dir / "searchindex.js").read_text()
    return json.loads(text[text.index("(") + 1 : text.rindex(")")])


@pytest.mark.parametrize("page", ["book/intro.html", "book/setup.html"])
def test_landing_and_setup_pages_say_how_to_get_the_code(html_dir: Path, page: str) -> None:
    text = visible_text(html_dir / page)
    for command in ("git clone <URL of this repository> llmbook", "cd llmbook", "make test", "make book"):
        assert command in text, f"{page} lacks {command!r}"
    assert "_build/html/index.html" in text, f"{page} does not say where the site lands"
    assert 'url=book/intro.html' in (html_dir / "index.html").read_text(), "the landing page is book/intro"


def test_setup_page_shows_papermill_with_params(html_dir: Path) -> None:
    text = visible_text(html_dir / "book" / "setup.html")
    assert "papermill chapters/02_attention.ipynb out.ipynb" in text
    assert "-p profile smoke -y 'params: {steps: 20}'" in text
    assert "-c constraints.txt" in text


def test_chapter_map_links_every_chapter(html_dir: Path, toc: dict) -> None:
    intro = (html_dir / "book" / "intro.html").read_text()
    [listed] = [part["chapters"] for part in toc["parts"] if part.get("caption") == "Chapters"]
    chapters = [entry["file"] for entry in listed]
    for chapter in chapters:
        assert f'href="{chapter.removeprefix("book/")}.html"' in intro, f"the chapter map lacks a link to {chapter}"
    assert 'id="coming"' not in intro and ">coming<" not in intro, "every chapter is written: nothing is coming"


def test_only_the_books_pages_are_published_or_searchable(html_dir: Path, toc: dict) -> None:
    unpublished = {"exports", "runs", "build"}  # and every hidden directory
    for path in html_dir.rglob("*"):
        parts = path.relative_to(html_dir).parts
        leaked = [part for part in parts[:-1] if part in unpublished or part.startswith(".")]
        assert not leaked and "checkpoint" not in parts[-1], f"published: {'/'.join(parts)}"
    assert set(search_index(html_dir)["docnames"]) == set(toc_files(toc)), "the search index lists other pages"


def test_every_page_links_the_favicon(html_dir: Path) -> None:
    assert (html_dir / "_static" / "favicon.svg").read_text().lstrip().startswith("<svg")
    for page in pages(html_dir):
        link = re.search(r'<link rel="icon" href="([^"]+)"', page.read_text())
        assert link, f"{page.name} links no favicon"
        assert (page.parent / link.group(1)).resolve() == (html_dir / "_static" / "favicon.svg").resolve()


def test_no_page_declares_a_script_constant_twice(html_dir: Path) -> None:
    """Two `const X` in one page's inline scripts is a console error ("Identifier 'X' has already been declared")."""
    for page in pages(html_dir):
        text = page.read_text()
        assert text.count("THEBE_JS_URL") <= 1, f"{page.name} loads the Thebe config script twice"
        declared = re.findall(r"<script[^>]*>\s*(?:const|let)\s+([A-Za-z_$][\w$]*)", text)
        assert len(declared) == len(set(declared)), f"{page.name} declares twice: {sorted(declared)}"


def test_search_snippets_replace_formulas(html_dir: Path) -> None:
    assert site.SEARCH_SNIPPET_JS in (html_dir / "search.html").read_text()
    assert site.SEARCH_SNIPPET_JS not in (html_dir / "book" / "setup.html").read_text(), "search page only"
