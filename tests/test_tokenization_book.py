"""The book tokenizer's plumbing: nested vocabularies, training text, reference wrappers."""

from __future__ import annotations

import pytest

from llmbook.book import profiles
from llmbook.chain.tokenizer import SPECIAL_TOKENS, artifact_config, training_text
from llmbook.data import corpus_text
from llmbook.tokenization import reference as ref
from llmbook.tokenization import train_bpe


@pytest.fixture(scope="module")
def english() -> str:
    return corpus_text("en", max_bytes=60_000)


def test_truncated_equals_training_with_fewer_merges(english: str) -> None:
    big = train_bpe(english, 700, SPECIAL_TOKENS)
    for size in (257 + 1, 400, 699):
        small = train_bpe(english, size, SPECIAL_TOKENS)
        cut = big.truncated(size)
        assert cut.ranks == small.ranks and cut.merges == small.merges
        assert cut.special_tokens == small.special_tokens and cut.vocab_size == size
        assert cut.encode(english[:3000]) == small.encode(english[:3000])
    assert big.truncated(700).ranks == big.ranks
    with pytest.raises(ValueError, match=r"vocab_size must be in \[257, 700\]"):
        big.truncated(701)


def test_training_text_splits_by_language_without_overlap() -> None:
    config = profiles.resolve("tokenization", "smoke")
    text = training_text(config)
    assert text.train == text.train_en + "\n\n" + text.train_zh
    for heldout in (text.heldout_en, text.heldout_zh):
        assert heldout and not set(heldout.split("\n\n")) & set(text.train.split("\n\n"))
    assert len(text.train.encode()) <= (config.train_mb_en + config.train_mb_zh) * 1e6
    assert training_text(config) == text  # deterministic


def test_artifact_config_tracks_what_changes_the_tokenizer() -> None:
    smoke = profiles.resolve("tokenization", "smoke")
    assert artifact_config(smoke) == artifact_config(profiles.resolve("tokenization", "smoke", encode_mb=9))
    assert artifact_config(smoke) != artifact_config(profiles.resolve("tokenization", "smoke", vocab_size=3000))


def test_bytes_per_token_and_sentencepiece_limits(english: str) -> None:
    assert ref.bytes_per_token(lambda s: [0] * 4, "abcdefgh") == 2.0
    with pytest.raises(ValueError, match="encodes to no tokens"):
        ref.bytes_per_token(lambda s: [], "abc")
    chinese = corpus_text("zh", max_bytes=60_000)
    with pytest.raises(ValueError, match="its alphabet alone"):
        ref.train_sentencepiece(chinese, 300)
    with pytest.raises(ValueError, match="fewer than 50000 pieces"):
        ref.train_sentencepiece(english[:5000], 50_000)
    with pytest.raises(ValueError, match="model_type must be"):
        ref.train_sentencepiece(english, 500, "char")
