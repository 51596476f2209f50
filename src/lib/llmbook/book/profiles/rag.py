"""Config of the RAG chapter: corpus size, embedder and generator, what is swept and trained."""

from __future__ import annotations

from dataclasses import dataclass

from llmbook.book.profiles.base import TorchChapterConfig, per_profile


@dataclass(kw_only=True)
class RagChapterConfig(TorchChapterConfig):
    # sentence embedder (HF id or folder); None = all-MiniLM-L6-v2 from its registry package.
    # bge-m3 reads Chinese, which MiniLM's vocabulary mostly maps to [UNK]
    embedder: str | None = per_profile(smoke=None, cpu=None, gpu="BAAI/bge-m3")
    # chat model that answers from the passages; None = SmolLM2-135M-Instruct from its registry package
    generator: str | None = per_profile(smoke=None, cpu=None, gpu="HuggingFaceTB/SmolLM2-1.7B-Instruct")
    generator_layers: int | None = per_profile(smoke=4, cpu=None, gpu=None)  # first N blocks: a cheap smoke model
    torch_threads: int | None = per_profile(smoke=1, cpu=None, gpu=None)
    distractors: int | None = per_profile(smoke=40, cpu=None, gpu=None)  # distractor documents kept (None: all)
    questions: int | None = per_profile(smoke=8, cpu=None, gpu=None)  # questions per language and split (None: all)
    chunk_size: int = 1000  # characters per chunk (recursive chunker) of the main comparison
    chunk_sizes: tuple[int, ...] = per_profile(smoke=(400, 1600), cpu=(300, 1000, 3000),
                                               gpu=(250, 500, 1000, 2000, 4000))
    # hybrid fusion weights tried on dev: BM25 is far weaker than MiniLM on English, so heavy dense weights too
    dense_weights: tuple[float, ...] = (0.3, 0.5, 0.7, 0.8, 0.9)
    candidates: int = 30  # hits per retriever fused, and reranked
    rerank_depth: int = per_profile(smoke=5, cpu=20, gpu=30)  # top hybrid hits the cross-encoder reorders
    rerank_epochs: int = per_profile(smoke=1, cpu=1, gpu=2)  # cross-encoder fine-tuning passes
    # tokens per (question, passage) pair the cross-encoder reads; MiniLM's own limit is 256
    rerank_max_length: int = per_profile(smoke=96, cpu=256, gpu=256)
    rerank_negatives: int = 3  # hard negatives (top BM25 hits that are wrong) per training question
    lm_rerank_questions: int = per_profile(smoke=2, cpu=40, gpu=200)  # questions reranked by the LM's yes/no
    rewrite_questions: int = per_profile(smoke=2, cpu=40, gpu=200)  # questions tried with HyDE / multi-query
    answer_questions: int = per_profile(smoke=2, cpu=16, gpu=100)  # grounded answers generated and checked
    nprobes: tuple[int, ...] = per_profile(smoke=(1, 4), cpu=(1, 2, 4, 8, 16), gpu=(1, 2, 4, 8, 16, 32))
    ef_searches: tuple[int, ...] = per_profile(smoke=(16, 64), cpu=(8, 16, 32, 64, 128), gpu=(8, 16, 32, 64, 128))

    def validate(self) -> None:
        super().validate()
        self.check(self.generator_layers is None or self.generator_layers >= 1, "generator_layers",
                   "must be None or >= 1")
        for key in ("distractors", "questions"):
            self.check(getattr(self, key) is None or getattr(self, key) >= 4, key, "must be None or >= 4")
        self.check(self.rerank_max_length >= 32, "rerank_max_length", "must be at least 32")
        for key in ("chunk_size", "candidates", "rerank_depth", "rerank_epochs", "lm_rerank_questions",
                    "rewrite_questions", "answer_questions"):
            self.check(getattr(self, key) >= 1, key, "must be at least 1")
        self.check(len(self.chunk_sizes) >= 2 and min(self.chunk_sizes) >= 50, "chunk_sizes",
                   "needs two or more sizes, each >= 50 characters")
        self.check(len(self.dense_weights) >= 1 and all(0 <= w <= 1 for w in self.dense_weights), "dense_weights",
                   "needs one or more weights in [0, 1]")
        self.check(self.rerank_depth <= self.candidates, "rerank_depth", "must be <= candidates")
        self.check(self.rerank_negatives >= 1, "rerank_negatives", "must be at least 1")
        self.check(min(self.nprobes) >= 1 and min(self.ef_searches) >= 1, "nprobes",
                   "nprobes and ef_searches must be >= 1")
