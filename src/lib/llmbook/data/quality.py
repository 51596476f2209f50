"""Heuristic quality rules (Gopher, C4), a word-list filter and a hashed n-gram quality classifier.

Rules follow Gopher's MassiveText filters (Rae et al., arXiv:2112.11446, App. A.1.1) and C4
(Raffel et al., arXiv:1910.10683, Sec. 2.2). Each rule is a pure statistic ``text -> float``
with its published threshold as a constant; :func:`gopher_rules` returns the names of the
rules a text fails.

CJK handling: "words" are :func:`llmbook.data.minhash.words` - whitespace runs, but each CJK
character is one word. So word counts and n-gram repetition statistics become character-based
for Chinese; the mean-word-length rule is skipped for CJK-dominant text (a character is
always a 1-char "word"), and the stop-word rule uses a Chinese function-word list there.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from llmbook.data.minhash import CJK_RE, hash_char_ngrams_batch, words
from llmbook.data.pipeline import Doc, Stage

# --- Gopher thresholds (arXiv:2112.11446, App. A.1.1) --------------------------------------
MIN_WORDS, MAX_WORDS = 50, 100_000  # documents outside [50, 100k] words are removed
MIN_MEAN_WORD_LEN, MAX_MEAN_WORD_LEN = 3.0, 10.0  # mean word length outside [3, 10] chars
MAX_SYMBOL_WORD_RATIO = 0.1  # ("#" + "..." + "…") per word above 0.1
MAX_BULLET_LINE_FRAC = 0.9  # more than 90 % of lines start with a bullet
MAX_ELLIPSIS_LINE_FRAC = 0.3  # more than 30 % of lines end with an ellipsis
MIN_ALPHA_WORD_FRAC = 0.8  # fewer than 80 % of words contain an alphabetic character
MIN_STOP_WORDS = 2  # must contain at least 2 of the stop words below
STOP_WORDS_EN = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})  # Gopher's list
STOP_WORDS_ZH = frozenset("的了是在不我有和人这之而其也以于为无一")  # our CJK analogue (function words)
MAX_DUP_LINE_FRAC = 0.30  # fraction of lines that are duplicates
MAX_DUP_PARA_FRAC = 0.30  # fraction of paragraphs that are duplicates
MAX_DUP_LINE_CHAR_FRAC = 0.20  # fraction of characters in duplicate lines
MAX_DUP_PARA_CHAR_FRAC = 0.20  # fraction of characters in duplicate paragraphs
MAX_TOP_NGRAM_CHAR_FRAC = {2: 0.20, 3: 0.18, 4: 0.16}  # chars covered by the most frequent n-gram
MAX_DUP_NGRAM_CHAR_FRAC = {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}  # chars in repeated n-grams
CJK_DOMINANT = 0.3  # share of CJK characters (of non-space chars) above which a text is treated as CJK
MAX_NGRAM_WORDS = 100_000  # repetition statistics look at the first 100k words (bounded time on huge docs)

_BULLET_RE = re.compile(r"^\s*[•●○◦▪▫■□\-\*–—·]")
_ALPHA_RE = re.compile(r"[^\W\d_]")


def cjk_ratio(text: str) -> float:
    """Share of CJK characters among non-space characters (0 for empty text)."""
    n = sum(1 for ch in text if not ch.isspace())
    return len(CJK_RE.findall(text)) / n if n else 0.0


def word_count(text: str) -> float:
    return float(len(words(text)))


def mean_word_length(text: str) -> float:
    w = words(text)
    return sum(map(len, w)) / len(w) if w else 0.0


def symbol_word_ratio(text: str) -> float:
    """(count of "#" + "..." + "…") / words."""
    w = len(words(text))
    return (text.count("#") + text.count("...") + text.count("…")) / w if w else 0.0


def _lines(text: str) -> list[str]:
    return [ln for ln in text.split("\n") if ln.strip()]


def bullet_line_frac(text: str) -> float:
    ls = _lines(text)
    return sum(bool(_BULLET_RE.match(ln)) for ln in ls) / len(ls) if ls else 0.0


def ellipsis_line_frac(text: str) -> float:
    ls = _lines(text)
    return sum(ln.rstrip().endswith(("...", "…")) for ln in ls) / len(ls) if ls else 0.0


def alpha_word_frac(text: str) -> float:
    """Fraction of words with at least one alphabetic character (CJK characters count as alphabetic)."""
    w = words(text)
    return sum(bool(_ALPHA_RE.search(x)) for x in w) / len(w) if w else 0.0


def stop_word_count(text: str) -> float:
    """Number of distinct stop words present (English list, or the Chinese list for CJK text)."""
    if cjk_ratio(text) > CJK_DOMINANT:
        return float(len(STOP_WORDS_ZH & set(text)))
    return float(len(STOP_WORDS_EN & {x.lower() for x in words(text)}))


def _dup_fracs(items: list[str]) -> tuple[float, float]:
    """(fraction of items that repeat an earlier item, fraction of chars in those repeats)."""
    if not items:
        return 0.0, 0.0
    seen: set[str] = set()
    dup = dup_chars = 0
    for it in items:
        if it in seen:
            dup += 1
            dup_chars += len(it)
        seen.add(it)
    return dup / len(items), dup_chars / max(sum(map(len, items)), 1)


def dup_line_fracs(text: str) -> tuple[float, float]:
    return _dup_fracs(_lines(text))


def dup_para_fracs(text: str) -> tuple[float, float]:
    return _dup_fracs([p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()])


def top_ngram_char_frac(text: str, n: int) -> float:
    """Characters covered by the most frequent word n-gram (count x its chars) / chars in all words."""
    w = words(text)[:MAX_NGRAM_WORDS]
    if len(w) < n:
        return 0.0
    grams = Counter(tuple(w[i : i + n]) for i in range(len(w) - n + 1))
    gram, cnt = grams.most_common(1)[0]
    if cnt < 2:
        return 0.0
    return cnt * sum(map(len, gram)) / max(sum(map(len, w)), 1)


def dup_ngram_char_frac(text: str, n: int) -> float:
    """Characters of words covered by any word n-gram that occurs more than once / chars in all words."""
    w = words(text)[:MAX_NGRAM_WORDS]
    if len(w) < n:
        return 0.0
    grams = [tuple(w[i : i + n]) for i in range(len(w) - n + 1)]
    counts = Counter(grams)
    covered = np.zeros(len(w), bool)
    for i, g in enumerate(grams):
        if counts[g] > 1:
            covered[i : i + n] = True
    lens = np.fromiter(map(len, w), np.int64, len(w))
    return float(lens[covered].sum() / max(lens.sum(), 1))


def gopher_rules(text: str) -> list[str]:
    """Names of the Gopher rules ``text`` fails (empty list = keep)."""
    cjk = cjk_ratio(text) > CJK_DOMINANT
    fails = []
    n = word_count(text)
    if not MIN_WORDS <= n <= MAX_WORDS:
        fails.append("word_count")
    if not cjk and not MIN_MEAN_WORD_LEN <= mean_word_length(text) <= MAX_MEAN_WORD_LEN:
        fails.append("mean_word_length")
    if symbol_word_ratio(text) > MAX_SYMBOL_WORD_RATIO:
        fails.append("symbol_word_ratio")
    if bullet_line_frac(text) > MAX_BULLET_LINE_FRAC:
        fails.append("bullet_lines")
    if ellipsis_line_frac(text) > MAX_ELLIPSIS_LINE_FRAC:
        fails.append("ellipsis_lines")
    if alpha_word_frac(text) < MIN_ALPHA_WORD_FRAC:
        fails.append("alpha_words")
    if stop_word_count(text) < MIN_STOP_WORDS:
        fails.append("stop_words")
    lf, lcf = dup_line_fracs(text)
    pf, pcf = dup_para_fracs(text)
    if lf > MAX_DUP_LINE_FRAC or lcf > MAX_DUP_LINE_CHAR_FRAC:
        fails.append("dup_lines")
    if pf > MAX_DUP_PARA_FRAC or pcf > MAX_DUP_PARA_CHAR_FRAC:
        fails.append("dup_paragraphs")
    if n >= 2 and any(top_ngram_char_frac(text, k) > t for k, t in MAX_TOP_NGRAM_CHAR_FRAC.items()):
        fails.append("top_ngram")
    if n >= 5 and any(dup_ngram_char_frac(text, k) > t for k, t in MAX_DUP_NGRAM_CHAR_FRAC.items()):
        fails.append("dup_ngram")
    return fails


def gopher_stage(name: str = "quality_rules") -> Stage:
    """Pipeline stage: drop a document under the name of the *first* Gopher rule it fails."""

    def fn(doc: Doc) -> Doc | str:
        fails = gopher_rules(doc["text"])
        return fails[0] if fails else doc

    return Stage(name=name, fn=fn)


# --- word-list ("toxicity") filter, C4 style ------------------------------------------------
# A deliberately small list in the spirit of C4's "List of Dirty, Naughty, Obscene or Otherwise
# Bad Words"; C4 drops any page containing one. Extend it with your own list for real use.
BAD_WORDS_EN = frozenset(
    "fuck fucking fucker shit bullshit bitch bastard asshole cunt dick cock pussy whore slut "
    "porn porno pornography xxx nude nudes blowjob dildo cum masturbate hentai nigger faggot retard".split()
)
BAD_WORDS_ZH = ("色情", "做爱", "操你", "傻逼", "妈的", "婊子", "裸聊", "约炮", "黄片", "贱人")


def bad_word_count(text: str, en: frozenset[str] = BAD_WORDS_EN, zh: tuple[str, ...] = BAD_WORDS_ZH) -> int:
    """Occurrences of list words: whole (lower-cased) English words, substrings for Chinese."""
    return sum(1 for w in re.findall(r"[a-z]+", text.lower()) if w in en) + sum(text.count(z) for z in zh)


def bad_word_stage(
    max_count: int = 0,
    name: str = "bad_words",
    en: frozenset[str] = BAD_WORDS_EN,
    zh: tuple[str, ...] = BAD_WORDS_ZH,
) -> Stage:
    """Drop documents with more than ``max_count`` list words (C4: ``max_count=0``) as ``"bad_words"``."""
    if max_count < 0:
        raise ValueError(f"max_count must be >= 0, got {max_count}")

    def fn(doc: Doc) -> Doc | str:
        return "bad_words" if bad_word_count(doc["text"], en, zh) > max_count else doc

    return Stage(name=name, fn=fn)


# --- hashed n-gram logistic-regression quality classifier (fastText-style) ------------------
@dataclass(kw_only=True)
class QualityClassifierConfig:
    """Hyper-parameters of :class:`QualityClassifier`."""

    n_buckets: int = 1 << 18  # hashing-trick dimension (fastText uses 2M buckets; 262k is plenty here)
    ngrams: tuple[int, ...] = (1, 2, 3, 4)  # character n-gram orders (work for English and CJK alike)
    epochs: int = 5  # SGD passes over the training set
    lr: float = 0.5  # SGD step size (features are L2-normalised, so O(1) steps are stable)
    l2: float = 1e-6  # L2 penalty per step
    seed: int = 0  # shuffling seed

    def __post_init__(self) -> None:
        if self.n_buckets < 2:
            raise ValueError(f"n_buckets must be >= 2, got {self.n_buckets}")
        if not self.ngrams or any(n < 1 for n in self.ngrams):
            raise ValueError(f"ngrams must be non-empty positive ints, got {self.ngrams}")


def hashed_features(texts: list[str], ngrams: tuple[int, ...], n_buckets: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per text: (bucket indices, L2-normalised counts) of its hashed character n-grams."""
    out: list[list[np.ndarray]] = [[] for _ in texts]
    for n in ngrams:
        flat, lens = hash_char_ngrams_batch(texts, n)
        for i, h in enumerate(np.split(flat % np.uint64(n_buckets), np.cumsum(lens)[:-1])):
            out[i].append(h)
    feats = []
    for parts in out:
        h = np.concatenate(parts) if parts else np.empty(0, np.uint64)
        idx, cnt = np.unique(h.astype(np.int64), return_counts=True)
        val = cnt.astype(np.float64)
        val /= max(np.linalg.norm(val), 1e-12)
        feats.append((idx, val))
    return feats


