"""The pretraining-data pipeline's pieces: learned filters, the stage list, and the token-array layout.

The pipeline of the pretraining-data chapter, stage by stage:

    extract (HTML -> main text) -> normalize -> langid -> Gopher rules -> word list -> quality classifier
    -> PII masking -> exact dedup -> repeated lines (CCNet) -> MinHash-LSH near dedup.

:func:`train_filters` fits the two learned filters (naive Bayes language ID and the hashed n-gram
quality classifier) on reference text and separately generated junk; :func:`pipeline_stages` lists
the stages; :func:`tokenize_documents` encodes the survivors, one ``<|endoftext|>`` after each
document, into one flat ``uint16`` (``uint32`` for vocabularies over 65,536) array. The book's cached
corpus built from these lives in :mod:`llmbook.chain.corpus`.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

import numpy as np

from llmbook.data.crawl import extract_stage
from llmbook.data.dedup import NearDedupConfig, exact_dedup, near_dedup, remove_repeated_lines
from llmbook.data.langid import LangIdConfig, NaiveBayesLangId, langid_stage
from llmbook.data.normalize import normalize_stage
from llmbook.data.pii import pii_stage
from llmbook.data.pipeline import CorpusStage, Doc, PipelineReport, Stage
from llmbook.data.quality import (
    BAD_WORDS_EN,
    QualityClassifier,
    QualityClassifierConfig,
    bad_word_stage,
    classifier_stage,
    gopher_stage,
)
from llmbook.data.raw_corpus import RawCorpus, code_snippets, junk_documents
from llmbook.data.warc import WarcReadReport

# Words of C4's list that are names or everyday words in 19th-century prose ("Moby Dick", "weathercock"):
# the chapter shows what the full list removes; the pipeline leaves these out.
AMBIGUOUS_WORDS = frozenset({"dick", "cock"})
CLASSIFIER_NEGATIVE_KINDS = ("word_salad", "spam", "menu")  # junk the quality classifier is trained to reject


def windows(texts: list[str], chars: int, n: int, seed: int = 0) -> list[str]:
    """``n`` random windows of ``chars`` characters from ``texts`` (stripped; seeded)."""
    r = random.Random(seed)
    pool = [t for t in texts if len(t) > chars]
    if not pool:
        raise ValueError(f"texts must contain at least one text longer than chars={chars}")
    out = []
    for _ in range(n):
        t = r.choice(pool)
        a = r.randrange(len(t) - chars)
        out.append(t[a : a + chars].strip() or t[:chars])
    return out


@dataclass(kw_only=True)
class Filters:
    """The learned filters and the data they were trained on."""

    langid: NaiveBayesLangId  # en / zh / code
    quality: QualityClassifier  # p(good) of a document
    quality_losses: list[float]  # mean log-loss per training epoch


def filters_state(filters: Filters) -> dict[str, Any]:
    """Trained filters as numpy arrays + JSON strings: what Spark broadcasts to its workers."""
    lid, q = filters.langid, filters.quality
    return {
        "langid_cfg": json.dumps(asdict(lid.cfg)),
        "langid_labels": json.dumps(lid.labels),
        "langid_log_prior": lid.log_prior,
        "langid_log_prob": lid.log_prob,  # (classes, V)
        "langid_seen": lid.seen,  # (V,)
        "quality_cfg": json.dumps(asdict(q.cfg)),
        "quality_w": q.w,
        "quality_b": float(q.b),
        "quality_losses": json.dumps(list(filters.quality_losses)),
    }


def filters_from_state(state: dict[str, Any]) -> Filters:
    """Rebuild :class:`Filters` from :func:`filters_state` (no copies of the arrays)."""
    lcfg = json.loads(state["langid_cfg"])
    lid = NaiveBayesLangId(LangIdConfig(**{**lcfg, "ngrams": tuple(lcfg["ngrams"])}))
    lid.labels = json.loads(state["langid_labels"])
    lid.log_prior, lid.log_prob, lid.seen = state["langid_log_prior"], state["langid_log_prob"], state["langid_seen"]
    qcfg = json.loads(state["quality_cfg"])
    q = QualityClassifier(QualityClassifierConfig(**{**qcfg, "ngrams": tuple(qcfg["ngrams"])}))
    q.w, q.b = state["quality_w"], float(state["quality_b"])
    return Filters(langid=lid, quality=q, quality_losses=json.loads(state["quality_losses"]))


def langid_training_set(raw: RawCorpus, chars: int, n: int, seed: int) -> tuple[list[str], list[str]]:
    """Labelled snippets of English and Chinese reference text and standard-library code."""
    by_lang = {lang: [d["text"] for d in raw.reference if d["meta"]["lang"] == lang] for lang in ("en", "zh")}
    texts, labels = [], []
    for k, (lang, pool) in enumerate(by_lang.items()):
        if pool:
            texts += windows(pool, chars, n, seed + k)
            labels += [lang] * n
    texts += [c[:chars] for c in code_snippets(n, chars=max(chars, 200), seed=seed + 1000)]
    labels += ["code"] * n
    return texts, labels


def train_filters(raw: RawCorpus, train_docs: int, seed: int) -> Filters:
    """Fit language ID (200-character snippets) and the quality classifier (reference text vs other-seed junk).

    ``train_docs`` windows per class train each filter; the seeds differ from the crawl's so the
    junk the classifier learns from is not the junk it later filters.
    """
    texts, labels = langid_training_set(raw, 200, train_docs, seed + 7)
    langid = NaiveBayesLangId().fit(texts, labels)
    good = windows([d["text"] for d in raw.reference], 250, train_docs, seed + 11)
    per_kind = -(-train_docs // len(CLASSIFIER_NEGATIVE_KINDS))
    bad = [t for kind in CLASSIFIER_NEGATIVE_KINDS
           for t in junk_documents(kind, per_kind, raw.reference, seed=seed + 13)]
    quality = QualityClassifier()
    losses = quality.fit(good + bad, [1] * len(good) + [0] * len(bad))
    return Filters(langid=langid, quality=quality, quality_losses=losses)


def pipeline_stages(
    filters: Filters, quality_threshold: float, near_dedup_cfg: NearDedupConfig
) -> list[Stage | CorpusStage]:
    """The chapter's stages, in order (see the module docstring).

    Corpus stages are ``functools.partial`` objects so :func:`llmbook.data.spark.run_pipeline_spark`
    can map them to their distributed versions.
    """
    return [
        extract_stage(),
        normalize_stage(),
        langid_stage(filters.langid, keep=("en", "zh"), fast_scripts=("zh",)),
        gopher_stage(),
        bad_word_stage(en=BAD_WORDS_EN - AMBIGUOUS_WORDS),
        classifier_stage(filters.quality, quality_threshold),
        pii_stage(),
        CorpusStage(name="exact_dedup", fn=exact_dedup),
        CorpusStage(name="repeated_lines", fn=partial(remove_repeated_lines, min_docs=3)),
        CorpusStage(name="near_dedup", fn=partial(near_dedup, cfg=near_dedup_cfg)),
    ]


@dataclass(kw_only=True)
class CleanCorpus:
    """Everything one run of the pipeline produced (see :func:`llmbook.chain.corpus.clean_corpus`)."""

    raw: RawCorpus  # the planted crawl and the reference documents
    crawl: list[Doc]  # what the pipeline read: the WARC's responses (raw.docs as pages, plus real web pages)
    warc: WarcReadReport  # what reading the WARC file skipped, by reason
    warc_bytes: int  # size of the .warc.gz file
    filters: Filters  # trained language ID and quality classifier
    kept: list[Doc]  # surviving documents (PII masked, boilerplate removed)
    report: PipelineReport  # per-stage counts, bytes, reasons, seconds


def tokenize_documents(texts: list[str], tokenizer: Any, eot_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of all texts, ``eot_id`` after each, as one flat array; plus offsets (N + 1,).

    Document ``i`` is ``tokens[offsets[i]:offsets[i + 1]]`` (its last id is ``eot_id``). Encoding
    goes through ``tokenizer.to_tiktoken()`` when available (the same ids, tested in the
    tokenization chapter) because it is ~100x faster than the pure-Python encoder.
    """
    encoder = tokenizer.to_tiktoken() if hasattr(tokenizer, "to_tiktoken") else tokenizer
    if hasattr(encoder, "encode_ordinary_batch"):
        ids = encoder.encode_ordinary_batch(texts)
    else:
        ids = [encoder.encode_ordinary(t) for t in texts]
    vocab = int(getattr(tokenizer, "vocab_size", max([eot_id, *(max(x, default=0) for x in ids)]) + 1))
    dtype = np.uint16 if vocab <= 1 << 16 else np.uint32
    lengths = np.array([len(x) + 1 for x in ids], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    tokens = np.empty(int(offsets[-1]), dtype=dtype)
    for i, x in enumerate(ids):
        tokens[offsets[i] : offsets[i + 1] - 1] = x
        tokens[offsets[i + 1] - 1] = eot_id
    return tokens, offsets
