from __future__ import annotations

import numpy as np
import pytest
import torch

from llmbook.rag.embeddings import SentenceEmbedder, mean_pool, minilm_path, pool, read_sentence_transformers_settings

LONG = " ".join(f"The {i}th sentence of a long report mentions item{i} and its price." for i in range(60))  # 600 words
ENGLISH = [
    "How do I reset my password?",
    "The quick brown fox jumps over the lazy dog.",
    "Retrieval-augmented generation grounds an answer in retrieved passages.",
    "BM25 scores a document by term frequency, saturated by k1 and normalised by length.",
    "Paris is the capital of France.",
    "a",
    "",
]
CHINESE = [
    "检索增强生成是一种把外部知识库与大语言模型结合的方法。",
    "系统先根据用户的问题从文档集合中找出相关段落，再把这些段落连同问题一起交给模型。",
    "让模型依据证据作答，从而减少幻觉并便于溯源。",
    "向量检索用余弦相似度衡量两个句子的语义距离。",
]
CODE = [
    "def mean_pool(hidden, mask):\n    return (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)",
    "SELECT id, text FROM chunks WHERE doc_id = ? ORDER BY start;",
    "for (int i = 0; i < n; ++i) { total += x[i]; }",
    "pip install sentence-transformers==6.2.0",
]
MIXED = [
    "MiniLM 的词表对中文很不友好 (vocabulary coverage).",
    "Café, naïve, résumé — accents are stripped by the uncased tokenizer.",
    "Temperature 37.5°C, pressure 101.3 kPa, 3 × 10^8 m/s.",
    "Emoji 🙂 and symbols ☃ map to [UNK] too.",
    LONG,
]
TEXTS = ENGLISH + CHINESE + CODE + MIXED


@pytest.fixture(scope="module")
def reference():
    sentence_transformers = pytest.importorskip("sentence_transformers")
    return sentence_transformers.SentenceTransformer(str(minilm_path()), device="cpu")


@pytest.fixture(scope="module")
def embedder() -> SentenceEmbedder:
    return SentenceEmbedder()


def test_mean_pool_ignores_padding() -> None:
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 5, 4, generator=generator)  # (B, T, C)
    lengths = [5, 2, 1]
    mask = torch.tensor([[1] * n + [0] * (5 - n) for n in lengths])
    expected = torch.stack([hidden[b, :n].mean(dim=0) for b, n in enumerate(lengths)])
    diff = (mean_pool(hidden, mask) - expected).abs().max().item()
    assert diff < 1e-6, f"max_abs_diff={diff}"
    padded = hidden.clone()
    padded[mask == 0] = 1e6  # whatever sits under padding must not matter
    assert torch.equal(mean_pool(padded, mask), mean_pool(hidden, mask))
    assert torch.equal(pool(hidden, mask, "cls"), hidden[:, 0])
    assert torch.equal(pool(padded, mask, "max")[2], hidden[2, 0])
    with pytest.raises(ValueError, match="pooling mode"):
        pool(hidden, mask, "median")


def test_settings_read_from_the_model_folder(tmp_path) -> None:
    settings = read_sentence_transformers_settings(minilm_path())
    assert (settings.pooling, settings.max_seq_length, settings.lowercase) == ("mean", 256, False)
    pooling = tmp_path / "1_Pooling" / "config.json"
    pooling.parent.mkdir()
    pooling.write_text('{"pooling_mode_cls_token": true, "pooling_mode_max_tokens": false}')
    (tmp_path / "sentence_bert_config.json").write_text('{"max_seq_length": 8192, "do_lower_case": true}')
    settings = read_sentence_transformers_settings(tmp_path)  # what a BGE model folder says
    assert (settings.pooling, settings.max_seq_length, settings.lowercase) == ("cls", 8192, True)
    pooling.write_text('{"pooling_mode": "max"}')  # sentence-transformers 6
    assert read_sentence_transformers_settings(tmp_path).pooling == "max"
    pooling.write_text('{"pooling_mode_mean_tokens": true, "pooling_mode_mean_sqrt_len_tokens": true}')
    with pytest.raises(ValueError, match="exactly one"):
        read_sentence_transformers_settings(tmp_path)