class QualityClassifier:
    """Logistic regression p(good | x) = sigmoid(w . x + b) on hashed char n-gram features.

    The fastText-style quality filter of CCNet/GPT-3/LLaMA (reference text vs random web text,
    arXiv:2005.14165 App. A), minus the embedding layer: a linear model over hashed n-grams,
    trained by plain SGD on the log-loss.
    """

    def __init__(self, cfg: QualityClassifierConfig | None = None) -> None:
        self.cfg = cfg or QualityClassifierConfig()
        self.w = np.zeros(self.cfg.n_buckets)
        self.b = 0.0

    def _feats(self, texts: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        return hashed_features(list(texts), self.cfg.ngrams, self.cfg.n_buckets)

    def fit(self, texts: list[str], labels: list[int]) -> list[float]:
        """Train on texts with labels 1 (good) / 0 (bad); return the mean log-loss per epoch."""
        y = np.asarray(labels, dtype=np.float64)
        if len(texts) != len(y) or len(y) == 0 or not np.isin(y, (0, 1)).all():
            raise ValueError("texts and labels must be non-empty, equally long, and labels in {0, 1}")
        feats = self._feats(texts)
        rng = np.random.default_rng(self.cfg.seed)
        losses = []
        for _ in range(self.cfg.epochs):
            total = 0.0
            for i in rng.permutation(len(y)):
                idx, val = feats[i]
                z = float(self.w[idx] @ val) + self.b
                p = 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))
                total += -(y[i] * np.log(p + 1e-12) + (1 - y[i]) * np.log(1 - p + 1e-12))
                g = p - y[i]  # d loss / d z
                self.w[idx] -= self.cfg.lr * (g * val + self.cfg.l2 * self.w[idx])
                self.b -= self.cfg.lr * g
            losses.append(total / len(y))
        return losses

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        """p(good) per text, shape (N,)."""
        z = np.array([float(self.w[i] @ v) + self.b for i, v in self._feats(list(texts))])
        return 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))

    def save(self, path: str | Path) -> None:
        """Write weights and config to an ``.npz`` (no pickle)."""
        np.savez(Path(path), w=self.w, b=np.array(self.b), cfg=np.array(json.dumps(asdict(self.cfg))))

    @classmethod
    def load(cls, path: str | Path) -> QualityClassifier:
        with np.load(Path(path), allow_pickle=False) as z:
            cfg = json.loads(str(z["cfg"]))
            cfg["ngrams"] = tuple(cfg["ngrams"])
            model = cls(QualityClassifierConfig(**cfg))
            model.w, model.b = z["w"].copy(), float(z["b"])
        return model


def classifier_stage(model: QualityClassifier, threshold: float = 0.5, name: str = "quality_model") -> Stage:
    """Drop documents with p(good) < ``threshold`` as ``"low_quality_score"``; the score goes to ``meta``."""

    def fn(doc: Doc) -> Doc | str:
        p = float(model.predict_proba([doc["text"]])[0])
        if p < threshold:
            return "low_quality_score"
        return {**doc, "meta": {**doc.get("meta", {}), "quality_score": p}}

    return Stage(name=name, fn=fn)

