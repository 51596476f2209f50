"""Export our byte-level BPE as a Hugging Face `tokenizer.json` (and a `save_pretrained` folder).

The HF format stores a BPE model over GPT-2's printable byte alphabet (byte 0x20 -> "Ġ"), the
merges as pairs of those strings, a ByteLevel pre-tokenizer (GPT-2 regex) and a ByteLevel decoder.
`ignore_merges=True` makes HF take a whole pre-token that is itself a token without merging,
exactly like tiktoken's (and our) rank-based encoder. Special tokens become added tokens.
"""

from __future__ import annotations

from pathlib import Path

from .bpe import ByteBPETokenizer, bytes_to_visible
from .pretokenize import GPT2_PATTERN


def to_hf_tokenizer(tok: ByteBPETokenizer):
    """Build a `tokenizers.Tokenizer` with the same vocabulary, merges and pre-tokenization."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    vocab = {bytes_to_visible(b): i for b, i in tok.ranks.items()}
    id_to_tok = {i: t for t, i in vocab.items()}
    merges = [(id_to_tok[a], id_to_tok[b]) for a, b in tok.merges]
    hf = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=True))
    if tok.pattern == GPT2_PATTERN:
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:  # any other regex: split with it, then map bytes to the printable alphabet
        hf.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(tok.pattern), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    hf.decoder = decoders.ByteLevel()
    for text, i in sorted(tok.special_tokens.items(), key=lambda kv: kv[1]):
        if i != hf.get_vocab_size(with_added_tokens=True):
            raise ValueError(f"special token {text!r} has id {i}; HF export needs specials right after the ranks")
        hf.add_special_tokens([AddedToken(text, special=True, normalized=False)])
    return hf


def export_tokenizer_json(tok: ByteBPETokenizer, path: str | Path) -> Path:
    """Write `tok` as an HF `tokenizer.json` at `path`; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    to_hf_tokenizer(tok).save(str(path))
    return path


def export_pretrained(
    tok: ByteBPETokenizer,
    directory: str | Path,
    eos_token: str | None = None,
    bos_token: str | None = None,
    pad_token: str | None = None,
) -> Path:
    """Write a `save_pretrained` folder (tokenizer.json + tokenizer_config.json) for `transformers`.

    Load it with `AutoTokenizer.from_pretrained(directory)` or `PreTrainedTokenizerFast`.
    """
    from transformers import PreTrainedTokenizerFast

    for arg, value in (("eos_token", eos_token), ("bos_token", bos_token), ("pad_token", pad_token)):
        if value is not None and value not in tok.special_tokens:
            raise ValueError(f"{arg} must be one of the special tokens {sorted(tok.special_tokens)}, got {value!r}")
    fast = PreTrainedTokenizerFast(
        tokenizer_object=to_hf_tokenizer(tok), eos_token=eos_token, bos_token=bos_token, pad_token=pad_token
    )
    directory = Path(directory)
    fast.save_pretrained(str(directory))
    return directory
