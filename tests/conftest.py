from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
import torch
from hypothesis import settings

REPO = Path(__file__).resolve().parents[1]

# The tests never touch the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# Two xdist workers share two cores: more torch threads per worker only spin and wait.
torch.set_num_threads(1)

# Property tests draw the same examples on every run: a failure reproduces, and CI never fails on a
# draw that a local run did not make.
settings.register_profile("book", derandomize=True)
settings.load_profile("book")


def write_notebook(path: Path, parameters: str, *cells: str) -> Path:
    """A notebook whose first code cell is tagged `parameters` (as papermill expects)."""
    notebook = nbformat.v4.new_notebook()
    first = nbformat.v4.new_code_cell(parameters)
    first.metadata["tags"] = ["parameters"]
    notebook.cells = [first, *(nbformat.v4.new_code_cell(source) for source in cells)]
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, path)
    return path


@pytest.fixture
def repo() -> Path:
    return REPO


class _NotConverted(Exception):
    pass


def _refuse_conversion(directory) -> None:
    raise _NotConverted


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    """SmolLM2's tokenizer, from the converted directory when the artifact cache holds it, else straight
    from the GGUF file (~10 s): tokenizer tests never start the ~40 s conversion."""
    from transformers import AutoTokenizer

    from llmbook.chain import pretrained

    try:
        gguf = pretrained.smollm2_gguf()
    except ModuleNotFoundError as error:
        pytest.skip(str(error))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pretrained, "_convert_smollm2", _refuse_conversion)
        try:
            return AutoTokenizer.from_pretrained(pretrained.smollm2_dir())
        except _NotConverted:
            pass
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


def converted_smollm2() -> Path:
    """SmolLM2-135M-Instruct converted once into the default artifact cache (~40 s on an empty cache).

    A file lock makes the two xdist workers share one conversion: tests/test_pretrained_loader.py reads it
    there, and the smoke chapters' scratch cache links to it instead of converting again.
    """
    from filelock import FileLock

    from llmbook.book import artifacts
    from llmbook.chain import pretrained

    root = artifacts.cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / ".smollm2.lock")):
        return pretrained.smollm2_dir()


@pytest.fixture(scope="session")
def smoke_book(tmp_path_factory: pytest.TempPathFactory):
    """Every chapter executed with the `smoke` profile into a scratch copy of the site sources.

    Session-scoped and used by tests/test_chapters.py, tests/test_book.py and
    tests/test_site_browser.py, which share one xdist group, so the chapters run once per test run.
    """
    import shutil

    from llmbook.book import profiles, runner

    site = tmp_path_factory.mktemp("site")
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy(REPO / name, site / name)
    # The hand-written pages and their static files (book/_static: the favicon); not book/chapters,
    # the executed copies of a local `llmbook build`: the chapters are executed below.
    shutil.copytree(
        REPO / "book", site / "book", ignore=lambda folder, names: ["chapters"] if Path(folder) == REPO / "book" else []
    )
    paths = runner.BookPaths(
        chapters_dir=REPO / "chapters", site_root=site, runs_dir=site / "runs", cache_dir=site / ".cache"
    )
    try:  # every other artifact is built from scratch in the scratch cache; this one is a conversion
        smollm2 = converted_smollm2()
    except ModuleNotFoundError:  # the model's package is missing: the chapters that need it say so
        smollm2 = None
    if smollm2 is not None:
        (paths.cache_dir / smollm2.parent.name).mkdir(parents=True)
        (paths.cache_dir / smollm2.parent.name / smollm2.name).symlink_to(smollm2, target_is_directory=True)
    for chapter in runner.discover(paths):
        runner.run_chapter(chapter, profiles.resolve(chapter.name, "smoke"), paths, progress=False)
    return paths


@pytest.fixture(scope="session")
def built_site(smoke_book):
    """The HTML site rendered once from the executed smoke chapters; its directory (`_build/html`).

    Strict: a Sphinx warning (a broken reference, a missing glue key) fails the build and every test
    that uses the site. Used by tests/test_book.py and tests/test_site_browser.py (xdist group "book").
    """
    from llmbook.book import runner

    runner.render_site(smoke_book, strict=True)
    return smoke_book.html_dir
