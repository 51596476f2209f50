"""Execute chapters with papermill, skip the ones that are up to date, render the site.

A chapter is `chapters/NN_name.ipynb`. Running it with a profile executes it into
`book/chapters/NN_name.ipynb` (outputs and glued numbers included) and writes
`runs/<name>/last_run.json`. The run's hash covers the source notebook, the resolved parameters
and every library source file, so an unchanged chapter is not executed again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmbook.book import profiles
from llmbook.book.artifacts import CACHE_ENV

CHAPTER_FILE = re.compile(r"^(\d{2})_([a-z0-9_]+)\.ipynb$")
LIBRARY_DIR = Path(__file__).resolve().parents[1]  # the llmbook package: its source is part of every run hash


@dataclass(frozen=True, kw_only=True)
class Chapter:
    number: int
    name: str  # e.g. "tokenization"; the key for profiles, runs/ and the CLI
    source: Path  # the unexecuted notebook under chapters/

    @property
    def stem(self) -> str:
        return self.source.stem  # "01_tokenization"


@dataclass(frozen=True, kw_only=True)
class BookPaths:
    chapters_dir: Path  # source notebooks
    site_root: Path  # holds _config.yml, _toc.yml and book/; executed chapters go to book/chapters
    runs_dir: Path  # run records and metrics
    cache_dir: Path  # artifacts shared between chapters

    @classmethod
    def at(cls, root: Path) -> BookPaths:
        root = root.resolve()
        return cls(
            chapters_dir=root / "chapters",
            site_root=root,
            runs_dir=root / "runs",
            cache_dir=Path(os.environ.get(CACHE_ENV, root / ".cache" / "llmbook")).resolve(),
        )

    @property
    def executed_dir(self) -> Path:
        return self.site_root / "book" / "chapters"

    @property
    def html_dir(self) -> Path:
        return self.site_root / "_build" / "html"


class ChapterFailed(RuntimeError):
    """A chapter's notebook raised; the message names the chapter, the cell and the exception."""

    def __init__(self, chapter: str, cell: int | None, error: str):
        self.chapter, self.cell, self.error = chapter, cell, error
        where = f"in cell {cell} of its notebook" if cell is not None else "outside its cells (kernel start or crash)"
        super().__init__(f"chapter {chapter!r} failed {where}: {error}")


def find_root(start: Path | None = None) -> Path:
    """The nearest directory at or above `start` holding `chapters/` and `_toc.yml`."""
    here = (start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / "chapters").is_dir() and (candidate / "_toc.yml").is_file():
            return candidate
    raise FileNotFoundError(f"no llmbook checkout (chapters/ and _toc.yml) at or above {here}")


def discover(paths: BookPaths) -> list[Chapter]:
    chapters = []
    for source in sorted(paths.chapters_dir.glob("*.ipynb")):
        match = CHAPTER_FILE.match(source.name)
        if match:
            chapters.append(Chapter(number=int(match[1]), name=match[2], source=source))
    return chapters


def find_chapter(paths: BookPaths, key: str) -> Chapter:
    """Look a chapter up by name ("tokenization"), number ("1", "01") or file stem ("01_tokenization")."""
    chapters = discover(paths)
    for chapter in chapters:
        if key in (chapter.name, chapter.stem, f"{chapter.number:02d}", str(chapter.number)):
            return chapter
    names = ", ".join(c.name for c in chapters) or "none"
    raise profiles.ParameterError(f"no chapter {key!r}; chapters: {names}")


