"""Corpus-scale tokenizing: streaming encode == whole-text encode, bounded memory; GPT-2 vocab.json/merges.txt
loading vs HF `tokenizers` and tiktoken; CS336-style in-memory (vocab, merges, special_tokens)."""

from __future__ import annotations

import json
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import llmbook.tokenization as llmbook_tokenization
from llmbook.data.corpora import corpus_text
from llmbook.tokenization import (
    ByteBPETokenizer,
    load_published,
    load_published_bpe,
    streaming,
    to_hf_tokenizer,
    train_bpe,
)
from llmbook.tokenization import gpt2_files as gpt2_module
from llmbook.tokenization.gpt2_files import (
    from_vocab_merges,
    load_gpt2_files,
    read_merges_txt,
    write_gpt2_files,
)
from llmbook.tokenization.pretokenize import CL100K_PATTERN, GPT2_PATTERN, O200K_PATTERN
from llmbook.tokenization.reference import hf_byte_merges

EOT = "<|endoftext|>"
SPECIALS = [EOT, EOT + EOT, "<pad>"]  # overlapping specials: the longer one wins where both match
FRAGMENTS = [
    EOT, EOT + EOT, "<pad>", "<|", "endoftext", "|>", "<pa", "d>", "'ll", "'s", "'LL", "'", "s", " ", "  ", "   ",
    "\n", "\n\n", "\r\n", "\r", "\t", " \n", "床前明月光", "，", "。", "。\n", "hello", "World", "ABCdef", "123456",
    "7", "\u3000", "\u00a0", "😀", "!?", "...", "Ωμέγα", "naïve", "/", "x", "한국어",
]


@pytest.fixture(scope="module")
def texts() -> dict[str, str]:
    en, zh = corpus_text("en", 120_000), corpus_text("zh", 40_000)
    return {"en": en, "zh": zh, "train": en[:60_000] + zh[:15_000]}


@pytest.fixture(scope="module")
def tokenizers(texts) -> dict[str, ByteBPETokenizer]:
    """GPT-2 itself, and small vocabularies trained with each published pattern and overlapping specials."""
    out = {"gpt2": load_published_bpe("gpt2")}
    for name, pattern in (("gpt2_pattern", GPT2_PATTERN), ("cl100k_pattern", CL100K_PATTERN),
                          ("o200k_pattern", O200K_PATTERN)):
        out[name] = train_bpe(texts["train"], 600, SPECIALS, pattern=pattern)
    return out


def _pieces(text: str, cuts: list[int]) -> list[str]:
    cuts = sorted(c % (len(text) + 1) for c in cuts)
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]


# --- streaming: same ids as encode(whole text) ----------------------------------------------
@settings(max_examples=300, deadline=None)
@given(
    parts=st.lists(st.sampled_from(FRAGMENTS) | st.text(max_size=4), max_size=60),
    cuts=st.lists(st.integers(0, 10_000), max_size=12),
    chunk_chars=st.integers(1, 80),
)
def test_encode_iterable_equals_encode(tokenizers, parts, cuts, chunk_chars):
    text = "".join(parts)
    for name, tok in tokenizers.items():
        got = list(tok.encode_iterable(_pieces(text, cuts), chunk_chars=chunk_chars))
        assert got == tok.encode(text), (name, chunk_chars, text)


NO_SPACE = [f for f in FRAGMENTS if not any(c in " \t\u3000\u00a0" for c in f)]


@settings(max_examples=150, deadline=None)
@given(
    parts=st.lists(st.sampled_from(NO_SPACE), min_size=30, max_size=300),
    cuts=st.lists(st.integers(0, 10_000), max_size=30),
    chunk_chars=st.integers(1, 40),
)
def test_encode_iterable_without_spaces(tokenizers, parts, cuts, chunk_chars):
    """Runs without a space (CJK, code): cuts fall between pre-tokens, never after line breaks or in contractions."""
    text = "".join(parts)
    for name, tok in tokenizers.items():
        got = list(tok.encode_iterable(_pieces(text, cuts), chunk_chars=chunk_chars))
        assert got == tok.encode(text), (name, chunk_chars, text)


