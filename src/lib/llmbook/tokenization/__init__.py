"""From-scratch tokenizers: byte-level BPE, character BPE, WordPiece, Unigram LM.

Each trained tokenizer has `encode(text) -> list[int]`, `decode(ids) -> str`, `vocab_size`,
`save(path)` / `load(path)` (one JSON format, written once in `serialization`). Verified against
tiktoken, HF `tokenizers` and sentencepiece in tests/test_tokenization*.py; `train_bpe_naive` is the
readable reference that `train_bpe`'s incremental trainer is checked against. `streaming` encodes
text that arrives in pieces (`encode_iterable`, `encode_file`: the ids of `encode` on the whole
text); `gpt2_files` reads and writes GPT-2's `vocab.json` + `merges.txt`.
"""

from .bpe import (
    ByteBPETokenizer,
    CharBPETokenizer,
    apply_ranks,
    recover_merges,
    train_bpe,
    train_bpe_naive,
    train_char_bpe,
)
from .export import export_pretrained, export_tokenizer_json, to_hf_tokenizer
from .gpt2_files import from_vocab_merges, load_gpt2_files, read_merges_txt, read_vocab_json, write_gpt2_files
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
    bundled_vocabulary_dir,
    fetch_published_vocabularies,
    load_published,
    load_published_bpe,
    load_published_ranks,
)
from .serialization import TokenizerFileError, read_tokenizer_json, write_tokenizer_json
from .streaming import encode_file, encode_iterable
from .unigram import UnigramTokenizer, UnigramTrainConfig, train_unigram
from .wordpiece import WordPieceTokenizer, train_wordpiece