def library_hash() -> str:
    digest = hashlib.sha256()
    for path in sorted(LIBRARY_DIR.rglob("*.py")):
        digest.update(str(path.relative_to(LIBRARY_DIR)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def run_hash(chapter: Chapter, config: profiles.ChapterConfig) -> str:
    """sha256 over (source notebook, resolved parameters, library source)."""
    digest = hashlib.sha256(chapter.source.read_bytes())
    digest.update(json.dumps(config.as_dict(), sort_keys=True, default=str).encode())
    digest.update(library_hash().encode())
    return digest.hexdigest()


def last_run(chapter: Chapter, paths: BookPaths) -> dict[str, Any] | None:
    path = paths.runs_dir / chapter.name / "last_run.json"
    return json.loads(path.read_text()) if path.exists() else None


def state(chapter: Chapter, config: profiles.ChapterConfig, paths: BookPaths) -> str:
    """'fresh' (executed copy matches), 'failed' (same inputs failed), 'stale' or 'never run'."""
    record = last_run(chapter, paths)
    if record is None:
        return "never run"
    if record["hash"] != run_hash(chapter, config):
        return "stale"
    if record["status"] == "failed":
        return "failed"
    return "fresh" if (paths.executed_dir / chapter.source.name).exists() else "stale"


@dataclass(frozen=True, kw_only=True)
class Outcome:
    chapter: str
    executed: bool  # False when the chapter was fresh and skipped
    output: Path
    seconds: float


def run_chapter(
    chapter: Chapter,
    config: profiles.ChapterConfig,
    paths: BookPaths,
    *,
    overrides: dict[str, Any] | None = None,
    force: bool = False,
    progress: bool = True,
) -> Outcome:
    """Execute one chapter (unless fresh); raise ChapterFailed naming the cell that failed.

    The kernel gets the profile, the overrides and the run and cache directories as papermill
    parameters: the chapter's first cell passes them to :func:`llmbook.book.notebook.open_chapter`.
    """
    import papermill  # lazily: `llmbook list` and the tests of parameter errors never start a kernel

    output = paths.executed_dir / chapter.source.name
    if not force and state(chapter, config, paths) == "fresh":
        return Outcome(chapter=chapter.name, executed=False, output=output, seconds=0.0)
    output.parent.mkdir(parents=True, exist_ok=True)
    params = {k: list(v) if isinstance(v, tuple) else v for k, v in (overrides or {}).items() if v is not None}
    parameters = {"profile": config.profile, "params": params, "runs_dir": str(paths.runs_dir),
                  "cache_dir": str(paths.cache_dir)}
    record = {"hash": run_hash(chapter, config), "profile": config.profile, "parameters": params}
    started = time.perf_counter()
    env = {
        # Figures go into the notebook, whatever backend the caller's environment names.
        "MPLBACKEND": "module://matplotlib_inline.backend_inline",
    }
    try:
        with _environment(env):
            papermill.execute_notebook(
                str(chapter.source),
                str(output),
                parameters=parameters,
                kernel_name="python3",
                cwd=str(paths.site_root),
                progress_bar=progress,
                log_output=False,
            )
    except papermill.PapermillExecutionError as error:
        _save_last_run(chapter, paths, {**record, "status": "failed", "error": f"{error.ename}: {error.evalue}"})
        cell = _source_cell(chapter, error.source)
        raise ChapterFailed(chapter.name, cell, f"{error.ename}: {error.evalue}") from None
    except Exception as error:  # the kernel did not start or died
        _save_last_run(chapter, paths, {**record, "status": "failed", "error": repr(error)})
        raise ChapterFailed(chapter.name, None, f"{type(error).__name__}: {error}") from error
    _fold_parameters(output)
    seconds = time.perf_counter() - started
    _save_last_run(chapter, paths, {**record, "status": "ok", "seconds": round(seconds, 2)})
    return Outcome(chapter=chapter.name, executed=True, output=output, seconds=seconds)


def render_site(paths: BookPaths, *, strict: bool = False) -> Path:
    """Build the HTML site from the executed notebooks; `strict` turns Sphinx warnings into errors."""
    command = [str(Path(sys.executable).parent / "jupyter-book"), "build", str(paths.site_root)]
    if strict:
        command += ["--warningiserror", "--nitpick", "--keep-going"]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-40:])
        raise RuntimeError(f"jupyter-book build failed (exit {result.returncode}):\n{tail}")
    return paths.html_dir / "index.html"


def _source_cell(chapter: Chapter, failed_source: str) -> int | None:
    """1-based position of the failed cell in the source notebook (papermill adds cells to its output)."""
    import nbformat

    for position, cell in enumerate(nbformat.read(chapter.source, as_version=4).cells, start=1):
        if cell.cell_type == "code" and cell.source == failed_source:
            return position
    return None


def _fold_parameters(executed: Path) -> None:
    """Fold the parameter cell papermill injects: the chapter shows its resolved config as a table anyway."""
    import nbformat  # lazily, as papermill: the CLI's other commands never read notebooks

    notebook = nbformat.read(executed, as_version=4)
    for cell in notebook.cells:
        tags = cell.metadata.setdefault("tags", [])
        if "injected-parameters" in tags and "hide-input" not in tags:
            tags.append("hide-input")
    nbformat.write(notebook, executed)


def _save_last_run(chapter: Chapter, paths: BookPaths, record: dict[str, Any]) -> None:
    path = paths.runs_dir / chapter.name / "last_run.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, sort_keys=True, default=str))


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the kernel papermill starts, then restore them."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
