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

# Two xdist workers share two cores: more torch threads per worker only spin and wait. The chapters'
# kernels and the ranks of distributed tests are processes of their own: they read the variable.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")

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


def _setup_site(site: Path, paths) -> None:
    """A scratch copy of the site sources, and a cache holding only the converted SmolLM2."""
    import shutil

    for name in ("_config.yml", "_toc.yml"):
        shutil.copy(REPO / name, site / name)
    # The hand-written pages and their static files (book/_static: the favicon); not book/chapters,
    # the executed copies of a local `llmbook build`: the chapters are executed by the fixtures below.
    shutil.copytree(
        REPO / "book", site / "book", ignore=lambda folder, names: ["chapters"] if Path(folder) == REPO / "book" else []
    )
    try:  # every other artifact is built from scratch in the scratch cache; this one is a conversion
        smollm2 = converted_smollm2()
    except ModuleNotFoundError:  # the model's package is missing: the chapters that need it say so
        return
    (paths.cache_dir / smollm2.parent.name).mkdir(parents=True)
    (paths.cache_dir / smollm2.parent.name / smollm2.name).symlink_to(smollm2, target_is_directory=True)


@pytest.fixture(scope="session")
def smoke_site(tmp_path_factory: pytest.TempPathFactory, worker_id: str):
    """The scratch site every `smoke` chapter runs into, one per test run, shared by the xdist workers.

    Chapters run where a test first needs them (:func:`smoke_chapter`, :func:`smoke_book`), each under a
    file lock, so the two workers run different chapters at the same time and never one twice. The
    artifact cache locks each artifact too: a chapter waits for another one's base model, not trains it again.
    """
    from filelock import FileLock

    from llmbook.book import runner

    root = tmp_path_factory.getbasetemp()
    root = root if worker_id == "master" else root.parent  # the run's directory, above each worker's own
    site = root / "smoke-site"
    paths = runner.BookPaths(
        chapters_dir=REPO / "chapters", site_root=site, runs_dir=site / "runs", cache_dir=site / ".cache"
    )
    with FileLock(str(root / "smoke-site.lock")):
        if not (site / ".ready").exists():
            site.mkdir(exist_ok=True)
            _setup_site(site, paths)
            (site / ".ready").touch()
    return paths


def _run_smoke(paths, chapter, *, wait: bool = True) -> bool:
    """Run ``chapter`` under its lock unless it is fresh; False if another worker holds the lock and not ``wait``."""
    from filelock import FileLock, Timeout

    from llmbook.book import profiles, runner

    lock = FileLock(str(paths.site_root / f".{chapter.name}.lock"), timeout=-1 if wait else 0)
    try:
        with lock:
            runner.run_chapter(chapter, profiles.resolve(chapter.name, "smoke"), paths, progress=False)
    except Timeout:
        return False
    return True


@pytest.fixture(scope="session")
def smoke_chapter(smoke_site):
    """``smoke_chapter(name)``: the site's paths once chapter ``name`` has run with the `smoke` profile."""
    from llmbook.book import runner

    def run(name: str):
        _run_smoke(smoke_site, runner.find_chapter(smoke_site, name))
        return smoke_site

    return run


@pytest.fixture(scope="session")
def smoke_book(smoke_site):
    """Every chapter executed with the `smoke` profile: first those no other worker is running, then the rest.

    Used by tests/test_chapters.py, tests/test_book.py and tests/test_site_browser.py (xdist group "book").
    """
    from llmbook.book import runner

    waiting = [chapter for chapter in runner.discover(smoke_site) if not _run_smoke(smoke_site, chapter, wait=False)]
    for chapter in waiting:
        _run_smoke(smoke_site, chapter)
    return smoke_site


@pytest.fixture(scope="session")
def built_site(smoke_book):
    """The HTML site rendered once from the executed smoke chapters; its directory (`_build/html`).

    Strict: a Sphinx warning (a broken reference, a missing glue key) fails the build and every test
    that uses the site. Used by tests/test_book.py and tests/test_site_browser.py (xdist group "book").
    """
    from contextlib import ExitStack

    from filelock import FileLock

    from llmbook.book import runner

    with ExitStack() as locks:  # no chapter is rewritten by the other worker while the site reads it
        for chapter in runner.discover(smoke_book):
            locks.enter_context(FileLock(str(smoke_book.site_root / f".{chapter.name}.lock")))
        runner.render_site(smoke_book, strict=True)
    return smoke_book.html_dir