@pytest.mark.parametrize("chunk_chars", [1, 7, 64, 1000, 1 << 16])
def test_encode_iterable_on_real_text(tokenizers, texts, chunk_chars):
    """Long lines (newlines removed), Chinese without spaces, specials; pieces of uneven sizes."""
    long_line = texts["en"][:40_000].replace("\n", " ")
    text = f"{long_line}{EOT}{texts['zh'][:15_000]}{EOT}{EOT}\r\n  {texts['en'][40_000:45_000]}<pad>"
    pieces = _pieces(text, list(range(0, len(text), 997)) + [len(long_line) + 3, len(long_line) + 20])
    for name in ("gpt2", "cl100k_pattern", "o200k_pattern"):
        tok = tokenizers[name]
        assert list(tok.encode_iterable(pieces, chunk_chars=chunk_chars)) == tok.encode(text), name


class _TiktokenEncoder:
    """tiktoken's Rust encoder behind the interface streaming needs (pattern, special_tokens, encode_ordinary)."""

    def __init__(self, tok: ByteBPETokenizer) -> None:
        self.pattern, self.special_tokens = tok.pattern, tok.special_tokens
        self.encoding = tok.to_tiktoken()
        self.encode_ordinary = self.encoding.encode_ordinary


def test_streaming_functions_drive_any_encoder(tokenizers, texts, tmp_path):
    """The module functions stream any encoder with that interface: tiktoken's, fed in pieces, gives
    tiktoken's ids of the whole text; the package exports them and the GPT-2 file functions."""
    text = f"{texts['en'][:8000].replace(chr(10), ' ')}{EOT}{texts['zh'][:4000]}<pad>{EOT}{EOT} tail"
    for name in ("gpt2_pattern", "o200k_pattern"):
        enc = _TiktokenEncoder(tokenizers[name])
        whole = enc.encoding.encode(text, allowed_special="all")
        for chunk_chars in (5, 300):
            pieces = _pieces(text, list(range(0, len(text), 211)))
            assert list(streaming.encode_iterable(enc, pieces, chunk_chars)) == whole, (name, chunk_chars)
    path = tmp_path / "doc.txt"
    path.write_bytes(text.encode("utf-8"))
    assert list(llmbook_tokenization.encode_file(enc, path, chunk_chars=50)) == whole
    assert llmbook_tokenization.encode_iterable is streaming.encode_iterable
    for name in ("from_vocab_merges", "load_gpt2_files", "read_merges_txt", "read_vocab_json", "write_gpt2_files"):
        assert getattr(llmbook_tokenization, name) is getattr(gpt2_module, name), name


def test_encode_file_reads_the_text_as_stored(tokenizers, texts, tmp_path):
    text = f"line one\r\nline two{EOT}\r\n\r\n{texts['zh'][:3000]}{EOT}{EOT} {texts['en'][:3000]}  \n"
    path = tmp_path / "doc.txt"
    path.write_bytes(text.encode("utf-8"))
    tok = tokenizers["gpt2_pattern"]
    for chunk_chars in (3, 5, 100, 1 << 18):  # 3 and 5: reads end inside <|endoftext|> and inside \r\n
        assert list(tok.encode_file(path, chunk_chars=chunk_chars)) == tok.encode(text)
    with pytest.raises(ValueError, match="chunk_chars must be a positive int, got 0"):
        tok.encode_file(path, chunk_chars=0)
    with pytest.raises(TypeError, match="got bytes"):
        tok.encode_iterable(b"abc")  # refused when called, not at the first id
    with pytest.raises(TypeError, match="an item of type int"):
        list(tok.encode_iterable(["a", 3]))
    assert list(tok.encode_iterable("one string")) == tok.encode("one string")


def _peak_bytes(tok: ByteBPETokenizer, path, chunk_chars: int) -> tuple[int, int]:
    """(peak traced bytes, ids) while streaming a file; the word cache is warmed first, so it is not counted."""
    for _ in tok.encode_file(path, chunk_chars=chunk_chars):
        pass
    tracemalloc.start()
    n = sum(1 for _ in tok.encode_file(path, chunk_chars=chunk_chars))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak, n


