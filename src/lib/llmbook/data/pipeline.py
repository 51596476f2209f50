"""A pretraining-data pipeline: stages are plain functions over a stream of documents.

A *document* is a dict ``{"id": str, "text": str, "meta": dict}``. A :class:`Stage` is a name
plus a function ``doc -> doc | str``: it returns the (possibly modified) document to keep it,
or a short *reason* string to drop it. :func:`run_pipeline` threads documents through the
stages in order and records, per stage, kept/dropped counts, bytes in/out, a ``Counter`` of
drop reasons and the time spent, so a chapter can draw the classic "funnel" of a web-data
pipeline (CCNet arXiv:1911.00359, RefinedWeb arXiv:2306.01116, FineWeb arXiv:2406.17557).

Corpus-level stages (exact/near dedup, repeated-line removal) need to see every document
before deciding; they are :class:`CorpusStage` objects whose function maps a list of
documents to ``(kept_docs, [(doc_id, reason), ...])``.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from llmbook.progress import ProgressBar

Doc = dict[str, Any]
StageFn = Callable[[Doc], "Doc | str"]
CorpusFn = Callable[[list[Doc]], tuple[list[Doc], list[tuple[str, str]]]]


@dataclass(kw_only=True)
class Stage:
    """A per-document stage: ``fn(doc)`` returns the kept (maybe edited) doc or a drop reason."""

    name: str  # shown in the report and the funnel plot
    fn: StageFn  # doc -> doc (keep) | str (drop, the string is the reason)


@dataclass(kw_only=True)
class CorpusStage:
    """A stage that needs the whole corpus at once (deduplication, repeated-line removal)."""

    name: str  # shown in the report
    fn: CorpusFn  # docs -> (kept docs, [(dropped id, reason)])


@dataclass(kw_only=True)
class StageReport:
    """What one stage did to the stream."""

    name: str  # stage name
    docs_in: int = 0  # documents that reached this stage
    kept: int = 0  # documents passed on
    dropped: int = 0  # documents removed (docs_in == kept + dropped)
    bytes_in: int = 0  # UTF-8 bytes of text that reached the stage
    bytes_out: int = 0  # UTF-8 bytes passed on (edits shrink text without dropping docs)
    reasons: Counter = field(default_factory=Counter)  # drop reason -> count
    seconds: float = 0.0  # wall time spent inside the stage function

    @property
    def docs_per_s(self) -> float:
        """Throughput of this stage in documents per second (inf when it took no time)."""
        return self.docs_in / self.seconds if self.seconds > 0 else float("inf")

    def as_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict (for ``pandas.DataFrame`` rows and metrics files)."""
        return {
            "stage": self.name,
            "docs_in": self.docs_in,
            "kept": self.kept,
            "dropped": self.dropped,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "seconds": self.seconds,
            "docs_per_s": self.docs_per_s,
            "reasons": dict(self.reasons),
        }


