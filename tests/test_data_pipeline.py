"""Pipeline plumbing, normalisation, bad input, and a hypothesis property test over every stage."""

from hypothesis import given, settings
from hypothesis import strategies as st

from llmbook.data.dedup import dedup_stages
from llmbook.data.normalize import (
    NormalizeConfig,
    decode_bytes,
    normalize_stage,
    normalize_text,
    remove_boilerplate_lines,
)
from llmbook.data.pii import pii_stage
from llmbook.data.pipeline import Stage, run_pipeline
from llmbook.data.quality import bad_word_stage, gopher_stage


def test_decode_bytes_never_crashes_and_counts():
    assert decode_bytes(b"ok") == ("ok", 0)
    text, n = decode_bytes(b"abc\xff\xfedef", fallbacks=())
    assert n == 2 and text == "abc\ufffd\ufffddef"
    assert decode_bytes(b"caf\xe9")[0] == "café"  # cp1252 fallback
    mixed = "中文行".encode("gb18030") + b"\n" + "utf8 行".encode()
    text, n = decode_bytes(mixed)
    assert text == "中文行\nutf8 行" and n == 0


def test_normalize_forms_and_whitespace():
    t, _ = normalize_text("ＡＢＣ\u00a0 x\r\n\n\n\ny\x00", NormalizeConfig(form="NFKC"))
    assert t == "ABC x\n\ny"
    t, _ = normalize_text("ＡＢＣ", NormalizeConfig(form="NFC"))
    assert t == "ＡＢＣ"
    text = "Real text here.\nWe use cookies to improve.\nMore."
    assert remove_boilerplate_lines(text) == ("Real text here.\nMore.", 1)


def _stages():
    return [normalize_stage(), pii_stage(), bad_word_stage(), gopher_stage(), *dedup_stages()]


def test_pipeline_report_and_bad_input():
    from llmbook.data.corpora import load_documents

    en = [d["text"] for d in load_documents(lang="en", limit=200) if 2000 < len(d["text"]) < 6000]
    prose, prose2 = en[0], en[1]
    docs = [
        {"id": "good", "text": prose},
        {"id": "dup", "text": prose},
        {"id": "empty", "text": ""},
        {"id": "binary", "text": bytes(range(256)) * 20},
        {"id": "pii", "text": "a@b.com 13812345678 192.168.0.1"},
        {"id": "longline", "text": "word " * 200_000},
        {"id": "mixed", "text": "中文".encode("gb18030") + b"\n" + prose2.encode()},
    ]
    kept, rep = run_pipeline(docs, _stages())
    assert [d["id"] for d in kept] == ["good", "mixed"], rep.dropped
    assert rep.docs_in == 7 and rep.docs_out == 2
    assert rep.dropped["dup"] == "exact_dedup: exact_duplicate"
    assert rep.dropped["empty"] == "normalize: empty"
    assert rep.dropped["binary"] == "normalize: binary"
    assert rep.dropped["pii"] == "pii: mostly_pii"
    assert rep.dropped["longline"].startswith("quality_rules")
    for s in rep.stages:
        assert s.docs_in == s.kept + s.dropped and sum(s.reasons.values()) == s.dropped


def test_stage_must_return_doc_or_reason():
    import pytest

    with pytest.raises(TypeError, match="must return"):
        run_pipeline([{"id": "a", "text": "x"}], [Stage(name="bad", fn=lambda d: 3)])
    with pytest.raises(TypeError, match="documents must be dicts"):
        run_pipeline(["x"], [])


@settings(max_examples=30, deadline=None)  # each example runs every stage; near dedup alone costs ~0.05 s
@given(st.lists(st.one_of(st.text(max_size=300), st.binary(max_size=200)), max_size=6))
def test_property_every_stage_accepts_arbitrary_text(items):
    docs = [{"id": str(i), "text": t} for i, t in enumerate(items)]
    kept, rep = run_pipeline(docs, _stages())
    assert rep.docs_in == len(items)
    assert len(kept) + len(rep.dropped) == len(items)
    assert all(isinstance(d["text"], str) for d in kept)
