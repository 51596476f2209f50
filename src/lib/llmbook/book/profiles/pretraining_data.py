"""Config of the pretraining_data chapter: raw-crawl size, dirt rates, filter thresholds, experiment sizes."""

from __future__ import annotations

from dataclasses import dataclass

from llmbook.book.profiles.base import ChapterConfig, Profile, per_profile


@dataclass(kw_only=True)
class PretrainingDataConfig(ChapterConfig):
    # the raw crawl (llmbook.data.raw_corpus)
    en_docs: int = per_profile(smoke=50, cpu=277, gpu=277)  # English chapters drawn from the bundled novels (277 exist)
    zh_docs: int = per_profile(smoke=50, cpu=600, gpu=600)  # Chinese documents (joined poems / classic chapters)
    zh_min_chars: int = 300  # poems are joined until a document has this many characters
    reference_frac: float = 0.2  # clean documents held out as reference text (classifier, selection, held-out loss)
    near_dup_rate: float = 0.15  # edited copies planted, per clean document
    exact_dup_rate: float = 0.05  # verbatim copies planted, per clean document
    pii_rate: float = 0.2  # clean documents that get personal data inserted
    boilerplate_rate: float = 0.3  # clean documents wrapped in cookie/nav/copyright lines
    junk_rate: float = 0.03  # documents of each junk kind (binary, code, spam, ...), per clean document
    # real pages of the labelled extraction set (python docs, Debian Reference) added to the crawl; -1: all 139
    web_pages: int = per_profile(smoke=12, cpu=-1, gpu=-1)
    extraction_eval_pages: int = per_profile(smoke=10, cpu=-1, gpu=-1)  # labelled pages per split scored (-1: all)
    # filters
    langid_snippet_chars: int = 40  # length of the snippets the language-ID confusion matrix is measured on
    langid_eval_snippets: int = per_profile(smoke=150, cpu=600, gpu=600)  # held-out snippets per language
    # training windows per class for the quality classifier
    classifier_train_docs: int = per_profile(smoke=80, cpu=300, gpu=300)
    quality_threshold: float = 0.5  # p(good) below this drops a document
    pii_bench_texts: int = per_profile(smoke=300, cpu=600, gpu=600)  # PII items per language and split
    # held-out quality segments that Gopher's rules are compared on (-1: all ~2,000)
    gopher_eval_segments: int = per_profile(smoke=300, cpu=-1, gpu=-1)
    # deduplication
    dedup_threshold: float = 0.7  # Jaccard similarity of 5-gram shingle sets regarded as duplicate
    num_perm: int = 128  # MinHash signature length
    # documents in the pair precision/recall and datasketch check
    dedup_eval_docs: int = per_profile(smoke=150, cpu=600, gpu=600)
    # selection and mixing (byte n-gram language models)
    ngram_order: int = 4  # order of the byte n-gram LMs standing in for small language models
    # budgets as fractions of the candidate pool's bytes
    selection_fracs: tuple[float, ...] = per_profile(
        smoke=(0.1, 0.3), cpu=(0.05, 0.1, 0.2, 0.4), gpu=(0.05, 0.1, 0.2, 0.4)
    )
    # training bytes of each proxy model in the mixture search
    proxy_budget_mb: float = per_profile(smoke=0.1, cpu=0.6, gpu=0.6)
    selection_target: str = "austen"  # bundled source whose reference documents define "good" text for selection
    # tokenization
    # which tokenization profile's book tokenizer encodes the corpus
    tokenizer_profile: Profile = per_profile(smoke="smoke", cpu="cpu", gpu="gpu")

    def validate(self) -> None:
        super().validate()
        self.check(self.en_docs >= 10, "en_docs", "must be at least 10")
        self.check(self.zh_docs >= 0, "zh_docs", "must be zero or positive")
        self.check(self.zh_min_chars >= 50, "zh_min_chars", "must be at least 50 (the word-count rule needs 50)")
        self.check(0.05 <= self.reference_frac <= 0.5, "reference_frac", "must be in [0.05, 0.5]")
        for key in ("near_dup_rate", "exact_dup_rate", "pii_rate", "junk_rate"):
            self.check(0.0 <= getattr(self, key) <= 1.0, key, "must be in [0, 1]")
        self.check(0.0 <= self.boilerplate_rate <= 1.0 - self.pii_rate, "boilerplate_rate",
                   "must be in [0, 1 - pii_rate] (a document gets PII or boilerplate, not both)")
        self.check(self.web_pages >= -1, "web_pages", "must be -1 (all) or a count")
        self.check(self.extraction_eval_pages == -1 or self.extraction_eval_pages >= 2, "extraction_eval_pages",
                   "must be -1 (all) or at least 2")
        self.check(self.langid_snippet_chars >= 5, "langid_snippet_chars", "must be at least 5")
        self.check(self.langid_eval_snippets >= 10, "langid_eval_snippets", "must be at least 10")
        self.check(self.classifier_train_docs >= 10, "classifier_train_docs", "must be at least 10")
        self.check(0.0 < self.quality_threshold < 1.0, "quality_threshold", "must be in (0, 1)")
        self.check(self.gopher_eval_segments == -1 or self.gopher_eval_segments >= 10, "gopher_eval_segments",
                   "must be -1 (all) or at least 10")
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
