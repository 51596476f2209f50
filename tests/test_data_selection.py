"""Byte n-gram LM, reference-model selection, temperature mixing, proxy search, curriculum."""

import math

import numpy as np
import pytest

from llmbook.data.corpora import load_documents
from llmbook.data.mixing import curriculum_weights, proxy_search, sample_mixture, temperature_weights
from llmbook.data.selection import (
    ByteNGramLM,
    SelectionConfig,
    excess_scores,
    reference_scores,
    select_stratified,
    select_top,
    selection_experiment,
)


def _cond_probs(lm: ByteNGramLM, prefix: bytes) -> np.ndarray:
    """P(c | prefix) for all 256 next bytes, from the model's own log-probabilities."""
    logp, _ = lm._log_probs([prefix + bytes([c]) for c in range(256)])
    per = logp.reshape(256, len(prefix) + 1)
    return np.exp(per[:, -1])


@pytest.mark.parametrize("order", [1, 2, 3, 5])
def test_ngram_distribution_sums_to_one(order):
    lm = ByteNGramLM(order).fit(["hello world", "help me", "中文文本", b"\x00\xff"])
    for prefix in (b"he", b"hel", b"zz", "中".encode()):
        total = _cond_probs(lm, prefix).sum()
        assert abs(total - 1.0) < 1e-9, f"order={order} prefix={prefix!r} max_abs_diff={abs(total - 1):.2e}"


def test_witten_bell_hand_derived():
    # "ab" fitted at order 2 (pad byte 0 before it). Unigram: C=2, T=2 ('a','b'), C(a)=1.
    # P1(a) = (1 + 2/256) / (2 + 2). Bigram context PAD: C=1, T=1, C(PAD a)=1 -> P2(a|PAD) = (1 + P1(a)) / 2.
    lm = ByteNGramLM(2).fit(["ab"])
    p1a = (1 + 2 / 256) / 4
    expected = (1 + p1a) / 2
    logp, _ = lm._log_probs(["a"])
    assert abs(math.exp(logp[0]) - expected) < 1e-12, f"max_abs_diff={abs(math.exp(logp[0]) - expected):.2e}"
    # an unseen context backs off to the unigram level unchanged
    logp, _ = lm._log_probs(["zb"])  # context 'z' never seen
    p1b = (1 + 2 / 256) / 4
    assert abs(math.exp(logp[1]) - p1b) < 1e-12


def test_higher_order_fits_text_better_and_losses_per_doc():
    text = [d["text"] for d in load_documents("austen", limit=6)]
    train, held = text[:5], text[5:]
    losses = [ByteNGramLM(k).fit(train).loss(held) for k in (1, 2, 4)]
    assert losses[0] > losses[1] > losses[2], losses
    lm = ByteNGramLM(3).fit(train)
    per = lm.doc_losses(held + [""])
    assert np.isnan(per[-1]) and abs(per[0] - lm.loss(held)) < 1e-9
    with pytest.raises(ValueError, match="order"):
        ByteNGramLM(9)
    with pytest.raises(ValueError, match="fit"):
        ByteNGramLM(2).loss(["x"])


def test_reference_and_excess_scores_rank_junk_last():
    ref_docs = [d["text"] for d in load_documents("austen", limit=10)]
    rm = ByteNGramLM(3).fit(ref_docs[:8])
    rng = np.random.default_rng(0)
    junk = bytes(rng.integers(0, 256, 2000, dtype=np.uint8)).decode("latin-1")
    pool = [ref_docs[8], junk, ref_docs[9]]
    s = reference_scores(pool, rm)
    assert s[1] > s[0] and s[1] > s[2], s
    cur = ByteNGramLM(3).fit([junk])  # a "current model" that already learned the junk
    ex = excess_scores(pool, cur, rm)
    assert ex[1] < ex[0] and ex[1] < ex[2], ex


def test_select_top_budget_and_stratified():
    scores = np.array([3.0, 1.0, 2.0, np.nan])
    lengths = np.array([10, 10, 10, 10])
    assert select_top(scores, lengths, 15).tolist() == [1, 2]  # lowest first, crossing doc included
    assert select_top(scores, lengths, 5, lowest=False).tolist() == [0]
    groups = ["en", "en", "zh", "zh"]
    picked = select_stratified(np.array([1.0, 2.0, 5.0, 4.0]), lengths, groups, 20)
    assert picked.tolist() == [0, 3]  # one per group, best of each
    with pytest.raises(ValueError, match="groups"):
        select_stratified(scores, lengths, ["en"], 10)


def test_selection_beats_random_for_a_target_domain():
    austen = [d["text"] for d in load_documents("austen", limit=40)]
    moby = [d["text"] for d in load_documents("moby_dick", limit=40)]
    pool = austen[10:40] + moby
    rows, _ = selection_experiment(pool, ["all"] * len(pool), austen[:6], austen[6:10],
                                   SelectionConfig(order=3, budgets=(0.2,), seed=0))
    loss = {r["method"]: r["heldout_loss"] for r in rows}
    assert loss["low L_RM"] < loss["random"] - 0.02, loss


def test_temperature_weights_hand_derived():
    w = temperature_weights({"a": 1, "b": 4}, 2.0)  # sqrt: 1, 2 -> 1/3, 2/3
    assert abs(w["a"] - 1 / 3) < 1e-12 and abs(w["b"] - 2 / 3) < 1e-12
    w1 = temperature_weights({"a": 1, "b": 3}, 1.0)
    assert abs(w1["a"] - 0.25) < 1e-12
    wu = temperature_weights({"a": 1, "b": 1000}, float("inf"))
    assert wu == {"a": 0.5, "b": 0.5}
    with pytest.raises(ValueError, match="temperature"):
        temperature_weights({"a": 1}, 0)
    with pytest.raises(ValueError, match="sizes"):
        temperature_weights({"a": 0}, 1)


def test_curriculum_and_sample_mixture():
    c = curriculum_weights({"a": 1.0, "b": 0.0}, {"a": 0.0, "b": 1.0}, 3)
    assert c == [{"a": 1.0, "b": 0.0}, {"a": 0.5, "b": 0.5}, {"a": 0.0, "b": 1.0}]
    sources = {"a": ["x" * 100] * 3, "b": ["y" * 100] * 20}
    docs, epochs = sample_mixture(sources, {"a": 0.5, "b": 0.5}, 1000, seed=0)
    assert sum(d.startswith("x") for d in docs) == 5 and epochs["a"] == pytest.approx(5 / 3)
    with pytest.raises(ValueError, match="unknown sources"):
        sample_mixture(sources, {"c": 1.0}, 100)


def test_proxy_search_prefers_the_target_source():
    en = [d["text"] for d in load_documents("austen", limit=12)]
    zh = [d["text"] for d in load_documents("tang_song_poetry", limit=600)]
    train = {"en": en[:10], "zh": zh[:500]}
    held = {"en": en[10:], "zh": zh[500:]}
    rows = proxy_search(train, held, {"en": 1.0, "zh": 0.0},
                        {"mostly zh": {"en": 0.1, "zh": 0.9}, "mostly en": {"en": 0.9, "zh": 0.1}}, 100_000, order=3)
    assert rows[0]["candidate"] == "mostly en", [(r["candidate"], r["target_loss"]) for r in rows]