@dataclass(kw_only=True)
class PipelineReport:
    """Per-stage reports plus the per-document fate (``doc_id -> "stage: reason"``)."""

    stages: list[StageReport]  # one per stage, in order
    docs_in: int  # documents read from the input stream
    docs_out: int  # documents that survived every stage
    seconds: float  # total wall time
    dropped: dict[str, str]  # doc id -> "stage: reason" for every dropped document

    @property
    def docs_per_s(self) -> float:
        """End-to-end throughput in input documents per second."""
        return self.docs_in / self.seconds if self.seconds > 0 else float("inf")

    def rows(self) -> list[dict[str, Any]]:
        """One dict per stage (``pandas.DataFrame(report.rows())`` gives the funnel table)."""
        return [s.as_dict() for s in self.stages]

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly summary."""
        return {
            "docs_in": self.docs_in,
            "docs_out": self.docs_out,
            "seconds": self.seconds,
            "docs_per_s": self.docs_per_s,
            "stages": self.rows(),
        }


def _nbytes(doc: Doc) -> int:
    text = doc.get("text", "")
    return len(text.encode("utf-8", "surrogatepass")) if isinstance(text, str) else len(text)


def _check_doc(doc: Any) -> Doc:
    if not isinstance(doc, dict) or "id" not in doc or "text" not in doc:
        raise TypeError(
            f"documents must be dicts with keys 'id', 'text' (and optionally 'meta'), got {type(doc).__name__}"
        )
    doc.setdefault("meta", {})
    return doc


def apply_stage(stage: Stage, report: StageReport, doc: Doc) -> Doc | str:
    """Run one per-document stage on `doc`, counting it in `report`; the kept doc or the drop reason."""
    report.docs_in += 1
    report.bytes_in += _nbytes(doc)
    t0 = time.perf_counter()
    out = stage.fn(doc)
    report.seconds += time.perf_counter() - t0
    if isinstance(out, str):
        report.dropped += 1
        report.reasons[out] += 1
        return out
    if not isinstance(out, dict):
        raise TypeError(f"stage {stage.name!r} must return a document dict or a reason str, got {type(out).__name__}")
    report.kept += 1
    report.bytes_out += _nbytes(out)
    return out


def _apply(stage: Stage, report: StageReport, docs: Iterable[Doc], dropped: dict[str, str]) -> Iterator[Doc]:
    for doc in docs:
        out = apply_stage(stage, report, doc)
        if isinstance(out, str):
            dropped[str(doc["id"])] = f"{stage.name}: {out}"
        else:
            yield out


def run_pipeline(
    docs: Iterable[Doc], stages: list[Stage | CorpusStage], progress: bool = False
) -> tuple[list[Doc], PipelineReport]:
    """Run ``docs`` through ``stages`` in order; return ``(kept_docs, report)``.

    Per-document stages stream (a generator chain); a :class:`CorpusStage` materialises the
    stream that reached it. Every dropped document is counted once, under the first stage that
    dropped it, with its reason.
    """
    if not isinstance(stages, (list, tuple)) or not all(isinstance(s, (Stage, CorpusStage)) for s in stages):
        raise TypeError("stages must be a list of Stage or CorpusStage objects")
    t_start = time.perf_counter()
    counter = {"n": 0}
    dropped: dict[str, str] = {}

    def source() -> Iterator[Doc]:
        it: Iterable[Any] = docs
        if progress:
            it = ProgressBar(docs, desc="pipeline", unit="doc")
        for d in it:
            counter["n"] += 1
            yield _check_doc(d)

    stream: Iterable[Doc] = source()
    reports: list[StageReport] = []
    for stage in stages:
        rep = StageReport(name=stage.name)
        reports.append(rep)
        if isinstance(stage, Stage):
            stream = _apply(stage, rep, stream, dropped)
        else:
            batch = list(stream)
            rep.docs_in = len(batch)
            rep.bytes_in = sum(_nbytes(d) for d in batch)
            t0 = time.perf_counter()
            kept, gone = stage.fn(batch)
            rep.seconds = time.perf_counter() - t0
            for doc_id, reason in gone:
                rep.reasons[reason] += 1
                dropped[str(doc_id)] = f"{stage.name}: {reason}"
            rep.kept, rep.dropped = len(kept), len(gone)
            if rep.kept + rep.dropped != rep.docs_in:
                raise ValueError(
                    f"corpus stage {stage.name!r} returned {rep.kept} kept + {rep.dropped} dropped "
                    f"for {rep.docs_in} input documents"
                )
            rep.bytes_out = sum(_nbytes(d) for d in kept)
            stream = iter(kept)
    out = list(stream)
    return out, PipelineReport(
        stages=reports,
        docs_in=counter["n"],
        docs_out=len(out),
        seconds=time.perf_counter() - t_start,
        dropped=dropped,
    )


def filter_stage(name: str, predicate: Callable[[str], str | None]) -> Stage:
    """Wrap ``predicate(text) -> reason | None`` (None = keep) as a :class:`Stage`."""

    def fn(doc: Doc) -> Doc | str:
        reason = predicate(doc["text"])
        return doc if reason is None else reason

    return Stage(name=name, fn=fn)


def map_stage(name: str, transform: Callable[[str], str], drop_empty: bool = True) -> Stage:
    """Wrap ``transform(text) -> text`` as a :class:`Stage`; an emptied document is dropped as ``"empty"``."""

    def fn(doc: Doc) -> Doc | str:
        text = transform(doc["text"])
        if drop_empty and not text.strip():
            return "empty"
        return {**doc, "text": text}

    return Stage(name=name, fn=fn)
