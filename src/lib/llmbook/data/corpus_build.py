"""The book's pretraining corpus: raw crawl -> filters -> PII masking -> dedup -> token ids, cached.

:func:`clean_corpus` is the whole pipeline of the pretraining-data chapter as one library
call: it plants the raw crawl (:mod:`llmbook.data.raw_corpus`), trains the two learned filters
(naive Bayes language ID and the hashed n-gram quality classifier) on reference text and
separately generated junk, and runs

    normalize -> langid -> Gopher rules -> word list -> quality classifier -> PII masking
    -> exact dedup -> repeated lines (CCNet) -> MinHash-LSH near dedup.

:func:`tokenize_documents` encodes the survivors with the book tokenizer, one ``<|endoftext|>``
after each document, into one flat ``uint16`` (``uint32`` for vocabularies over 65,536) array.
:func:`pretraining_corpus` returns that array from the artifact cache (``tokens.npy``, saved
with ``np.save`` and read with ``allow_pickle=False``, plus ``index.json`` with document offsets)
or builds it with the same calls, so the pretraining chapter runs alone.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from llmbook import artifacts
from llmbook.data.dedup import NearDedupConfig, exact_dedup, near_dedup, remove_repeated_lines
from llmbook.data.langid import NaiveBayesLangId, langid_stage
from llmbook.data.normalize import normalize_stage
from llmbook.data.pii import pii_stage
from llmbook.data.pipeline import CorpusStage, Doc, PipelineReport, Stage, run_pipeline
from llmbook.data.quality import BAD_WORDS_EN, QualityClassifier, bad_word_stage, classifier_stage, gopher_stage
from llmbook.data.raw_corpus import RawCorpus, RawCorpusConfig, code_snippets, junk_documents, make_raw_corpus
from llmbook.profiles.pretraining_data import PretrainingDataConfig

BUILDER_VERSION = 1  # bump when the pipeline's logic changes, so cached corpora are rebuilt
TOKENS_FILE, INDEX_FILE = "tokens.npy", "index.json"
# Words of C4's list that are names or everyday words in 19th-century prose ("Moby Dick", "weathercock"):
# the chapter shows what the full list removes; the pipeline leaves these out.
AMBIGUOUS_WORDS = frozenset({"dick", "cock"})
CLASSIFIER_NEGATIVE_KINDS = ("word_salad", "spam", "menu")  # junk the quality classifier is trained to reject


def raw_config(config: PretrainingDataConfig) -> RawCorpusConfig:
    """The raw-crawl settings of a chapter config."""
    fields = ("en_docs", "zh_docs", "zh_min_chars", "reference_frac", "near_dup_rate", "exact_dup_rate",
              "pii_rate", "boilerplate_rate", "junk_rate", "seed")
    return RawCorpusConfig(**{f: getattr(config, f) for f in fields})


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


def train_filters(raw: RawCorpus, config: PretrainingDataConfig) -> Filters:
    """Fit language ID (200-character snippets) and the quality classifier (reference text vs other-seed junk)."""
    texts, labels = langid_training_set(raw, 200, config.classifier_train_docs, config.seed + 7)
    langid = NaiveBayesLangId().fit(texts, labels)
    good = windows([d["text"] for d in raw.reference], 250, config.classifier_train_docs, config.seed + 11)
    per_kind = -(-config.classifier_train_docs // len(CLASSIFIER_NEGATIVE_KINDS))
    bad = [t for kind in CLASSIFIER_NEGATIVE_KINDS for t in junk_documents(kind, per_kind, raw.reference, seed=config.seed + 13)]
    quality = QualityClassifier()
    losses = quality.fit(good + bad, [1] * len(good) + [0] * len(bad))
    return Filters(langid=langid, quality=quality, quality_losses=losses)


def near_dedup_config(config: PretrainingDataConfig) -> NearDedupConfig:
    return NearDedupConfig(threshold=config.dedup_threshold, num_perm=config.num_perm, seed=config.seed + 1)


def pipeline_stages(config: PretrainingDataConfig, filters: Filters) -> list[Stage | CorpusStage]:
    """The chapter's stages, in order (see the module docstring).

    Corpus stages are ``functools.partial`` objects so :func:`llmbook.data.spark.run_pipeline_spark`
    can map them to their distributed versions.
    """
    cfg = near_dedup_config(config)
    return [
        normalize_stage(),
        langid_stage(filters.langid, keep=("en", "zh"), fast_scripts=("zh",)),
        gopher_stage(),
        bad_word_stage(en=BAD_WORDS_EN - AMBIGUOUS_WORDS),
        classifier_stage(filters.quality, config.quality_threshold),
        pii_stage(),
        CorpusStage(name="exact_dedup", fn=exact_dedup),
        CorpusStage(name="repeated_lines", fn=partial(remove_repeated_lines, min_docs=3)),
        CorpusStage(name="near_dedup", fn=partial(near_dedup, cfg=cfg)),
    ]


@dataclass(kw_only=True)
class CleanCorpus:
    """Everything :func:`clean_corpus` produced."""

    raw: RawCorpus  # the planted crawl and the reference documents
    filters: Filters  # trained language ID and quality classifier
    kept: list[Doc]  # surviving documents (PII masked, boilerplate removed)
    report: PipelineReport  # per-stage counts, bytes, reasons, seconds


def clean_corpus(config: PretrainingDataConfig, progress: bool = False) -> CleanCorpus:
    """Plant the raw crawl, train the filters and run the pipeline; deterministic given ``config``."""
    raw = make_raw_corpus(raw_config(config))
    filters = train_filters(raw, config)
    docs = [{**d, "meta": dict(d["meta"])} for d in raw.docs]
    kept, report = run_pipeline(docs, pipeline_stages(config, filters), progress=progress)
    return CleanCorpus(raw=raw, filters=filters, kept=kept, report=report)


def tokenize_documents(texts: list[str], tokenizer: Any, eot_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of all texts, ``eot_id`` after each, as one flat array; plus offsets (N + 1,).

    Document ``i`` is ``tokens[offsets[i]:offsets[i + 1]]`` (its last id is ``eot_id``). Encoding
    goes through ``tokenizer.to_tiktoken()`` when available (the same ids, tested in the
    tokenization chapter) because it is ~100x faster than the pure-Python encoder.
    """
    encoder = tokenizer.to_tiktoken() if hasattr(tokenizer, "to_tiktoken") else tokenizer
    ids = encoder.encode_ordinary_batch(texts) if hasattr(encoder, "encode_ordinary_batch") else [encoder.encode_ordinary(t) for t in texts]
    vocab = int(getattr(tokenizer, "vocab_size", max([eot_id, *(max(x, default=0) for x in ids)]) + 1))
    dtype = np.uint16 if vocab <= 1 << 16 else np.uint32
    lengths = np.array([len(x) + 1 for x in ids], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    tokens = np.empty(int(offsets[-1]), dtype=dtype)
    for i, x in enumerate(ids):
        tokens[offsets[i] : offsets[i + 1] - 1] = x
        tokens[offsets[i + 1] - 1] = eot_id
    return tokens, offsets


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


def tokenizer_for(config: PretrainingDataConfig, progress: bool = False) -> tuple[Any, artifacts.Artifact]:
    """The book tokenizer of ``config.tokenizer_profile`` (cached or trained, as chapter 1 does)."""
    from llmbook import profiles
    from llmbook.tokenization.book import book_tokenizer

    return book_tokenizer(profiles.resolve("tokenization", config.tokenizer_profile, seed=config.seed), progress=progress)


def artifact_config(config: PretrainingDataConfig, tokenizer_key: str) -> dict[str, Any]:
    """The fields that determine the corpus (and so its cache key)."""
    fields = ("en_docs", "zh_docs", "zh_min_chars", "reference_frac", "near_dup_rate", "exact_dup_rate", "pii_rate",
              "boilerplate_rate", "junk_rate", "classifier_train_docs", "quality_threshold", "dedup_threshold",
              "num_perm", "seed")
    return {"builder": BUILDER_VERSION, "tokenizer": tokenizer_key, **{f: getattr(config, f) for f in fields}}


def _writer(docs: list[Doc], tokenizer: Any, tokenizer_key: str):
    def write(directory: Path) -> None:
        from llmbook.tokenization.book import END_OF_TEXT

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
