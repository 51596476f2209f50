"""A web-text quality classifier trained on real page text: main content ("high") vs page furniture ("low").

The classifier of :mod:`llmbook.data.quality` learns "novel vs generated junk"; on a crawled page it calls
navigation bars and link lists good. Here the same kind of model - the fastText-style linear filter of
CCNet / GPT-3 (Wenzek et al., arXiv:1911.00359; Brown et al., arXiv:2005.14165 App. A): reference text
against web text - is trained on ``data/quality_segments.jsonl.gz`` (built by ``data/build_quality_set.py``):

* ``"high"``: main text of real documentation pages (Python, PostgreSQL, SQLite, Node.js, Debian Reference),
  Python reST sources as plain text, Wikipedia passages and some book chapters;
* ``"low"``: the furniture of the same pages - navigation bars, breadcrumbs, sidebars, footers, language
  pickers, tables of contents, index pages, link lists - and spam-like keyword-stuffed pages made of their
  link texts.

The test split holds out a whole site (the Apache httpd manual) plus 15 % of the other pages; no page
is in two splits.

Model: logistic regression ``P(high | x) = sigmoid(w . x + b)`` where ``x`` concatenates the L2-normalised
hashed character 2-4-gram counts of :func:`llmbook.data.quality.hashed_features` with a few dense *layout*
features that do not depend on a site's vocabulary (share of short lines, words per line, lines ending a
sentence, function-word rate, bullets, separators ``| » >``, repeated lines, distinct-word ratio, ...).
The score returned everywhere is ``P(high)`` in [0, 1]; the label is ``"high"`` when the score is at
least the model's threshold (0.5 unless trained otherwise), else ``"low"``. English text.
"""

from __future__ import annotations

import copy
import gzip
import json
import re
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from llmbook.data.corpora import DATA_DIR_ENV, data_dir
from llmbook.data.quality import QualityClassifier, QualityClassifierConfig, gopher_rules, hashed_features

SEGMENTS_FILE = "quality_segments.jsonl.gz"
QUALITY_LABELS = ("low", "high")  # index = the 0/1 target of the logistic regression
SPLITS = ("train", "dev", "test")
MAX_CHARS = 100_000  # texts are scored on their first 100k characters (bounded time and memory)
FUNCTION_WORDS = frozenset(
    "the of and to a in is that it for as with be are this by on not or an was from at which can if "
    "will when has have you its but their they there than these been more also".split()
)
_SEPARATORS = frozenset({"|", "»", "›", ">", "·", "::", "–", "-", "•", "/"})  # tokens that glue menu entries
_PUNCT = ".,;:!?()[]{}\"'“”‘’"
_BULLET_RE = re.compile(r"^\s*([-*•▪►]|\d+(\.\d+)*\.?)\s")
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")  # NUL and friends: binary data, not text
_SENTENCE_END = (".", "!", "?", ":", ";", '"', "”", ")")
LAYOUT_FEATURES = (
    "short_lines",  # share of lines with fewer than 4 (whitespace-separated) words (menus, link lists)
    "words_per_line",  # min(mean words per line / 20, 1) (prose lines are long)
    "sentence_end",  # share of lines ending in . ! ? : ; or a closing quote
    "function_words",  # share of tokens that are English function words (prose has ~40 %)
    "bullets",  # share of lines starting with a bullet or a number like "2.1."
    "separators",  # min(separator tokens ( | » > · :: / ) per token * 4, 1)
    "dup_lines",  # 1 - distinct lines / lines (repeated menus, stuffed lines)
    "distinct_words",  # distinct / all of the first 500 lower-cased tokens (keyword stuffing repeats)
    "capitalised",  # share of tokens starting with a capital (titles and menu entries)
    "length",  # min(log10(characters) / 5, 1)
)


def _check_text(text: Any, name: str = "text") -> str:
    """Validate one input: ``str`` (or UTF-8 ``bytes``), not empty, not binary; cut to :data:`MAX_CHARS`."""
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{name}: bytes that are not UTF-8 text (binary data?): {e}") from None
    if not isinstance(text, str):
        raise ValueError(f"{name} must be a str (or UTF-8 bytes), got {type(text).__name__}")
    text = text[:MAX_CHARS]
    if not text.strip():
        raise ValueError(f"{name} is empty; give a non-empty str to score")
    control = len(_CONTROL_RE.findall(text, 0, 10_000))
    if control > 0.01 * min(len(text), 10_000):
        raise ValueError(f"{name} looks binary ({control} control characters); give extracted text")
    return text


