"""Config of the tokenization chapter: corpus sizes, vocabulary sizes, what to compare."""

from __future__ import annotations

from dataclasses import dataclass

from llmbook.book.profiles.base import ChapterConfig, per_profile

BYTE_ALPHABET = 256  # a byte-level vocabulary starts with every possible byte


@dataclass(kw_only=True)
class TokenizationConfig(ChapterConfig):
    # MB of English text the tokenizers are trained on
    train_mb_en: float = per_profile(smoke=0.15, cpu=2.0, gpu=20.0)
    # MB of Chinese text mixed into the same training text (gpu: the classic 32k vocabulary on a big Chinese corpus)
    train_mb_zh: float = per_profile(smoke=0.08, cpu=1.0, gpu=200.0)
    # size of the book tokenizer later chapters reuse
    vocab_size: int = per_profile(smoke=2500, cpu=8000, gpu=32000)
    # x axis of the bytes-per-token plot
    sweep_vocab_sizes: tuple[int, ...] = per_profile(
        smoke=(400, 1000, 2500), cpu=(1000, 2000, 4000, 8000, 16000), gpu=(4000, 8000, 16000, 32000, 64000)
    )
    heldout_fraction: float = 0.1  # documents kept out of training to measure compression honestly
    encode_mb: float = per_profile(smoke=0.1, cpu=1.0, gpu=20.0)  # MB encoded when timing the encoders
    # MB of English for WordPiece/Unigram (pure-Python EM is slow); 0 skips
    subword_mb: float = per_profile(smoke=0.05, cpu=0.5, gpu=5.0)
    # vocabulary of the WordPiece/Unigram/BPE comparison
    subword_vocab_size: int = per_profile(smoke=1000, cpu=4000, gpu=32000)
    # a hub dataset with a `text` column for the Chinese text (needs network: gpu profile only)
    hub_dataset_zh: str | None = per_profile(smoke=None, cpu=None, gpu="pleisto/wikipedia-cn-20230720-filtered")

    def validate(self) -> None:
        super().validate()
        minimum = BYTE_ALPHABET + 1  # the byte alphabet plus at least one merge
        self.check(
            self.vocab_size >= minimum,
            "vocab_size",
            f"must be at least {minimum} (the {BYTE_ALPHABET}-byte alphabet plus one merge)",
        )
        self.check(self.vocab_size <= 1_000_000, "vocab_size", "must be at most 1,000,000")
        for size in self.sweep_vocab_sizes:
            self.check(size >= minimum, "sweep_vocab_sizes", f"every size must be at least {minimum}")
        self.check(len(self.sweep_vocab_sizes) >= 2, "sweep_vocab_sizes", "needs two or more sizes to plot")
        self.check(self.train_mb_en > 0, "train_mb_en", "must be positive")
        self.check(self.train_mb_zh >= 0, "train_mb_zh", "must be zero or positive")
        self.check(0 < self.heldout_fraction < 0.5, "heldout_fraction", "must be in (0, 0.5)")
        self.check(self.encode_mb > 0, "encode_mb", "must be positive")
        self.check(self.subword_mb >= 0, "subword_mb", "must be zero (skip) or positive")
        self.check(self.subword_vocab_size >= minimum, "subword_vocab_size", f"must be at least {minimum}")