def test_streaming_memory_is_flat_in_input_size(tokenizers, texts, tmp_path):
    base = texts["en"][:100_000] + texts["zh"][:10_000]  # ~128 KB of UTF-8
    small, large = tmp_path / "small.txt", tmp_path / "large.txt"
    small.write_text(base, encoding="utf-8")
    large.write_text(base * 8, encoding="utf-8")  # 8x the bytes
    tok = ByteBPETokenizer(tokenizers["gpt2"].ranks, {}, GPT2_PATTERN)
    peak_small, n_small = _peak_bytes(tok, small, 1 << 12)  # 4096-character chunks: ~30 in the small file
    peak_large, n_large = _peak_bytes(tok, large, 1 << 12)
    whole_list = 8 * n_large  # the pointers alone of list(encode_file(large))
    assert n_large == 8 * n_small
    assert peak_large < 1.5 * peak_small, (peak_small, peak_large)
    assert peak_large < whole_list / 4, (peak_large, whole_list)


# --- vocab / byte merges, GPT-2 files, CS336's in-memory form ---------------------------------
def test_vocab_and_byte_merges_match_the_hf_export(tokenizers):
    tok = tokenizers["cl100k_pattern"]
    vocab = tok.vocab
    assert len(vocab) == tok.vocab_size == 600 and vocab[597] == EOT.encode()
    assert all(vocab[i] == b for b, i in tok.ranks.items())
    assert tok.byte_merges == hf_byte_merges(to_hf_tokenizer(tok))  # HF's own serialisation of the merges
    assert [a + b for a, b in tok.byte_merges] == [vocab[i] for i in range(256, 597)]


@pytest.fixture(scope="module")
def gpt2_files(tmp_path_factory, tokenizers):
    """GPT-2's vocab.json + merges.txt written from the bundled gpt2.tiktoken (merges recovered from ranks)."""
    return write_gpt2_files(tokenizers["gpt2"], tmp_path_factory.mktemp("gpt2"))


def test_gpt2_files_match_hf_and_tiktoken(gpt2_files, texts):
    from tokenizers import ByteLevelBPETokenizer

    vocab_path, merges_path = gpt2_files
    assert merges_path.read_text().split("\n")[:4] == ["#version: 0.2", "Ġ t", "Ġ a", "h e"]  # GPT-2's first merges
    ours = load_gpt2_files(vocab_path, merges_path, [EOT])
    hf = ByteLevelBPETokenizer(str(vocab_path), str(merges_path))
    hf.add_special_tokens([EOT])
    tt = load_published("gpt2")
    for lang in ("en", "zh"):
        text = texts[lang][:30_000] + EOT + texts[lang][30_000:40_000]
        ids = ours.encode(text)
        assert ids == hf.encode(text).ids, lang
        assert ids == tt.encode(text, allowed_special="all"), lang
        assert ours.decode(ids) == text
    assert ours.special_tokens == {EOT: 50256} and ours.vocab_size == 50257
    plain = load_gpt2_files(vocab_path, merges_path)  # no specials: <|endoftext|> is decode-only
    assert plain.special_tokens == {} and plain.decode([50256]) == EOT
    assert plain.encode(EOT) == tt.encode_ordinary(EOT) != [50256]
    with pytest.raises(ValueError, match="save cannot store decode-only extra_tokens"):
        plain.save(vocab_path.parent / "x.json")


def test_cs336_in_memory_form_with_other_id_layouts(tokenizers, texts):
    """vocab {id: bytes} with the special token at id 0 and bytes at 1..256 (CS336's trainer layout)."""
    tok = tokenizers["gpt2_pattern"]
    shift = {i + 1: b for i, b in tok.vocab.items() if b not in {s.encode() for s in SPECIALS}}
    vocab = {0: EOT.encode(), **shift}
    loaded = from_vocab_merges(vocab, tok.byte_merges, [EOT, "<pad>"])  # <pad> is new: it gets the next id
    assert loaded.special_tokens == {EOT: 0, "<pad>": max(vocab) + 1}
    text = texts["en"][60_000:70_000] + EOT + texts["zh"][15_000:20_000]
    expected = [0 if i == tok.special_tokens[EOT] else i + 1 for i in tok.encode(text)]
    assert loaded.encode(text) == expected
    assert loaded.vocab == {**vocab, max(vocab) + 1: b"<pad>"}


