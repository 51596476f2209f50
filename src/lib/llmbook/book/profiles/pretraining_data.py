"""Profile of the pretraining_data chapter: raw-crawl size, dirt rates, filter thresholds, experiment sizes."""

from __future__ import annotations

from dataclasses import dataclass

from llmbook.profiles import PROFILES, ChapterConfig, register

SMOKE = dict(
    en_docs=50,
    zh_docs=50,
    langid_eval_snippets=150,
    classifier_train_docs=80,
    pii_bench_texts=300,
    dedup_eval_docs=150,
    selection_fracs=(0.1, 0.3),
    proxy_budget_mb=0.1,
    tokenizer_profile="smoke",
)
CPU = dict(
    en_docs=277,
    zh_docs=600,
    langid_eval_snippets=600,
    classifier_train_docs=300,
    pii_bench_texts=1500,
    dedup_eval_docs=600,
    selection_fracs=(0.05, 0.1, 0.2, 0.4),
    proxy_budget_mb=0.6,
    tokenizer_profile="cpu",
)
GPU = dict(CPU, tokenizer_profile="gpu")  # the bundled data is small: the gpu profile differs only by its tokenizer


@register("pretraining_data", presets={"smoke": SMOKE, "cpu": CPU, "gpu": GPU, "multi-gpu": GPU})
@dataclass(kw_only=True)
class PretrainingDataConfig(ChapterConfig):
    # the raw crawl (llmbook.data.raw_corpus)
    en_docs: int = CPU["en_docs"]  # English chapters drawn from the bundled novels (277 exist)
    zh_docs: int = CPU["zh_docs"]  # Chinese documents (joined poems / classic chapters)
    zh_min_chars: int = 300  # poems are joined until a document has this many characters
    reference_frac: float = 0.2  # clean documents held out as reference text (classifier, selection, held-out loss)
    near_dup_rate: float = 0.15  # edited copies planted, per clean document
    exact_dup_rate: float = 0.05  # verbatim copies planted, per clean document
    pii_rate: float = 0.2  # clean documents that get personal data inserted
    boilerplate_rate: float = 0.3  # clean documents wrapped in cookie/nav/copyright lines
    junk_rate: float = 0.03  # documents of each junk kind (binary, code, spam, ...), per clean document
    # filters
    langid_snippet_chars: int = 40  # length of the snippets the language-ID confusion matrix is measured on
    langid_eval_snippets: int = CPU["langid_eval_snippets"]  # held-out snippets per language
    classifier_train_docs: int = CPU["classifier_train_docs"]  # training windows per class for the quality classifier
    quality_threshold: float = 0.5  # p(good) below this drops a document
    pii_bench_texts: int = CPU["pii_bench_texts"]  # labelled texts of the PII benchmark
    # deduplication
    dedup_threshold: float = 0.7  # Jaccard similarity of 5-gram shingle sets regarded as duplicate
    num_perm: int = 128  # MinHash signature length
    dedup_eval_docs: int = CPU["dedup_eval_docs"]  # documents in the pair precision/recall and datasketch check
    # selection and mixing (byte n-gram language models)
    ngram_order: int = 4  # order of the byte n-gram LMs standing in for small language models
    selection_fracs: tuple[float, ...] = CPU["selection_fracs"]  # budgets as fractions of the candidate pool's bytes
    proxy_budget_mb: float = CPU["proxy_budget_mb"]  # training bytes of each proxy model in the mixture search
    selection_target: str = "austen"  # bundled source whose reference documents define "good" text for selection
    # tokenization
    tokenizer_profile: str = CPU["tokenizer_profile"]  # which tokenization profile's book tokenizer encodes the corpus

    def validate(self) -> None:
        self.check(self.en_docs >= 10, "en_docs", "must be at least 10")
        self.check(self.zh_docs >= 0, "zh_docs", "must be zero or positive")
        self.check(self.zh_min_chars >= 50, "zh_min_chars", "must be at least 50 (the word-count rule needs 50)")
        self.check(0.05 <= self.reference_frac <= 0.5, "reference_frac", "must be in [0.05, 0.5]")
        for key in ("near_dup_rate", "exact_dup_rate", "pii_rate", "junk_rate"):
            self.check(0.0 <= getattr(self, key) <= 1.0, key, "must be in [0, 1]")
        self.check(0.0 <= self.boilerplate_rate <= 1.0 - self.pii_rate, "boilerplate_rate",
                   "must be in [0, 1 - pii_rate] (a document gets PII or boilerplate, not both)")
        self.check(self.langid_snippet_chars >= 5, "langid_snippet_chars", "must be at least 5")
        self.check(self.langid_eval_snippets >= 10, "langid_eval_snippets", "must be at least 10")
        self.check(self.classifier_train_docs >= 10, "classifier_train_docs", "must be at least 10")
        self.check(0.0 < self.quality_threshold < 1.0, "quality_threshold", "must be in (0, 1)")
        self.check(self.pii_bench_texts >= 20, "pii_bench_texts", "must be at least 20")
        self.check(0.0 < self.dedup_threshold < 1.0, "dedup_threshold", "must be in (0, 1)")
        self.check(16 <= self.num_perm <= 1024, "num_perm", "must be in [16, 1024]")
        self.check(self.dedup_eval_docs >= 20, "dedup_eval_docs", "must be at least 20")
        self.check(1 <= self.ngram_order <= 7, "ngram_order", "must be in [1, 7] (contexts are packed in 64 bits)")
        self.check(len(self.selection_fracs) >= 1 and all(0 < f <= 1 for f in self.selection_fracs),
                   "selection_fracs", "needs one or more fractions in (0, 1]")
        self.check(self.proxy_budget_mb > 0, "proxy_budget_mb", "must be positive")
        sources = ("austen", "moby_dick", "chinese_classics", "tang_song_poetry")
        self.check(self.selection_target in sources, "selection_target", f"must be one of {sources}")
        self.check(self.tokenizer_profile in PROFILES, "tokenizer_profile", f"must be one of {PROFILES}")
