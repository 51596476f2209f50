"""Data selection with a reference model: score documents by a small LM's loss, keep the top k.

The reference-model score of a document x is its mean per-symbol loss

    L_RM(x) = -(1/|x|) sum_t log P_RM(x_t | x_<t),

with RM trained on trusted reference text: low L_RM means "looks like the reference"
(perplexity filtering in CCNet arXiv:1911.00359; Moore & Lewis 2010). The *excess* (reducible)
loss L_cur(x) - L_RM(x), with L_cur the loss of the model being trained, prefers text that is
learnable but not yet learned (RHO-LOSS, Mindermann et al. arXiv:2206.07137; Rho-1 arXiv:2404.07965).

The "small LM" here is a byte-level n-gram model with interpolated Witten-Bell smoothing
(Witten & Bell 1991; Chen & Goodman 1998), fitted and evaluated fully vectorised in numpy:

    P_k(c | h) = (C(h c) + T(h) P_{k-1}(c | h')) / (C(h) + T(h)),   P_0(c) = 1/256,

where h is the k-1 previous bytes, h' its last k-2, C counts and T(h) the number of distinct
bytes seen after h. Bytes make it language-agnostic (a CJK character is 3 bytes), and the same
family serves as the "tiny model" trained on the selected data: its held-out loss after
training on a selection is the measure of that selection's quality.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

PAD = 0  # byte used to pad the start of every document (NUL hardly occurs in text)


def _bytes(texts: Sequence[str | bytes], order: int) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated bytes, each document prefixed by order-1 PAD bytes; plus a target mask (real bytes)."""
    parts, mask = [], []
    pad = np.full(order - 1, PAD, np.uint8)
    for t in texts:
        b = np.frombuffer(t if isinstance(t, bytes) else t.encode("utf-8", "surrogatepass"), np.uint8)
        parts += [pad, b]
        mask += [np.zeros(order - 1, bool), np.ones(len(b), bool)]
    if not parts:
        return np.empty(0, np.uint8), np.empty(0, bool)
    return np.concatenate(parts), np.concatenate(mask)


def _keys(data: np.ndarray, k: int) -> np.ndarray:
    """key_i = the k bytes ending at i packed in a uint64 (byte i lowest), for every i >= k - 1."""
    n = len(data)
    key = np.zeros(n, np.uint64)
    for j in range(k):  # key |= data[i - j] << 8 j
        key[j:] |= data[: n - j].astype(np.uint64) << np.uint64(8 * j)
    return key


@dataclass(kw_only=True)
class _Order:
    keys: np.ndarray  # sorted unique (context, next byte) keys; context in the high bytes
    counts: np.ndarray  # C(h c)
    ctx: np.ndarray  # sorted unique contexts h
    ctx_total: np.ndarray  # C(h)
    ctx_types: np.ndarray  # T(h)


class ByteNGramLM:
    """Interpolated Witten-Bell byte n-gram language model (see the module docstring)."""

    def __init__(self, order: int = 4) -> None:
        if not isinstance(order, int) or not 1 <= order <= 7:
            raise ValueError(f"order must be an int in [1, 7], got {order!r}")
        self.order = order
        self.tables: list[_Order] = []
        self.n_bytes = 0

    def fit(self, texts: Sequence[str | bytes]) -> ByteNGramLM:
        """Count every k-gram (k = 1..order) of ``texts``; returns self."""
        data, mask = _bytes(texts, self.order)
        self.n_bytes = int(mask.sum())
        self.tables = []
        for k in range(1, self.order + 1):
            key = _keys(data, k)[mask]  # (N,) only positions whose last byte is real
            keys, counts = np.unique(key, return_counts=True)
            ctx_of = keys >> np.uint64(8)
            ctx, start = np.unique(ctx_of, return_index=True)
            ctx_total = np.add.reduceat(counts, start) if len(keys) else np.empty(0, np.int64)
            ctx_types = np.diff(np.append(start, len(keys)))
            self.tables.append(_Order(keys=keys, counts=counts, ctx=ctx, ctx_total=ctx_total, ctx_types=ctx_types))
        return self

    @staticmethod
    def _lookup(sorted_arr: np.ndarray, values: np.ndarray, data: np.ndarray) -> np.ndarray:
        if len(sorted_arr) == 0:
            return np.zeros(len(values), np.float64)
        pos = np.clip(np.searchsorted(sorted_arr, values), 0, len(sorted_arr) - 1)
        return np.where(sorted_arr[pos] == values, data[pos], 0).astype(np.float64)

    def _log_probs(self, texts: Sequence[str | bytes]) -> tuple[np.ndarray, np.ndarray]:
        """Natural-log probability of every real byte, and the document index of each."""
        if not self.tables:
            raise ValueError("model is not fitted: call fit first")
        data, mask = _bytes(texts, self.order)
        doc = np.repeat(np.arange(len(texts)), [len(t if isinstance(t, bytes) else t.encode("utf-8", "surrogatepass"))
                                                 + self.order - 1 for t in texts])[mask]
        p = np.full(int(mask.sum()), 1.0 / 256)  # P_0
        for k, tab in enumerate(self.tables, start=1):
            key = _keys(data, k)[mask]
            ctx = key >> np.uint64(8)
            c_hc = self._lookup(tab.keys, key, tab.counts)
            c_h = self._lookup(tab.ctx, ctx, tab.ctx_total)
            t_h = self._lookup(tab.ctx, ctx, tab.ctx_types)
            seen = c_h > 0
            p = np.where(seen, (c_hc + t_h * p) / np.maximum(c_h + t_h, 1.0), p)
        return np.log(p), doc

    def doc_losses(self, texts: Sequence[str | bytes]) -> np.ndarray:
        """Mean loss per byte (nats) of each text, shape (N,); NaN for an empty text."""
        logp, doc = self._log_probs(texts)
        total = np.bincount(doc, weights=-logp, minlength=len(texts))
        n = np.bincount(doc, minlength=len(texts)).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            return total / n

    def loss(self, texts: Sequence[str | bytes]) -> float:
        """Mean loss per byte (nats) over all bytes of ``texts``."""
        logp, _ = self._log_probs(texts)
        return float(-logp.mean()) if len(logp) else float("nan")


