"""Numbers from a chapter run: glued into the prose and written to `runs/<chapter>/<profile>/metrics.json`.

A notebook opens one run with :func:`llmbook.book.notebook.open_chapter` (which calls `start`) and
then calls `run.record(name, value)` for every number its prose quotes. The prose shows the value with
myst-nb's `{glue:text}` role, so no result is ever typed by hand; the tests read the same numbers back
from `metrics.json`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmbook.book.profiles import ChapterConfig

DEFAULT_RUNS_DIR = Path("runs")  # under the book's root, where the runner starts every kernel


@dataclass(kw_only=True)
class Run:
    chapter: str
    profile: str
    config: dict[str, Any]
    runs_dir: Path = DEFAULT_RUNS_DIR  # metrics go to runs_dir/<chapter>/<profile>/metrics.json
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return Path(self.runs_dir).resolve() / self.chapter / self.profile / "metrics.json"

    def record(self, name: str, value: Any, *, glue: bool = True) -> None:
        """Store `value` under `name`, glue it for the prose, rewrite metrics.json.

        Returns nothing, so a cell that ends with a record shows no stray echoed value.
        """
        if not name.isidentifier():
            raise ValueError(f"metric name {name!r} must be an identifier (letters, digits, _)")
        value = _plain(value)
        self.metrics[name] = value
        if glue:
            _glue(name, value)
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"chapter": self.chapter, "profile": self.profile, "config": self.config, "metrics": self.metrics}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str))
        tmp.replace(self.path)  # a reader never sees half a file


_active: Run | None = None


def start(chapter: str, config: ChapterConfig, runs_dir: str | Path = DEFAULT_RUNS_DIR) -> Run:
    """Open the run that `record` writes to; earlier metrics of the same chapter and profile are replaced."""
    global _active
    _active = Run(chapter=chapter, profile=config.profile, config=config.as_dict(), runs_dir=Path(runs_dir))
    _active.save()
    return _active


def record(name: str, value: Any, *, glue: bool = True) -> None:
    """Record a number of the active run (see `start`) and glue it for the prose."""
    if _active is None:
        raise RuntimeError("no active run: call llmbook.book.report.start(chapter, config) first")
    _active.record(name, value, glue=glue)


def load_metrics(chapter: str, profile: str, runs_dir: str | Path = DEFAULT_RUNS_DIR) -> dict[str, Any]:
    """The metrics a finished run recorded (raises FileNotFoundError naming the file)."""
    path = Path(runs_dir) / chapter / profile / "metrics.json"
    if not path.exists():
        raise FileNotFoundError(f"no metrics for chapter {chapter!r} profile {profile!r}: {path} is missing")
    return json.loads(path.read_text())["metrics"]


def _plain(value: Any) -> Any:
    """numpy/torch scalars to Python numbers, so JSON and glue show the same value."""
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"refusing to record a non-finite number ({value})")
    return value


def _glue(name: str, value: Any) -> None:
    try:
        from myst_nb import glue
    except ImportError:  # running outside the book (a script): metrics.json still has the value
        return
    glue(name, value, display=False)