def test_encode_matches_sentence_transformers(embedder: SentenceEmbedder, reference) -> None:
    expected = reference.encode(TEXTS, normalize_embeddings=True, convert_to_numpy=True)
    ours = embedder.encode(TEXTS)
    assert ours.dtype == np.float32 and ours.shape == (len(TEXTS), embedder.dim) == expected.shape
    diff = float(np.abs(ours - expected).max())
    assert diff < 1e-6, f"max_abs_diff={diff}"
    norms = np.linalg.norm(ours, axis=1)
    assert np.allclose(norms, 1.0, atol=1e-5), norms


def test_long_text_is_truncated_where_sentence_transformers_truncates(embedder: SentenceEmbedder, reference) -> None:
    kept = reference.preprocess([LONG])["input_ids"].shape[1]
    full = len(embedder.tokenizer(LONG, verbose=False)["input_ids"])
    assert kept == embedder.max_length == 256 < full
    before = embedder.truncated
    embedder.encode([LONG, "short"])
    assert embedder.truncated - before == 1
    # The trap: tokenizer.json of this model truncates at 128; cutting there gives another vector.
    short = SentenceEmbedder(max_length=128).encode([LONG])[0]
    gap = float(np.abs(short - reference.encode([LONG], normalize_embeddings=True)[0]).max())
    assert gap > 1e-3, f"max_abs_diff={gap}: 128 and 256 tokens should embed differently"


def test_batch_size_does_not_change_vectors(embedder: SentenceEmbedder) -> None:
    one = embedder.encode(TEXTS, batch_size=1)
    many = embedder.encode(TEXTS, batch_size=7)
    diff = float(np.abs(one - many).max())
    assert diff < 1e-6, f"max_abs_diff={diff}"


def test_disk_cache_returns_identical_vectors_and_counts_hits(tmp_path, embedder: SentenceEmbedder) -> None:
    cached = SentenceEmbedder(cache_dir=tmp_path)
    first = cached.encode(TEXTS[:10])
    assert cached.cache_hits == 0
    again = SentenceEmbedder(cache_dir=tmp_path)  # a new process would see the same file
    second = again.encode([*TEXTS[:10], "not seen before", TEXTS[0]])
    assert again.cache_hits == 11
    assert np.array_equal(second[:10], first) and np.array_equal(second[11], first[0])
    diff = float(np.abs(second[10] - embedder.encode(["not seen before"])[0]).max())
    assert diff < 1e-6, f"max_abs_diff={diff}"
    raw = SentenceEmbedder(cache_dir=tmp_path, normalize=False)  # another fingerprint: no stale hits
    raw.encode(TEXTS[:3])
    assert raw.cache_hits == 0


def test_fingerprint_follows_weights_and_settings(embedder: SentenceEmbedder) -> None:
    same = SentenceEmbedder()
    assert same.fingerprint == embedder.fingerprint
    assert SentenceEmbedder(max_length=128).fingerprint != embedder.fingerprint
    assert SentenceEmbedder(normalize=False).fingerprint != embedder.fingerprint
    with torch.no_grad():
        next(same.model.parameters())[0, 0] += 1e-3  # a "fine-tuned" copy: same files, other weights
    del same.fingerprint  # cached_property: computed again
    assert same.fingerprint != embedder.fingerprint


def test_unknown_token_rate_shows_the_vocabulary_gap(embedder: SentenceEmbedder) -> None:
    chinese, english = embedder.unknown_token_rate(CHINESE), embedder.unknown_token_rate(ENGLISH)
    assert chinese > 0.3, chinese
    assert english < 0.05, english


def test_bad_input(embedder: SentenceEmbedder) -> None:
    with pytest.raises(TypeError, match=r"texts\[1\] is int"):
        embedder.encode(["fine", 3])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="one str"):
        embedder.encode("a single string")
    assert embedder.encode([]).shape == (0, embedder.dim)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        SentenceEmbedder(minilm_path() / "missing")
