"""File-based deduplication: one document per file, results written under the same names.

The entry points of :mod:`llmbook.data.dedup` for a corpus kept as files (CS336's layout):

* :func:`exact_line_dedup_files`: two streaming passes over the files, line by line, holding only
  the line keys; each file is rewritten with its repeated lines removed (raw keys compare the
  line's bytes, so any encoding works).
* :func:`minhash_dedup_files`: MinHash signatures in batches of files, LSH candidate pairs with
  b bands of r = num_hashes / b rows, optional exact Jaccard verification (the shingle sets of
  candidate files only), connected components; the first file of each cluster in input order
  and every file without a duplicate are copied to ``output_dir`` unchanged.

Output names are the input base names, so two inputs with one base name, or an output that
would overwrite its input, raise ``ValueError`` before anything is written.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from llmbook.data.dedup import (
    LINE_COUNTS,
    NearDedupConfig,
    _check_line_mode,
    cluster_labels,
    line_key,
    lsh_candidate_pairs,
    signatures,
    verify_pairs,
)

PathLike = str | os.PathLike


@dataclass(kw_only=True)
class FileDedupReport:
    """What a file-based dedup wrote and removed."""

    outputs: list[Path]  # files written to output_dir, in input order
    lines_in: int = 0  # exact line dedup: lines read over all files
    lines_removed: int = 0  # exact line dedup: lines left out
    clusters: list[list[Path]] = field(default_factory=list)  # minhash: inputs grouped as duplicates (>= 2 each)
    pairs: set[tuple[int, int]] = field(default_factory=set)  # minhash: detected pairs (input indices, i < j)


def _targets(input_paths: Sequence[PathLike], output_dir: PathLike) -> tuple[list[Path], list[Path]]:
    """(inputs, output paths) after checking names are distinct and no input is overwritten."""
    if isinstance(input_paths, (str, os.PathLike)):
        raise ValueError("input_paths must be a list of paths, got a single path")
    inputs = [Path(p) for p in input_paths]
    out_dir = Path(output_dir)
    seen: dict[str, Path] = {}
    for p in inputs:
        if not p.is_file():
            raise FileNotFoundError(f"input_paths: {p} is not a file")
        if p.name in seen:
            raise ValueError(f"input_paths: {seen[p.name]} and {p} share the name {p.name!r}; outputs would collide")
        seen[p.name] = p
    outputs = [out_dir / p.name for p in inputs]
    for p, o in zip(inputs, outputs):
        if o.exists() and o.resolve() == p.resolve():
            raise ValueError(f"output_dir {out_dir} holds the input {p}; writing would overwrite it")
    out_dir.mkdir(parents=True, exist_ok=True)
    return inputs, outputs


def _lines(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        yield from f  # each line with its b"\n" (the last may lack one)


def _key(line: bytes, mode: str) -> bytes:
    body = line[:-1] if line.endswith(b"\n") else line
    if mode == "raw":
        return hashlib.sha1(body).digest()  # = line_key(body.decode(), "raw") for UTF-8 text
    return line_key(body.decode("utf-8", "surrogateescape"), "normalized")


def _counted(line: bytes, mode: str) -> bool:
    """Raw mode counts every line; normalized mode (CCNet) skips blank ones."""
    return mode == "raw" or bool(line.strip())


def exact_line_dedup_files(
    input_paths: Sequence[PathLike],
    output_dir: PathLike,
    mode: str = "raw",
    min_count: int = 2,
    count: str = "lines",
) -> FileDedupReport:
    """Write each file to ``output_dir`` under its own name without the lines repeated across all files.

    A line whose key (:func:`~llmbook.data.dedup.line_key` in ``mode``: ``"raw"`` bytes or
    ``"normalized"`` CCNet) is counted >= ``min_count`` times (``count="lines"``: every copy;
    ``"documents"``: once per file) is removed, every copy of it; the other lines are written
    byte for byte. Defaults are CS336's exact line dedup.
    """
    _check_line_mode(mode)
    if count not in LINE_COUNTS:
        raise ValueError(f"count must be one of {LINE_COUNTS}, got {count!r}")
    if not isinstance(min_count, int) or min_count < 2:
        raise ValueError(f"min_count must be an int >= 2, got {min_count!r}")
    inputs, outputs = _targets(input_paths, output_dir)
    counts: Counter[bytes] = Counter()
    for p in inputs:
        keys = (_key(ln, mode) for ln in _lines(p) if _counted(ln, mode))
        counts.update(set(keys) if count == "documents" else keys)
    report = FileDedupReport(outputs=outputs)
    for p, o in zip(inputs, outputs):
        with o.open("wb") as out:
            for ln in _lines(p):
                report.lines_in += 1
                if _counted(ln, mode) and counts[_key(ln, mode)] >= min_count:
                    report.lines_removed += 1
                else:
                    out.write(ln)
    return report


def _read_text(path: Path) -> str:
    return path.read_bytes().decode("utf-8", "replace")


def minhash_dedup_files(
    input_paths: Sequence[PathLike],
    output_dir: PathLike,
    num_hashes: int = 128,
    num_bands: int | None = None,
    ngrams: int = 5,
    jaccard_threshold: float = 0.8,
    verify: bool = True,
    normalize: bool = True,
    seed: int = 1,
    batch: int = 256,
) -> FileDedupReport:
    """Near-duplicate files (MinHash LSH over word ``ngrams``); keep the first of each cluster in input order.

    ``num_bands`` b splits the ``num_hashes`` signature into b bands of ``num_hashes // b`` rows
    (None: :func:`~llmbook.data.dedup.optimal_bands` for the threshold); files sharing a band are
    candidates. ``verify=True`` keeps the candidate pairs whose exact Jaccard of shingle sets is
    >= ``jaccard_threshold`` (False: every candidate pair is a duplicate). ``normalize`` shingles
    :func:`~llmbook.data.dedup.normalize_text` of each file. Kept files are copied unchanged.
    """
    cfg = NearDedupConfig(
        threshold=jaccard_threshold, num_perm=num_hashes, ngram=ngrams, seed=seed, bands=num_bands,
        normalize=normalize, verify=verify, verify_with="exact",
    )
    if not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive int, got {batch!r}")
    inputs, outputs = _targets(input_paths, output_dir)
    parts = [signatures([_read_text(p) for p in inputs[i : i + batch]], cfg) for i in range(0, len(inputs), batch)]
    sig = np.concatenate(parts) if parts else np.empty((0, num_hashes), np.uint32)  # (N, P)
    b, r = cfg.band_rows()
    pairs = lsh_candidate_pairs(sig, b, r)
    if verify:
        pairs = verify_pairs(pairs, _LazyTexts(inputs), None, cfg)
    labels = cluster_labels(len(inputs), pairs)
    groups: dict[int, list[Path]] = {}
    for i, lab in enumerate(labels):
        groups.setdefault(int(lab), []).append(inputs[i])
    kept = [o for i, o in enumerate(outputs) if labels[i] == i]
    for i, o in enumerate(outputs):
        if labels[i] == i:
            shutil.copyfile(inputs[i], o)
    return FileDedupReport(outputs=kept, clusters=[g for g in groups.values() if len(g) > 1], pairs=pairs)


class _LazyTexts(Sequence[str]):
    """File texts read on access: exact verification reads only the files in candidate pairs."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):  # type: ignore[override]
        return _read_text(self.paths[i])