def reference_scores(texts: Sequence[str | bytes], reference: ByteNGramLM) -> np.ndarray:
    """L_RM(x) per text (nats per byte)."""
    return reference.doc_losses(texts)


def excess_scores(texts: Sequence[str | bytes], current: ByteNGramLM, reference: ByteNGramLM) -> np.ndarray:
    """Reducible loss L_cur(x) - L_RM(x) per text (nats per byte)."""
    return current.doc_losses(texts) - reference.doc_losses(texts)


def nbytes(text: str | bytes) -> int:
    return len(text) if isinstance(text, bytes) else len(text.encode("utf-8", "surrogatepass"))


def select_top(scores: np.ndarray, lengths: np.ndarray, budget: int, lowest: bool = True) -> np.ndarray:
    """Indices of the best-scored documents (lowest first if ``lowest``) until ``budget`` bytes are taken."""
    scores = np.asarray(scores, np.float64)
    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    key = np.where(np.isnan(scores), np.inf, scores if lowest else -scores)
    order = np.argsort(key, kind="stable")
    taken = np.cumsum(np.asarray(lengths)[order])
    return order[: int(np.searchsorted(taken, budget, side="left")) + 1][: len(order)]


def select_random(lengths: np.ndarray, budget: int, seed: int = 0) -> np.ndarray:
    """Random documents until ``budget`` bytes are taken (the baseline at the same budget)."""
    return select_top(np.random.default_rng(seed).random(len(lengths)), lengths, budget)


def select_stratified(
    scores: np.ndarray, lengths: np.ndarray, groups: Sequence[str], budget: int, lowest: bool = True
) -> np.ndarray:
    """:func:`select_top` inside each group, each group getting its share of the pool's bytes.

    Per-byte losses are not comparable across languages (the 2nd and 3rd UTF-8 bytes of a CJK
    character are nearly free), so a single ranking would fill the budget with one language;
    CCNet likewise thresholds perplexity per language.
    """
    lengths, groups = np.asarray(lengths), np.asarray(groups)
    if len(groups) != len(lengths):
        raise ValueError(f"groups must have one entry per document ({len(lengths)}), got {len(groups)}")
    total = max(int(lengths.sum()), 1)
    picks = []
    for g in sorted(set(groups.tolist())):
        idx = np.flatnonzero(groups == g)
        share = int(budget * lengths[idx].sum() / total)
        picks.append(idx[select_top(np.asarray(scores)[idx], lengths[idx], share, lowest)])
    return np.sort(np.concatenate(picks)) if picks else np.empty(0, np.int64)


@dataclass(kw_only=True)
class SelectionConfig:
    """The selection experiment of :func:`selection_experiment`."""

    order: int = 4  # n-gram order of reference, current and tiny models
    budgets: tuple[float, ...] = (0.1, 0.2, 0.4)  # training budgets as fractions of the pool's bytes
    current_frac: float = 0.05  # pool bytes the "current model" (for excess loss) has been trained on
    seed: int = 0  # random selection and the current model's sample


def selection_experiment(
    pool: Sequence[str | bytes],
    groups: Sequence[str],
    reference: Sequence[str],
    heldout: Sequence[str],
    cfg: SelectionConfig | None = None,
) -> tuple[list[dict], dict[str, np.ndarray]]:
    """Train a tiny n-gram LM on each selection of ``pool`` and measure its held-out loss.

    Methods: ``random``; ``low L_RM`` (reference model trained on ``reference``); ``high excess``
    (L_cur - L_RM, current model trained on a random ``current_frac`` of the pool). Every method
    selects within each of ``groups`` (e.g. the language) in proportion to its bytes
    (:func:`select_stratified`). Returns rows ``{method, budget_frac, budget_bytes, heldout_loss}``
    and the per-document scores.
    """
    cfg = cfg or SelectionConfig()
    lengths = np.array([nbytes(t) for t in pool])
    rand = np.random.default_rng(cfg.seed).random(len(pool))
    rm = ByteNGramLM(cfg.order).fit(reference)
    cur_idx = select_random(lengths, int(cfg.current_frac * lengths.sum()), cfg.seed + 1)
    cur = ByteNGramLM(cfg.order).fit([pool[i] for i in cur_idx])
    scores = {"low L_RM": reference_scores(pool, rm), "high excess": excess_scores(pool, cur, rm)}
    rows = []
    for frac in cfg.budgets:
        budget = int(frac * lengths.sum())
        picks = {
            "random": select_stratified(rand, lengths, groups, budget),
            "low L_RM": select_stratified(scores["low L_RM"], lengths, groups, budget, lowest=True),
            "high excess": select_stratified(scores["high excess"], lengths, groups, budget, lowest=False),
        }
        for method, idx in picks.items():
            tiny = ByteNGramLM(cfg.order).fit([pool[i] for i in idx])
            rows.append({"method": method, "budget_frac": frac, "budget_bytes": int(lengths[idx].sum()),
                         "heldout_loss": tiny.loss(heldout)})
    return rows, scores


