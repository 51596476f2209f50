"""What chapter notebooks call: their parameters in, a typed config and an open run out; library source shown.

A chapter's ``parameters`` cell holds only what papermill injects (``profile``, ``params``,
``runs_dir``, ``cache_dir``); one call turns them into the chapter's validated config::

    cfg, run = open_chapter("attention", profile, params, runs_dir=runs_dir, cache_dir=cache_dir)
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from llmbook.book import artifacts, plots, report
from llmbook.book.profiles import ChapterConfig, TorchChapterConfig, require_hardware, resolve


def open_chapter(
    chapter: str,
    profile: str,
    params: dict[str, Any] | None = None,
    *,
    runs_dir: str | Path = report.DEFAULT_RUNS_DIR,
    cache_dir: str | Path | None = None,
) -> tuple[ChapterConfig, report.Run]:
    """Validate the parameters, check the host has the profile's GPUs, and open the chapter's run.

    Also points the artifact cache at ``cache_dir`` (None: ``$LLMBOOK_CACHE`` or the default), sets
    torch's thread count for chapters that run torch, and applies the book's figure style.
    """
    config = resolve(chapter, profile, **(params or {}))
    require_hardware(profile)
    artifacts.use_cache_dir(cache_dir)
    plots.use_book_style()
    if isinstance(config, TorchChapterConfig):
        config.apply_threads()
    return config, report.start(chapter, config, runs_dir)


def show_source(obj: Any) -> Any:
    """The library source of ``obj`` as highlighted Markdown, headed by its file and line range.

    A chapter shows the core of an algorithm this way instead of copying it, so the page always
    shows the code that ran.
    """
    from IPython.display import Markdown  # lazily: only notebooks display

    lines, first = inspect.getsourcelines(obj)
    parts = Path(inspect.getfile(obj)).resolve().parts
    top = len(parts) - 1 - parts[::-1].index("llmbook") if "llmbook" in parts else len(parts) - 1
    where = "/".join(parts[top:])  # e.g. llmbook/tokenization/bpe.py: no machine path on the page
    code = "".join(lines).rstrip()
    return Markdown(f"`{where}`, lines {first}–{first + len(lines) - 1}:\n\n```python\n{code}\n```")
