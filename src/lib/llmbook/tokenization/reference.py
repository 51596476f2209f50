"""The production tokenizer trainers the book compares against, configured like ours.

HF `tokenizers` (Rust) and `sentencepiece` (C++) are what a practitioner would pick. These
wrappers train them on the same text and vocabulary size as the from-scratch trainers, with the
same pre-tokenization where the library allows it, so compression and speed compare like with like.
"""

from __future__ import annotations

import io
import json
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from llmbook.tokenization.bpe import ByteBPETokenizer, encode_bytes, visible_to_bytes
from llmbook.tokenization.pretokenize import count_words

R = TypeVar("R")


def timed(fn: Callable[[], R]) -> tuple[R, float]:
    """(result, wall seconds) of `fn()`."""
    started = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - started


def bytes_per_token(encode: Callable[[str], Sequence[int]], text: str) -> float:
    """Compression: UTF-8 bytes of `text` divided by the number of tokens it encodes to."""
    n_tokens = len(encode(text))
    if n_tokens == 0:
        raise ValueError("text encodes to no tokens; bytes per token is undefined")
    return len(text.encode("utf-8")) / n_tokens


def encode_mb_per_s(encode: Callable[[str], Any], text: str, repeats: int = 1) -> float:
    """Encoding throughput in MB (10^6 bytes) of UTF-8 per second, best of `repeats`."""
    size = len(text.encode("utf-8"))
    best = min(timed(lambda: encode(text))[1] for _ in range(repeats))
    return size / 1e6 / best


def _lines(text: str) -> list[str]:
    return [line for line in text.split("\n") if line]


def train_hf_byte_bpe(text: str, vocab_size: int, special_tokens: Iterable[str] = ()):
    """HF `tokenizers` byte-level BPE: GPT-2 regex + byte alphabet, like `train_bpe`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([text], trainer=trainer)
    return tokenizer


def train_hf_wordpiece(text: str, vocab_size: int):
    """HF `tokenizers` WordPiece with BERT's pre-tokenization (whitespace + punctuation)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=["[UNK]"], show_progress=False)
    tokenizer.train_from_iterator([text], trainer=trainer)
    return tokenizer


def train_sentencepiece(text: str, vocab_size: int, model_type: str = "unigram"):
    """A `sentencepiece` model trained in memory (byte fallback on, every character covered)."""
    import sentencepiece as spm

    if model_type not in ("unigram", "bpe"):
        raise ValueError(f"model_type must be 'unigram' or 'bpe', got {model_type!r}")
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(_lines(text)),
            model_writer=model,
            vocab_size=vocab_size,
            model_type=model_type,
            byte_fallback=True,  # like byte-level BPE: no unknown tokens
            character_coverage=0.9995,  # sentencepiece's recommendation for CJK
            max_sentence_length=1 << 20,
            num_threads=1,
            minloglevel=2,
        )
    except RuntimeError as error:
        if "smaller than required_chars" in str(error):
            # Its alphabet holds every covered character plus 256 byte pieces before any merge.
            raise ValueError(
                f"sentencepiece cannot build only {vocab_size} pieces from this text: its alphabet alone "
                "(covered characters + 256 byte-fallback pieces) is larger"
            ) from None
        if "Vocabulary size too high" in str(error):
            raise ValueError(
                f"sentencepiece finds fewer than {vocab_size} pieces in this text: train on more text"
            ) from None
        raise
    return spm.SentencePieceProcessor(model_proto=model.getvalue())


def hf_byte_merges(tokenizer: Any) -> list[tuple[bytes, bytes]]:
    """The merges of an HF byte-level BPE ``tokenizers.Tokenizer`` as (left bytes, right bytes), in rank order."""
    merges = json.loads(tokenizer.to_str())["model"]["merges"]
    pairs = (m.split(" ") if isinstance(m, str) else m for m in merges)  # tokenizers < 0.20 wrote "a b"
    return [(visible_to_bytes(a), visible_to_bytes(b)) for a, b in pairs]


@dataclass(frozen=True)
class MergeDifference:
    """Where two byte-level BPE merge lists first part: the pair each merged there and how often it occurs."""

    rank: int  # merges both lists share before they part
    ours: tuple[bytes, bytes]
    theirs: tuple[bytes, bytes]
    ours_count: int  # occurrences in the training text, segmented by the `rank` shared merges
    theirs_count: int

    @property
    def tie(self) -> bool:
        """Both pairs occur equally often: the lists part where each trainer breaks a tie its own way."""
        return self.ours_count == self.theirs_count


def first_merge_difference(
    ours: ByteBPETokenizer, theirs: Sequence[tuple[bytes, bytes]], text: str, special_tokens: Iterable[str] = ()
) -> MergeDifference | None:
    """The first rank where ``theirs`` merges another pair than ``ours`` (trained on ``text``); None if they never part.

    Both pairs are counted as the trainers count them: adjacent pairs in each distinct pre-token,
    weighted by its frequency, after the merges the two lists share (ours' pattern and special tokens).
    """
    mine = [(ours.token_bytes(a), ours.token_bytes(b)) for a, b in ours.merges]
    rank = next((i for i, (a, b) in enumerate(zip(mine, theirs)) if a != b), None)
    if rank is None:
        return None
    shared = {bytes([i]): i for i in range(256)}
    shared.update({a + b: 256 + i for i, (a, b) in enumerate(mine[:rank])})
    piece = {i: b for b, i in shared.items()}
    counts: Counter[tuple[bytes, bytes]] = Counter()
    for word, freq in count_words(text, ours.pattern, special_tokens).items():
        parts = [piece[i] for i in encode_bytes(word.encode("utf-8"), shared)]
        for pair in zip(parts, parts[1:]):
            counts[pair] += freq
    return MergeDifference(rank, mine[rank], tuple(theirs[rank]), counts[mine[rank]], counts[tuple(theirs[rank])])
