"""Raw-crawl synthesis, the chapter pipeline end to end, token-array layout, corpus artifact round trip."""

import json

import numpy as np
import pytest

from llmbook.book import profiles
from llmbook.chain import corpus as chain
from llmbook.data import corpus_build as cb
from llmbook.data.raw_corpus import DIRT_KINDS, RawCorpusConfig, make_raw_corpus
from llmbook.tokenization import train_bpe


def test_raw_corpus_is_deterministic_and_labelled():
    cfg = RawCorpusConfig(en_docs=12, zh_docs=12, seed=3)
    a, b = make_raw_corpus(cfg), make_raw_corpus(cfg)
    assert [d["id"] for d in a.docs] == [d["id"] for d in b.docs]
    assert [d["text"] for d in a.docs] == [d["text"] for d in b.docs]
    assert set(a.counts()) <= set(DIRT_KINDS) and {"near_dup", "binary", "code", "word_salad"} <= set(a.counts())
    ref_ids = {d["id"] for d in a.reference}
    assert ref_ids and not ref_ids & {d["id"] for d in a.docs}
    for d in a.docs:
        if d["meta"]["dirt"] == "pii":
            assert all(v in d["text"] for v in d["meta"]["pii_values"])
    with pytest.raises(ValueError, match="junk_rate"):
        RawCorpusConfig(junk_rate=2.0)


def test_tokenize_documents_layout():
    tok = train_bpe("hello world, hello tokens " * 20, 300, ("<|endoftext|>",))
    eot = tok.special_tokens["<|endoftext|>"]
    texts = ["hello world", "", "tokens 中文"]
    tokens, offsets = cb.tokenize_documents(texts, tok, eot)
    assert tokens.dtype == np.uint16 and offsets.tolist()[0] == 0 and len(offsets) == 4
    for i, t in enumerate(texts):
        doc = tokens[offsets[i] : offsets[i + 1]].tolist()
        assert doc[-1] == eot and doc[:-1] == tok.encode_ordinary(t)


def test_pipeline_goals_and_artifact_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMBOOK_CACHE", str(tmp_path))
    cfg = profiles.resolve("pretraining_data", "smoke", en_docs=20, zh_docs=20, junk_rate=0.1)
    result = chain.clean_corpus(cfg)
    fate = {d["id"]: "kept" for d in result.kept}
    fate.update(result.report.dropped)
    for kind in ("binary", "code", "short", "spam", "menu", "toxic", "contact_list", "exact_dup"):
        docs = [d for d in result.raw.docs if d["meta"]["dirt"] == kind]
        assert docs and all(fate[d["id"]] != "kept" for d in docs), (kind, [fate[d["id"]] for d in docs])
    kept_clusters = [d["meta"]["cluster"] for d in result.kept]
    assert len(kept_clusters) == len(set(kept_clusters))  # no planted duplicate survives here
    out = {d["id"]: d["text"] for d in result.kept}
    for d in result.raw.docs:
        if d["meta"]["dirt"] == "pii" and d["id"] in out:
            assert not [v for v in d["meta"]["pii_values"] if v in out[d["id"]]]
    corpus = chain.save_pretraining_corpus(result.kept, cfg)
    assert not corpus.artifact.hit and corpus.n_docs == len(result.kept)
    again = chain.pretraining_corpus(cfg)
    assert again.artifact.hit and np.array_equal(again.tokens, corpus.tokens)
    index = json.loads((corpus.artifact.path / chain.INDEX_FILE).read_text())
    assert index["offsets"][-1] == len(corpus.tokens) and corpus.document(0)[-1] == corpus.eot_id
    with open(corpus.artifact.path / chain.TOKENS_FILE, "rb") as f:
        assert b"pickle" not in f.read(200)
    np.load(corpus.artifact.path / chain.TOKENS_FILE, allow_pickle=False)


def test_profile_rejects_impossible_values():
    with pytest.raises(profiles.ParameterError, match="selection_target"):
        profiles.resolve("pretraining_data", "smoke", selection_target="wikipedia")
    with pytest.raises(profiles.ParameterError, match="boilerplate_rate"):
        profiles.resolve("pretraining_data", "smoke", pii_rate=0.8, boilerplate_rate=0.5)
