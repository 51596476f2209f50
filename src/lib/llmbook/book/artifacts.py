"""A content-addressed cache of what chapters build (tokenizers, corpora, checkpoints).

An artifact is a directory named by the hash of (kind, config). `get_or_build` returns it when a
complete copy exists and otherwise builds it with the given library call, so a later chapter reuses
what an earlier one made, and still runs alone when the cache is empty. A build that dies half way
leaves no directory that looks complete: the copy becomes visible only after `manifest.json` is
written and the directory is renamed into place. Two processes that need the same artifact at
once (two chapters run side by side) take turns on a file lock: the second finds the first's copy.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock

MANIFEST = "manifest.json"
CACHE_ENV = "LLMBOOK_CACHE"  # a user's choice of cache directory, for every chapter and script
_chosen: Path | None = None  # set by use_cache_dir (a chapter run names its cache explicitly)


def use_cache_dir(path: str | Path | None) -> None:
    """Make ``path`` the cache for this process (None goes back to ``$LLMBOOK_CACHE`` / the default)."""
    global _chosen
    _chosen = Path(path).resolve() if path is not None else None


def cache_dir() -> Path:
    """The directory named by :func:`use_cache_dir`, else `$LLMBOOK_CACHE`, else `.cache/llmbook` here."""
    return _chosen or Path(os.environ.get(CACHE_ENV, ".cache/llmbook")).resolve()


def artifact_key(kind: str, config: dict[str, Any]) -> str:
    """sha256 of the kind and the canonical JSON of its config (first 16 hex digits)."""
    canonical = json.dumps({"kind": kind, "config": config}, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


@dataclass(frozen=True, kw_only=True)
class Artifact:
    kind: str
    key: str
    path: Path  # the directory holding the artifact's files
    hit: bool  # True when it came from the cache, False when it was just built


def get_or_build(
    kind: str,
    config: dict[str, Any],
    build: Callable[[Path], None],
    *,
    root: Path | None = None,
) -> Artifact:
    """Return the cached artifact for (kind, config), building it with `build(directory)` if absent."""
    if not kind.isidentifier():
        raise ValueError(f"artifact kind {kind!r} must be an identifier")
    key = artifact_key(kind, config)
    root = root or cache_dir()
    final = root / kind / key
    if (final / MANIFEST).exists():
        return Artifact(kind=kind, key=key, path=final, hit=True)
    final.parent.mkdir(parents=True, exist_ok=True)
    (root / ".locks").mkdir(exist_ok=True)
    with FileLock(str(root / ".locks" / f"{kind}-{key}.lock")):
        if (final / MANIFEST).exists():  # built by another process while this one waited
            return Artifact(kind=kind, key=key, path=final, hit=True)
        _build_into(final, kind, key, config, build)
    return Artifact(kind=kind, key=key, path=final, hit=False)


def _build_into(final: Path, kind: str, key: str, config: dict[str, Any], build: Callable[[Path], None]) -> None:
    """Build in a staging directory, then rename it to ``final`` once its manifest is written."""
    staging = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=final.parent))
    try:
        started = time.perf_counter()
        build(staging)
        manifest = {"kind": kind, "key": key, "config": config, "build_seconds": time.perf_counter() - started}
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
        if final.exists():  # left by an interrupted build (a complete one would have been found under the lock)
            shutil.rmtree(final)
        staging.rename(final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def manifest(artifact: Artifact) -> dict[str, Any]:
    return json.loads((artifact.path / MANIFEST).read_text())
