"""What a chapter notebook's first code cell calls: its parameters in, a typed config and an open run out.

A chapter's ``parameters`` cell holds only what papermill injects (``profile``, ``params``,
``runs_dir``, ``cache_dir``); one call turns them into the chapter's validated config::

    cfg, run = open_chapter("attention", profile, params, runs_dir=runs_dir, cache_dir=cache_dir)
"""

from __future__ import annotations

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
