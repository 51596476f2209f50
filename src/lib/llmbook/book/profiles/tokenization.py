"""Profile of the tokenization chapter: corpus sizes, vocabulary sizes, what to compare."""

from __future__ import annotations

from dataclasses import dataclass

from llmbook.profiles import ChapterConfig, register

BYTE_ALPHABET = 256  # a byte-level vocabulary starts with every possible byte

SMOKE = dict(
    train_mb_en=0.15,
    train_mb_zh=0.08,
    vocab_size=2500,
    sweep_vocab_sizes=(400, 1000, 2500),
    encode_mb=0.1,
    subword_mb=0.05,
    subword_vocab_size=1000,
)
CPU = dict(
    train_mb_en=2.0,
    train_mb_zh=1.0,
    vocab_size=8000,
    sweep_vocab_sizes=(1000, 2000, 4000, 8000, 16000),
    encode_mb=1.0,
    subword_mb=0.5,
    subword_vocab_size=4000,
)
GPU = dict(
    # Scale comes from the hub: the classic 32k vocabulary on a large Chinese corpus.
    train_mb_en=20.0,
    train_mb_zh=200.0,
    vocab_size=32000,
    sweep_vocab_sizes=(4000, 8000, 16000, 32000, 64000),
    encode_mb=20.0,
    subword_mb=5.0,
    subword_vocab_size=32000,
    hub_dataset_zh="pleisto/wikipedia-cn-20230720-filtered",
)


@register("tokenization", presets={"smoke": SMOKE, "cpu": CPU, "gpu": GPU, "multi-gpu": GPU})
@dataclass(kw_only=True)
class TokenizationConfig(ChapterConfig):
    train_mb_en: float = CPU["train_mb_en"]  # MB of English text the tokenizers are trained on
    train_mb_zh: float = CPU["train_mb_zh"]  # MB of Chinese text mixed into the same training text
    vocab_size: int = CPU["vocab_size"]  # size of the book tokenizer later chapters reuse
    sweep_vocab_sizes: tuple[int, ...] = CPU["sweep_vocab_sizes"]  # x axis of bytes-per-token plot
    heldout_fraction: float = 0.1  # documents kept out of training to measure compression honestly
    encode_mb: float = CPU["encode_mb"]  # MB encoded when timing the encoders
    subword_mb: float = CPU["subword_mb"]  # MB of English for WordPiece/Unigram (pure-Python EM is slow); 0 skips
    subword_vocab_size: int = CPU["subword_vocab_size"]  # vocabulary of the WordPiece/Unigram/BPE comparison
    hub_dataset_zh: str | None = None  # gpu profile: a hub dataset with a `text` column (needs network)

    def validate(self) -> None:
        minimum = BYTE_ALPHABET + 1  # the byte alphabet plus at least one merge
        self.check(
            self.vocab_size >= minimum,
            "vocab_size",
            f"must be at least {minimum} (the {BYTE_ALPHABET}-byte alphabet plus one merge)",
        )
        self.check(self.vocab_size <= 1_000_000, "vocab_size", "must be at most 1,000,000")
        for size in self.sweep_vocab_sizes:
            self.check(
                size >= minimum, "sweep_vocab_sizes", f"every size must be at least {minimum}"
            )
        self.check(len(self.sweep_vocab_sizes) >= 2, "sweep_vocab_sizes", "needs two or more sizes to plot")
        self.check(self.train_mb_en > 0, "train_mb_en", "must be positive")
        self.check(self.train_mb_zh >= 0, "train_mb_zh", "must be zero or positive")
        self.check(0 < self.heldout_fraction < 0.5, "heldout_fraction", "must be in (0, 0.5)")
        self.check(self.encode_mb > 0, "encode_mb", "must be positive")
        self.check(self.subword_mb >= 0, "subword_mb", "must be zero (skip) or positive")
        self.check(self.subword_vocab_size >= minimum, "subword_vocab_size", f"must be at least {minimum}")
