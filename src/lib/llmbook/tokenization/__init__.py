"""From-scratch tokenizers: byte-level BPE, character BPE, WordPiece, Unigram LM.

Each trained tokenizer has `encode(text) -> list[int]`, `decode(ids) -> str`, `vocab_size`,
`save(path)` / `load(path)` (JSON). Verified against tiktoken, HF `tokenizers` and sentencepiece
in tests/test_tokenization*.py.
"""

from .bpe import ByteBPETokenizer, CharBPETokenizer, apply_ranks, recover_merges, train_bpe, train_char_bpe
from .pretokenize import (
    BERT_PATTERN,
    CL100K_PATTERN,
    GPT2_PATTERN,
    O200K_PATTERN,
    count_words,
    pretokenize,
    split_special,
)
from .published import (
    default_cache_dir,
    fetch_published_vocabularies,
    load_published,
    load_published_bpe,
    load_published_ranks,
)
from .export import export_pretrained, export_tokenizer_json, to_hf_tokenizer
from .unigram import UnigramTokenizer, UnigramTrainConfig, train_unigram
from .wordpiece import WordPieceTokenizer, train_wordpiece
