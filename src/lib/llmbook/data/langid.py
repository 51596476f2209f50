"""Language identification: a script-ratio fast path and a character n-gram naive Bayes model.

Multinomial naive Bayes (as in langid.py, Lui & Baldwin 2012; fastText's lid is the linear
cousin, arXiv:1612.03651): argmax_c log P(c) + sum_g count(g) log P(g | c), with
P(g | c) = (count_c(g) + alpha) / (sum_g' count_c(g') + alpha V) over hashed character
1-3-grams (V buckets); as in langid.py, only n-grams seen in training are scored (an unseen
n-gram's smoothed probability is highest for the class with the fewest counts, which would bias
long texts towards it). The fast path decides by script alone when a text is clearly CJK
or clearly Latin, which covers most web text at almost no cost.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from llmbook.data.minhash import CJK_RE
from llmbook.data.pipeline import Doc, Stage
from llmbook.data.quality import hashed_features

_LATIN_RE = re.compile(r"[A-Za-z\u00c0-\u024f]")


def script_ratio(text: str) -> dict[str, float]:
    """Shares of CJK and Latin letters among non-space characters."""
    n = sum(1 for ch in text if not ch.isspace()) or 1
    return {"cjk": len(CJK_RE.findall(text)) / n, "latin": len(_LATIN_RE.findall(text)) / n}


def script_guess(text: str, min_share: float = 0.5) -> str | None:
    """"zh" if CJK share >= min_share, "en" if Latin share >= min_share, else None (ask the model)."""
    r = script_ratio(text)
    if r["cjk"] >= min_share:
        return "zh"
    if r["latin"] >= min_share:
        return "en"
    return None


@dataclass(kw_only=True)
class LangIdConfig:
    """Naive Bayes settings."""

    n_buckets: int = 1 << 16  # hashed n-gram vocabulary size V
    ngrams: tuple[int, ...] = (1, 2, 3)  # character n-gram orders
    alpha: float = 0.1  # additive (Lidstone) smoothing


class NaiveBayesLangId:
    """Multinomial naive Bayes over hashed character n-grams."""

    def __init__(self, cfg: LangIdConfig | None = None) -> None:
        self.cfg = cfg or LangIdConfig()
        self.labels: list[str] = []
        self.log_prior = np.zeros(0)
        self.log_prob = np.zeros((0, self.cfg.n_buckets))  # (classes, V)
        self.seen = np.zeros(self.cfg.n_buckets, bool)  # (V,) buckets with any training count

    def fit(self, texts: Sequence[str], labels: Sequence[str]) -> NaiveBayesLangId:
        if len(texts) != len(labels) or not texts:
            raise ValueError("texts and labels must be non-empty and equally long")
        self.labels = sorted(set(labels))
        counts = np.zeros((len(self.labels), self.cfg.n_buckets))
        prior = np.zeros(len(self.labels))
        for (idx, _), lab in zip(hashed_features(list(texts), self.cfg.ngrams, self.cfg.n_buckets), labels):
            c = self.labels.index(lab)
            counts[c, idx] += 1.0
            prior[c] += 1
        self.log_prior = np.log(prior / prior.sum())
        self.seen = counts.sum(axis=0) > 0  # (V,) buckets seen in training; others carry no evidence
        sm = counts + self.cfg.alpha
        self.log_prob = np.log(sm / sm.sum(axis=1, keepdims=True))
        return self

    def predict(
        self, texts: Sequence[str], fast_path: bool = True, fast_scripts: Sequence[str] = ("zh", "en")
    ) -> list[str]:
        """Language label per text (script fast path first when ``fast_path``, trusted only for ``fast_scripts``).

        ``fast_scripts=("zh",)`` sends Latin-script text to the model: code is Latin script too.
        """
        if not self.labels:
            raise ValueError("model is not fitted: call fit first")
        out = []
        for t, (idx, _) in zip(texts, hashed_features(list(texts), self.cfg.ngrams, self.cfg.n_buckets)):
            guess = script_guess(t) if fast_path else None
            if guess in self.labels and guess in fast_scripts:
                out.append(guess)
                continue
            idx = idx[self.seen[idx]]  # unseen n-grams would favour the class with the fewest training counts
            scores = self.log_prior + self.log_prob[:, idx].sum(axis=1)
            out.append(self.labels[int(np.argmax(scores))])
        return out


def per_language_scores(gold: Sequence[str], pred: Sequence[str]) -> dict[str, dict[str, float]]:
    """Per-label precision and recall."""
    res = {}
    for lab in sorted(set(gold) | set(pred)):
        tp = sum(g == lab and p == lab for g, p in zip(gold, pred))
        npred, ngold = sum(p == lab for p in pred), sum(g == lab for g in gold)
        res[lab] = {"precision": tp / npred if npred else 1.0, "recall": tp / ngold if ngold else 1.0}
    return res


def langid_stage(
    model: NaiveBayesLangId,
    keep: Sequence[str] = ("en", "zh"),
    name: str = "langid",
    fast_path: bool = True,
    fast_scripts: Sequence[str] = ("zh", "en"),
) -> Stage:
    """Label ``meta["lang"]``; drop other languages as ``"lang:<label>"`` (see ``NaiveBayesLangId.predict``)."""

    def fn(doc: Doc) -> Doc | str:
        lab = model.predict([doc["text"]], fast_path=fast_path, fast_scripts=fast_scripts)[0]
        if lab not in keep:
            return f"lang:{lab}"
        return {**doc, "meta": {**doc.get("meta", {}), "lang": lab}}

    return Stage(name=name, fn=fn)
