"""The book's pretraining corpus: the data chapter's pipeline as one call, tokenized and cached.

:func:`clean_corpus` plants the raw crawl, writes it with real web pages to a WARC file as a crawler
would, trains the filters and runs the stages of
:mod:`llmbook.data.corpus_build` with the settings of a :class:`PretrainingDataConfig`.
:func:`pretraining_corpus` returns the survivors encoded by the book tokenizer from the artifact
cache (``tokens.npy``, saved with ``np.save`` and read with ``allow_pickle=False``, plus
``index.json`` with document offsets) or builds it with the same calls, so the pretraining chapter
runs alone. :func:`clean_corpus_spark` runs the same pipeline on Spark.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from llmbook.book import artifacts
from llmbook.book.profiles import PretrainingDataConfig, resolve
from llmbook.chain.tokenizer import END_OF_TEXT, book_tokenizer
from llmbook.data.corpus_build import (
    CleanCorpus,
    Filters,
    filters_from_state,
    filters_state,
    pipeline_stages,
    tokenize_documents,
    train_filters,
)
from llmbook.data.crawl import document_url, read_crawl, web_page_documents, write_crawl
from llmbook.data.dedup import NearDedupConfig
from llmbook.data.pipeline import CorpusStage, Doc, Stage, run_pipeline
from llmbook.data.raw_corpus import RawCorpus, RawCorpusConfig, make_raw_corpus
from llmbook.data.spark import run_pipeline_spark

BUILDER_VERSION = 3  # bump when the pipeline's logic changes, so cached corpora are rebuilt
TOKENS_FILE, INDEX_FILE = "tokens.npy", "index.json"


def raw_config(config: PretrainingDataConfig) -> RawCorpusConfig:
    """The raw-crawl settings of a chapter config."""
    fields = ("en_docs", "zh_docs", "zh_min_chars", "reference_frac", "near_dup_rate", "exact_dup_rate",
              "pii_rate", "boilerplate_rate", "junk_rate", "seed")
    return RawCorpusConfig(**{f: getattr(config, f) for f in fields})


def near_dedup_config(config: PretrainingDataConfig) -> NearDedupConfig:
    return NearDedupConfig(threshold=config.dedup_threshold, num_perm=config.num_perm, seed=config.seed + 1)


def chapter_stages(config: PretrainingDataConfig, filters: Filters) -> list[Stage | CorpusStage]:
    """The pipeline's stages with the chapter's threshold and dedup settings."""
    return pipeline_stages(filters, config.quality_threshold, near_dedup_config(config))


def crawl_through_warc(config: PretrainingDataConfig, raw: RawCorpus) -> dict[str, Any]:
    """The planted crawl plus ``config.web_pages`` real pages, written to a .warc.gz and read back as a
    pipeline reads a crawl: ``{"crawl": docs, "warc": read report, "warc_bytes": file size}``."""
    web = web_page_documents(config.web_pages, seed=config.seed)
    for i, d in enumerate(web):  # real pages: clean by construction, each its own duplicate cluster
        d["meta"].update(dirt="web_page", cluster=-1 - i)
    docs = [*raw.docs, *web]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "crawl.warc.gz"
        write_crawl(path, docs)
        crawl, report = read_crawl(path, {document_url(d): d for d in docs})
        return {"crawl": crawl, "warc": report, "warc_bytes": path.stat().st_size}


def clean_corpus(config: PretrainingDataConfig, progress: bool = False) -> CleanCorpus:
    """Plant the raw crawl, pass it through a WARC file, train the filters and run the pipeline;
    deterministic given ``config``."""
    raw = make_raw_corpus(raw_config(config))
    filters = train_filters(raw, config.classifier_train_docs, config.seed)
    fetched = crawl_through_warc(config, raw)
    kept, report = run_pipeline(fetched["crawl"], chapter_stages(config, filters), progress=progress)
    return CleanCorpus(raw=raw, filters=filters, kept=kept, report=report, **fetched)


def spark_stages(config: PretrainingDataConfig, state: dict[str, Any]) -> list[Stage | CorpusStage]:
    """``chapter_stages(config, filters_from_state(state))``: the stage factory each Spark partition calls."""
    return chapter_stages(config, filters_from_state(state))


def clean_corpus_spark(config: PretrainingDataConfig, spark: Any, num_partitions: int | None = None) -> CleanCorpus:
    """:func:`clean_corpus` with the pipeline run by :func:`llmbook.data.spark.run_pipeline_spark`.

    The raw crawl and the filters are made on the driver exactly as in-process; the filters are
    broadcast as plain arrays. The ``kept`` documents equal the in-process ones.
    """
    raw = make_raw_corpus(raw_config(config))
    filters = train_filters(raw, config.classifier_train_docs, config.seed)
    fetched = crawl_through_warc(config, raw)
    kept, report = run_pipeline_spark(
        spark, fetched["crawl"], partial(spark_stages, config), shared=filters_state(filters),
        num_partitions=num_partitions,
    )
    return CleanCorpus(raw=raw, filters=filters, kept=kept, report=report, **fetched)


def tokenizer_for(config: PretrainingDataConfig, progress: bool = False) -> tuple[Any, artifacts.Artifact]:
    """The book tokenizer of ``config.tokenizer_profile`` (cached or trained, as chapter 1 does)."""
    return book_tokenizer(resolve("tokenization", config.tokenizer_profile, seed=config.seed), progress=progress)


@dataclass(kw_only=True)
class PretrainingCorpus:
    """The tokenized clean corpus, as later chapters load it."""

    tokens: np.ndarray  # (N_tokens,) uint16/uint32 ids; documents end with eot_id
    offsets: np.ndarray  # (N_docs + 1,) int64; document i is tokens[offsets[i]:offsets[i+1]]
    doc_ids: list[str]  # source document ids
    sources: list[str]  # bundled corpus each document came from
    eot_id: int  # id of <|endoftext|>
    vocab_size: int  # size of the tokenizer's vocabulary
    tokenizer_key: str  # artifact key of the book tokenizer that encoded it
    artifact: artifacts.Artifact  # where it lives in the cache

    @property
    def n_docs(self) -> int:
        return len(self.doc_ids)

    def document(self, i: int) -> np.ndarray:
        """Token ids of document ``i`` (ending with ``eot_id``)."""
        return self.tokens[self.offsets[i] : self.offsets[i + 1]]


def artifact_config(config: PretrainingDataConfig, tokenizer_key: str) -> dict[str, Any]:
    """The fields that determine the corpus (and so its cache key)."""
    fields = ("en_docs", "zh_docs", "zh_min_chars", "reference_frac", "near_dup_rate", "exact_dup_rate", "pii_rate",
              "boilerplate_rate", "junk_rate", "classifier_train_docs", "quality_threshold", "dedup_threshold",
              "num_perm", "web_pages", "seed")
    return {"builder": BUILDER_VERSION, "tokenizer": tokenizer_key, **{f: getattr(config, f) for f in fields}}


def _writer(docs: list[Doc], tokenizer: Any, tokenizer_key: str):
    def write(directory: Path) -> None:
        eot = tokenizer.special_tokens[END_OF_TEXT]
        tokens, offsets = tokenize_documents([d["text"] for d in docs], tokenizer, eot)
        np.save(directory / TOKENS_FILE, tokens, allow_pickle=False)
        index = {
            "doc_ids": [d["id"] for d in docs],
            "sources": [d["meta"].get("source", "") for d in docs],
            "offsets": offsets.tolist(),
            "eot_id": eot,
            "vocab_size": tokenizer.vocab_size,
            "tokenizer_key": tokenizer_key,
            "dtype": str(tokens.dtype),
        }
        (directory / INDEX_FILE).write_text(json.dumps(index))

    return write


def load_corpus(artifact: artifacts.Artifact) -> PretrainingCorpus:
    """Read ``tokens.npy`` (no pickle) and ``index.json`` of a corpus artifact."""
    tokens = np.load(artifact.path / TOKENS_FILE, allow_pickle=False)
    index = json.loads((artifact.path / INDEX_FILE).read_text())
    return PretrainingCorpus(
        tokens=tokens, offsets=np.asarray(index["offsets"], dtype=np.int64), doc_ids=index["doc_ids"],
        sources=index["sources"], eot_id=index["eot_id"], vocab_size=index["vocab_size"],
        tokenizer_key=index["tokenizer_key"], artifact=artifact,
    )


def save_pretraining_corpus(docs: list[Doc], config: PretrainingDataConfig) -> PretrainingCorpus:
    """Store ``docs`` (the output of ``clean_corpus(config)``) as the corpus artifact of ``config``."""
    tokenizer, tok_artifact = tokenizer_for(config)
    key = artifact_config(config, tok_artifact.key)
    return load_corpus(artifacts.get_or_build("pretraining_corpus", key, _writer(docs, tokenizer, tok_artifact.key)))


def pretraining_corpus(config: PretrainingDataConfig, progress: bool = False) -> PretrainingCorpus:
    """The tokenized clean corpus for ``config``: from the cache, or built now exactly as the chapter does."""
    tokenizer, tok_artifact = tokenizer_for(config, progress=progress)

    def build(directory: Path) -> None:
        _writer(clean_corpus(config, progress=progress).kept, tokenizer, tok_artifact.key)(directory)

    artifact = artifacts.get_or_build("pretraining_corpus", artifact_config(config, tok_artifact.key), build)
    return load_corpus(artifact)