def layout_features(text: str) -> np.ndarray:
    """The dense layout features of one text, each in [0, 1], in the order of :data:`LAYOUT_FEATURES`."""
    lines = [ln.strip() for ln in text.split("\n") if ln.strip()]
    tokens = text.split()
    n_lines, n_tokens = max(len(lines), 1), max(len(tokens), 1)
    line_words = [len(ln.split()) for ln in lines]
    lower = [t.strip(_PUNCT) for t in text.lower().split()]
    head = lower[:500]
    return np.array([
        sum(c < 4 for c in line_words) / n_lines,
        min(len(tokens) / n_lines / 20, 1.0),
        sum(ln.endswith(_SENTENCE_END) for ln in lines) / n_lines,
        sum(t in FUNCTION_WORDS for t in lower) / n_tokens,
        sum(bool(_BULLET_RE.match(ln)) for ln in lines) / n_lines,
        min(sum(t in _SEPARATORS for t in tokens) / n_tokens * 4, 1.0),
        1.0 - len(set(lines)) / n_lines if lines else 0.0,
        len(set(head)) / max(len(head), 1),
        sum(t[0].isupper() for t in tokens) / n_tokens,
        min(np.log10(max(len(text), 1)) / 5, 1.0),
    ])


@dataclass(kw_only=True)
class WebQualityConfig:
    """Hyper-parameters of :class:`WebQualityClassifier` (defaults tuned on the dev split)."""

    n_buckets: int = 1 << 18  # hashing-trick dimension of the character n-grams
    ngrams: tuple[int, ...] = (2, 3, 4)  # character n-gram orders (dev: 1-grams add nothing and cost 25 % time)
    epochs: int = 10  # SGD passes over the training split (dev macro-F1 0.989 vs 0.985 at 5)
    lr: float = 0.5  # SGD step (features are bounded, so O(1) steps are stable)
    l2: float = 1e-6  # L2 penalty per step
    seed: int = 0  # shuffling seed (training is deterministic given the seed)
    layout: bool = True  # append the dense layout features (they carry over to unseen site templates)
    layout_scale: float = 1.0  # weight of the layout block against the unit-norm n-gram block
    threshold: float = 0.5  # score (P(high)) at or above which a text is labelled "high"

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")
        if self.layout_scale <= 0:
            raise ValueError(f"layout_scale must be > 0, got {self.layout_scale}")
        self.ngrams = tuple(self.ngrams)
        self.base_config()  # validates n_buckets and ngrams

    def base_config(self) -> QualityClassifierConfig:
        return QualityClassifierConfig(n_buckets=self.n_buckets, ngrams=self.ngrams, epochs=self.epochs, lr=self.lr,
                                       l2=self.l2, seed=self.seed)


