"""Gopher/C4 rules, word-list filter, hashed n-gram quality classifier, language id."""

import random

import numpy as np
import pytest

from llmbook.data import quality as q
from llmbook.data.corpora import load_documents
from llmbook.data.langid import NaiveBayesLangId, per_language_scores, script_guess

GOOD = (
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want "
    "of a wife. However little known the feelings or views of such a man may be on his first entering a "
    "neighbourhood, this truth is so well fixed in the minds of the surrounding families, that he is considered "
    "the rightful property of some one or other of their daughters. My dear Mr. Bennet, said his lady to him one "
    "day, have you heard that Netherfield Park is let at last?"
)


def test_rule_statistics_hand_cases():
    assert q.word_count("a b  c\nd") == 4
    assert q.word_count("床前明月光") == 5  # CJK: one word per character
    assert q.mean_word_length("ab abcd") == 3.0
    assert q.symbol_word_ratio("# a # b") == 0.5
    assert q.bullet_line_frac("- a\n- b\nc\nd") == 0.5
    assert q.ellipsis_line_frac("a...\nb") == 0.5
    assert q.alpha_word_frac("a 12 b 34") == 0.5
    assert q.stop_word_count("the cat and the hat") == 2
    assert q.dup_line_fracs("x\ny\nx\nx") == (0.5, 0.5)
    assert q.top_ngram_char_frac("a b a b a b", 2) == pytest.approx(3 * 2 / 6)
    assert q.dup_ngram_char_frac(" ".join("abcde") * 1, 5) == 0.0
    assert q.dup_ngram_char_frac("a b c d e a b c d e", 5) == 1.0


def test_gopher_rules_keep_prose_drop_junk():
    assert q.gopher_rules(GOOD) == []
    assert "word_count" in q.gopher_rules("too short")
    assert "dup_lines" in q.gopher_rules("\n".join(["buy now cheap pills online"] * 20 + [GOOD]))
    assert "bullet_lines" in q.gopher_rules("\n".join(f"- item {i} of the list and the more" for i in range(60)))
    assert "alpha_words" in q.gopher_rules(" ".join(str(i) for i in range(100)) + " the and")
    zh = "".join(d["text"] for d in load_documents(lang="zh", limit=5))
    assert "mean_word_length" not in q.gopher_rules(zh)


def test_bad_words():
    assert q.bad_word_count("what the fuck") == 1 and q.bad_word_count("Scunthorpe") == 0
    assert q.bad_word_count("这是色情网站") == 1


def _junk(rng, good):
    k = rng.randrange(3)
    if k == 0:  # word salad
        w = " ".join(good).split()
        return " ".join(rng.choice(w) for _ in range(80))
    if k == 1:  # spammy repetition
        return " ".join(["BUY CHEAP pills NOW!!! click here"] * 12)
    chars = "abcdefghijklmnopqrstuvwxyz0123456789#$%"  # random character strings
    return " ".join("".join(rng.choice(chars) for _ in range(rng.randint(2, 12))) for _ in range(60))


def test_quality_classifier_learns_and_roundtrips(tmp_path):
    rng = random.Random(0)
    good = [d["text"][:600] for d in load_documents(lang="en", limit=300) if len(d["text"]) > 300][:200]
    bad = [_junk(rng, good) for _ in range(len(good))]
    texts, y = good + bad, [1] * len(good) + [0] * len(bad)
    idx = list(range(len(texts)))
    rng.shuffle(idx)
    tr, te = idx[: len(idx) * 3 // 4], idx[len(idx) * 3 // 4 :]
    model = q.QualityClassifier(q.QualityClassifierConfig(n_buckets=1 << 16, epochs=3))
    losses = model.fit([texts[i] for i in tr], [y[i] for i in tr])
    assert losses[-1] < losses[0]
    p = model.predict_proba([texts[i] for i in te])
    acc = float(np.mean((p > 0.5) == np.array([y[i] for i in te])))
    assert acc > 0.85, acc  # word salad from good text shares its n-grams: the hard third of the junk
    model.save(tmp_path / "q.npz")
    p2 = q.QualityClassifier.load(tmp_path / "q.npz").predict_proba([texts[i] for i in te])
    assert np.abs(p - p2).max() == 0.0, f"max_abs_diff={np.abs(p - p2).max()}"


def test_langid_per_language():
    en = [d["text"] for d in load_documents(lang="en", limit=400)]
    zh = [d["text"] for d in load_documents(lang="zh", limit=400)]
    def chunks(ts, n):
        return [t[i : i + n] for t in ts for i in range(0, min(len(t), 4 * n), n) if t[i : i + n].strip()]
    en_c, zh_c = chunks(en, 60), chunks(zh, 20)
    tr_x = en_c[::2] + zh_c[::2]
    tr_y = ["en"] * len(en_c[::2]) + ["zh"] * len(zh_c[::2])
    te_x, te_y = en_c[1::2] + zh_c[1::2], ["en"] * len(en_c[1::2]) + ["zh"] * len(zh_c[1::2])
    model = NaiveBayesLangId().fit(tr_x, tr_y)
    scores = per_language_scores(te_y, model.predict(te_x, fast_path=False))
    for lab in ("en", "zh"):
        assert scores[lab]["precision"] > 0.97 and scores[lab]["recall"] > 0.97, scores
    assert script_guess("床前明月光") == "zh" and script_guess("hello world") == "en"
    assert script_guess("123 456") is None