def test_a_book_trained_vocabulary_round_trips_through_gpt2_files(tokenizers, texts, tmp_path):
    from tokenizers import ByteLevelBPETokenizer

    tok = train_bpe(texts["train"], 1500, [EOT])
    vocab_path, merges_path = write_gpt2_files(tok, tmp_path)
    loaded = load_gpt2_files(vocab_path, merges_path, [EOT])
    hf = ByteLevelBPETokenizer(str(vocab_path), str(merges_path))
    held = texts["en"][60_000:100_000] + texts["zh"][15_000:30_000]
    assert loaded.encode(held) == tok.encode(held) == hf.encode(held).ids
    assert loaded.merges == tok.merges and loaded.vocab == tok.vocab


def _write(tmp_path, vocab: dict[str, int], merges: str):
    v, m = tmp_path / "vocab.json", tmp_path / "merges.txt"
    v.write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    m.write_text(merges, encoding="utf-8")
    return v, m


def test_bad_files_name_the_file_and_line(tokenizers, tmp_path):
    tok = tokenizers["gpt2_pattern"].truncated(300)  # 256 bytes, 41 merges, 3 specials
    v, m = write_gpt2_files(tok, tmp_path)
    vocab = json.loads(v.read_text(encoding="utf-8"))
    lines = m.read_text(encoding="utf-8").split("\n")
    assert load_gpt2_files(v, m, SPECIALS).encode("the cat") == tok.encode("the cat")
    cases = {
        "one token": (lines[:3] + ["Ġt"] + lines[4:], r"merges.txt:4: a merge line is two tokens"),
        "three tokens": (lines[:2] + ["a b c"] + lines[3:], r"merges.txt:3: a merge line is two tokens"),
        "missing token": (lines[:5] + ["zzq Ġ"] + lines[5:], r"merges.txt:6: merge token 'zzq' .* is not in the vocab"),
        "result missing": (lines[:2] + ["Ġ ~"] + lines[2:], r"merges.txt:3: the merged token 'Ġ~' .* is not in the"),
        "outside alphabet": (lines[:2] + ["a\u4e00 b"] + lines[2:], r"merges.txt:3: characters outside the GPT-2"),
    }
    for bad, message in cases.values():
        (tmp_path / "merges.txt").write_text("\n".join(bad), encoding="utf-8")
        with pytest.raises(ValueError, match=message):
            load_gpt2_files(v, tmp_path / "merges.txt", SPECIALS)
    late = lines[:2] + [lines[3], lines[2]] + lines[4:]  # two merges swapped: ids no longer follow the order
    (tmp_path / "merges.txt").write_text("\n".join(late), encoding="utf-8")
    with pytest.raises(ValueError, match=r"merges.txt:(3|4): (ids must grow in merge order|merge token)"):
        load_gpt2_files(v, tmp_path / "merges.txt", SPECIALS)
    (tmp_path / "merges.txt").write_text("\n".join(lines), encoding="utf-8")
    v.write_text('{"a": 1,\n "b" 2}', encoding="utf-8")
    with pytest.raises(ValueError, match=r"vocab.json:2: not a vocab.json: invalid JSON"):
        load_gpt2_files(v, m)
    _write(tmp_path, {**vocab, "a b": 9999}, "\n".join(lines))
    with pytest.raises(ValueError, match=r"vocab.json: token 'a b' has characters outside the GPT-2 byte alphabet"):
        load_gpt2_files(v, m)
    _write(tmp_path, {t: i for t, i in vocab.items() if t != "Ā"}, "\n".join(lines))
    with pytest.raises(ValueError, match=r"vocab.json: vocab must hold all 256 single bytes; it lacks 1, e.g. \[0\]"):
        load_gpt2_files(v, m)
    with pytest.raises(ValueError, match=r"merges\[1\]: merge token 'zz' \(b'zz'\) is not in the vocabulary"):
        from_vocab_merges(tok.vocab, [tok.byte_merges[0], (b"zz", b"a")])
    assert read_merges_txt(m)[1][0].endswith("merges.txt:2")  # line 1 is "#version"