class WebQualityClassifier(QualityClassifier):
    """:class:`~llmbook.data.quality.QualityClassifier` plus dense layout features; scores are ``P(high)``."""

    def __init__(self, cfg: WebQualityConfig | None = None) -> None:
        self.web_cfg = cfg or WebQualityConfig()
        super().__init__(self.web_cfg.base_config())
        self.w = np.zeros(self.cfg.n_buckets + (len(LAYOUT_FEATURES) if self.web_cfg.layout else 0))

    def _feats(self, texts: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        texts = [t[:MAX_CHARS] for t in texts]
        feats = hashed_features(texts, self.cfg.ngrams, self.cfg.n_buckets)
        if not self.web_cfg.layout:
            return feats
        extra = np.arange(self.cfg.n_buckets, self.cfg.n_buckets + len(LAYOUT_FEATURES))
        return [(np.concatenate([idx, extra]), np.concatenate([val, self.web_cfg.layout_scale * layout_features(t)]))
                for (idx, val), t in zip(feats, texts, strict=True)]

    def scores(self, texts: list[str] | str) -> np.ndarray:
        """``P(high)`` per text, shape (N,); each text is checked (see :func:`classify_quality`)."""
        texts = [texts] if isinstance(texts, (str, bytes)) else list(texts)
        return self.predict_proba([_check_text(t, f"texts[{i}]") for i, t in enumerate(texts)])

    def classify(self, text: str | bytes) -> tuple[str, float]:
        """``(label, score)``: score = ``P(high)``, label ``"high"`` if score >= threshold else ``"low"``."""
        p = float(self.scores([_check_text(text)])[0])
        return ("high" if p >= self.web_cfg.threshold else "low"), p

    def save(self, path: str | Path) -> None:
        """Write weights and config to an ``.npz`` (no pickle); the same model gives the same bytes."""
        cfg = json.dumps(asdict(self.web_cfg), sort_keys=True)
        with open(Path(path), "wb") as f:  # a file object: np.savez does not append ".npz" to it
            np.savez(f, w=self.w, b=np.array(self.b), web_cfg=np.array(cfg))

    @classmethod
    def load(cls, path: str | Path) -> WebQualityClassifier:
        """Read a model written by :meth:`save`."""
        with np.load(Path(path), allow_pickle=False) as z:
            if "web_cfg" not in z.files:
                raise ValueError(f"{path}: not a WebQualityClassifier file (no 'web_cfg' entry)")
            model = cls(WebQualityConfig(**json.loads(str(z["web_cfg"]))))
            if z["w"].shape != model.w.shape:
                raise ValueError(f"{path}: weights have shape {z['w'].shape}, config needs {model.w.shape}")
            model.w, model.b = z["w"].copy(), float(z["b"])
        return model


# --- the bundled labelled set ----------------------------------------------------------------
@dataclass(kw_only=True)
class QualitySegment:
    """One labelled segment of ``data/quality_segments.jsonl.gz``."""

    id: str  # "q01234", stable for a given build
    text: str  # multi-line extracted text
    label: str  # "high" or "low"
    source: str  # site or corpus: python-docs, postgresql-docs, sqlite-docs, nodejs-docs, apache-httpd-docs, ...
    kind: str  # main, rst, rag, wiki, book (high); nav, sidebar, footer, toc, lang, index, link-list, spam (low)
    page: str  # source page / document; a page's segments are all in one split
    split: str  # train, dev or test
    meta: dict[str, Any] = field(default_factory=dict)  # anything else a row carries


def load_quality_segments(split: str | None = None, *, sources: list[str] | None = None) -> list[QualitySegment]:
    """The bundled segments (of one ``split`` and/or some ``sources``; ``LLMBOOK_DATA_DIR`` is honoured)."""
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")
    path = data_dir() / SEGMENTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (rebuild it with data/build_quality_set.py, or set {DATA_DIR_ENV})")
    keys = {f for f in QualitySegment.__dataclass_fields__ if f != "meta"}
    with gzip.open(path, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    known = sorted({r["source"] for r in rows})
    if sources is not None and not set(sources) <= set(known):
        raise ValueError(f"sources must be a subset of {known}, got {sources}")
    out = []
    for r in rows:
        if (split is None or r["split"] == split) and (sources is None or r["source"] in sources):
            out.append(QualitySegment(**{k: r[k] for k in keys}, meta={k: v for k, v in r.items() if k not in keys}))
    return out


def train_quality_classifier(
    cfg: WebQualityConfig | None = None,
    *,
    segments: list[QualitySegment] | None = None,
    splits: tuple[str, ...] = ("train",),
) -> WebQualityClassifier:
    """Fit a :class:`WebQualityClassifier` on the bundled ``splits`` (or on given ``segments``)."""
    if segments is None:
        if not splits or any(s not in SPLITS for s in splits):
            raise ValueError(f"splits must be a non-empty tuple of {SPLITS}, got {splits}")
        segments = [s for s in load_quality_segments() if s.split in splits]
    if not segments or any(s.label not in QUALITY_LABELS for s in segments):
        raise ValueError(f"segments must be non-empty with labels in {QUALITY_LABELS}")
    model = WebQualityClassifier(cfg)
    model.fit([s.text for s in segments], [QUALITY_LABELS.index(s.label) for s in segments])
    return model


@lru_cache(maxsize=1)
def _default_model() -> WebQualityClassifier:
    return train_quality_classifier()


def default_quality_classifier(path: str | Path | None = None) -> WebQualityClassifier:
    """The default model: loaded from ``path`` if that file exists, else trained on the train split
    (a few seconds, once per process; each call returns its own copy) and, if ``path`` is given, saved there."""
    if path is not None and Path(path).is_file():
        return WebQualityClassifier.load(path)
    model = copy.deepcopy(_default_model())
    if path is not None:
        model.save(path)
    return model


def classify_quality(text: str | bytes, model: WebQualityClassifier | None = None) -> tuple[str, float]:
    """``(label, score)`` of one text: score = ``P(high)``; label ``"high"`` (main-content prose) when the
    score reaches the model's threshold, else ``"low"`` (navigation, link lists, boilerplate, spam).

    ``text`` is a ``str`` or UTF-8 ``bytes``; empty text, non-UTF-8 bytes and binary-looking text raise
    ``ValueError``; only the first :data:`MAX_CHARS` characters are scored.
    """
    return (model or _default_model()).classify(text)


# --- evaluation ------------------------------------------------------------------------------
def precision_recall_f1(gold: list[str], pred: list[str]) -> dict[str, dict[str, float]]:
    """Per label of :data:`QUALITY_LABELS`: precision, recall, F1 and support."""
    if len(gold) != len(pred):
        raise ValueError(f"gold and pred must be equally long, got {len(gold)} and {len(pred)}")
    out = {}
    for lab in QUALITY_LABELS:
        tp = sum(g == lab and p == lab for g, p in zip(gold, pred, strict=True))
        n_pred, n_gold = sum(p == lab for p in pred), sum(g == lab for g in gold)
        prec, rec = tp / max(n_pred, 1), tp / max(n_gold, 1)
        out[lab] = {"precision": prec, "recall": rec, "f1": 2 * prec * rec / max(prec + rec, 1e-12),
                    "support": float(n_gold)}
    return out


def evaluate_quality(model: WebQualityClassifier, segments: list[QualitySegment]) -> dict[str, Any]:
    """P/R/F1 per label and accuracy, overall and per source, plus the scores: ``{"overall", "by_source",
    "accuracy", "scores"}``."""
    if not segments:
        raise ValueError("segments must be non-empty")
    scores = model.predict_proba([s.text for s in segments])
    pred = ["high" if p >= model.web_cfg.threshold else "low" for p in scores]
    gold = [s.label for s in segments]
    by_source = {}
    for src in sorted({s.source for s in segments}):
        idx = [i for i, s in enumerate(segments) if s.source == src]
        by_source[src] = precision_recall_f1([gold[i] for i in idx], [pred[i] for i in idx])
    return {"overall": precision_recall_f1(gold, pred), "by_source": by_source,
            "accuracy": float(np.mean([g == p for g, p in zip(gold, pred, strict=True)])), "scores": scores}


def quality_examples(
    model: WebQualityClassifier, segments: list[QualitySegment], k: int = 3
) -> dict[str, list[tuple[float, QualitySegment]]]:
    """The ``k`` highest- and lowest-scored segments and the ``k`` most confidently misclassified ones of
    each label: ``{"best", "worst", "missed_high", "missed_low"}`` of ``(score, segment)``."""
    scores = model.predict_proba([s.text for s in segments])
    order = np.argsort(-scores, kind="stable")
    thr = model.web_cfg.threshold
    missed_high = [i for i in order[::-1] if segments[i].label == "high" and scores[i] < thr]
    missed_low = [i for i in order if segments[i].label == "low" and scores[i] >= thr]
    pick = lambda ids: [(float(scores[i]), segments[i]) for i in list(ids)[:k]]  # noqa: E731
    return {"best": pick(order), "worst": pick(order[::-1]), "missed_high": pick(missed_high),
            "missed_low": pick(missed_low)}


def compare_with_gopher(model: WebQualityClassifier, segments: list[QualitySegment]) -> dict[str, dict[str, float]]:
    """Per gold label: the share of segments each filter rejects (classifier: score < threshold;
    Gopher: any of :func:`llmbook.data.quality.gopher_rules` fails) and the share either one rejects."""
    scores = model.predict_proba([s.text for s in segments])
    out = {}
    for lab in QUALITY_LABELS:
        idx = [i for i, s in enumerate(segments) if s.label == lab]
        if not idx:
            continue
        clf = np.array([scores[i] < model.web_cfg.threshold for i in idx])
        gopher = np.array([bool(gopher_rules(segments[i].text)) for i in idx])
        out[lab] = {"n": float(len(idx)), "classifier_flags": float(clf.mean()), "gopher_flags": float(gopher.mean()),
                    "either_flags": float((clf | gopher).mean())}
    return out
