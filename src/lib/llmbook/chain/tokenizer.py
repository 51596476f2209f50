"""The book tokenizer: its training text, and the cached artifact later chapters load.

Chapter 1 trains a byte-level BPE on bundled English and Chinese text and stores it with
`save_book_tokenizer`; every later chapter calls `book_tokenizer(config)`, which returns the cached
copy or trains the same tokenizer again with the same library call when the cache is empty.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from llmbook.book import artifacts
from llmbook.book.profiles import TokenizationConfig
from llmbook.data.corpora import DOC_SEPARATOR, corpus_text, hub_text, split_text
from llmbook.tokenization.bpe import ByteBPETokenizer, train_bpe
from llmbook.tokenization.export import export_pretrained

END_OF_TEXT = "<|endoftext|>"  # separates documents in pretraining; the only special token
SPECIAL_TOKENS = (END_OF_TEXT,)
TOKENIZER_FILE = "llmbook_tokenizer.json"  # our own format, next to the HF tokenizer.json


@dataclass(frozen=True, kw_only=True)
class TrainingText:
    train_en: str  # training documents
    train_zh: str
    heldout_en: str  # documents never trained on, to measure compression honestly
    heldout_zh: str

    @property
    def train(self) -> str:
        """English then Chinese training documents, the text every tokenizer is trained on."""
        return DOC_SEPARATOR.join(part for part in (self.train_en, self.train_zh) if part)


def training_text(config: TokenizationConfig) -> TrainingText:
    """Split bundled (or, on the gpu profile, hub) text into training and held-out documents."""
    keep = 1 - config.heldout_fraction
    en = corpus_text("en", max_bytes=int(config.train_mb_en * 1e6 / keep))
    zh_bytes = int(config.train_mb_zh * 1e6 / keep)
    if zh_bytes == 0:
        zh = ""
    elif config.hub_dataset_zh:
        zh = hub_text(config.hub_dataset_zh, zh_bytes)
    else:
        zh = corpus_text("zh", max_bytes=zh_bytes)
    en_train, en_test = split_text(en, config.heldout_fraction, config.seed)
    zh_train, zh_test = split_text(zh, config.heldout_fraction, config.seed) if zh else ("", "")
    return TrainingText(train_en=en_train, train_zh=zh_train, heldout_en=en_test, heldout_zh=zh_test)


def artifact_config(config: TokenizationConfig) -> dict:
    """The fields that determine the book tokenizer (and so its cache key)."""
    fields = ("vocab_size", "train_mb_en", "train_mb_zh", "heldout_fraction", "seed", "hub_dataset_zh")
    return {"algorithm": "byte_bpe", "special_tokens": list(SPECIAL_TOKENS), **{f: getattr(config, f) for f in fields}}


def _writer(tokenizer: ByteBPETokenizer):
    def write(directory: Path) -> None:
        tokenizer.save(directory / TOKENIZER_FILE)
        export_pretrained(tokenizer, directory, eos_token=END_OF_TEXT)  # tokenizer.json for transformers

    return write


def save_book_tokenizer(tokenizer: ByteBPETokenizer, config: TokenizationConfig) -> artifacts.Artifact:
    """Store a tokenizer trained on `training_text(config)` as the book tokenizer for `config`."""
    return artifacts.get_or_build("tokenizer", artifact_config(config), _writer(tokenizer))


def book_tokenizer(
    config: TokenizationConfig, *, progress: bool = False
) -> tuple[ByteBPETokenizer, artifacts.Artifact]:
    """The book tokenizer for `config`: from the cache, or trained now exactly as chapter 1 does."""

    def build(directory: Path) -> None:
        text = training_text(config)
        _writer(train_bpe(text.train, config.vocab_size, SPECIAL_TOKENS, progress=progress))(directory)

    artifact = artifacts.get_or_build("tokenizer", artifact_config(config), build)
    return ByteBPETokenizer.load(artifact.path / TOKENIZER_FILE), artifact
