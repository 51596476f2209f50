"""Data mixing and curriculum: temperature-scaled source weights, proxy-model search, schedules.

Temperature sampling (multilingual BERT/XLM, Conneau et al. arXiv:1911.02116; mT5 arXiv:2010.11934):
with n_i documents (or tokens) in source i,

    p_i = n_i^(1/T) / sum_j n_j^(1/T),

so T = 1 samples proportionally to size and T -> inf uniformly; T > 1 up-samples small sources.
The proxy search follows DoReMi/RegMix in spirit (arXiv:2305.10429, arXiv:2407.01492): train
several small models on candidate mixtures at a fixed budget and pick the mixture whose model
has the lowest held-out loss on the *target* mixture. Our proxies are byte n-gram LMs
(:class:`llmbook.data.selection.ByteNGramLM`), cheap enough to try many mixtures.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

import numpy as np

from llmbook.data.selection import ByteNGramLM, nbytes


def temperature_weights(sizes: Mapping[str, float], temperature: float) -> dict[str, float]:
    """p_i ∝ n_i^(1/T) over sources ``sizes`` (T = inf gives uniform weights)."""
    if not sizes or any(v <= 0 for v in sizes.values()):
        raise ValueError(f"sizes must be a non-empty mapping of positive numbers, got {dict(sizes)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    n = np.array(list(sizes.values()), np.float64)
    w = np.ones_like(n) if np.isinf(temperature) else np.exp(np.log(n) / temperature - np.max(np.log(n) / temperature))
    return dict(zip(sizes, (w / w.sum()).tolist()))


def curriculum_weights(start: Mapping[str, float], end: Mapping[str, float], n_stages: int) -> list[dict[str, float]]:
    """Mixture weights moving linearly from ``start`` to ``end`` over ``n_stages`` stages (a data curriculum)."""
    if set(start) != set(end):
        raise ValueError(f"start and end must name the same sources, got {sorted(start)} and {sorted(end)}")
    if n_stages < 1:
        raise ValueError(f"n_stages must be >= 1, got {n_stages}")
    out = []
    for s in range(n_stages):
        a = s / (n_stages - 1) if n_stages > 1 else 1.0
        w = {k: (1 - a) * start[k] + a * end[k] for k in start}
        z = sum(w.values())
        out.append({k: v / z for k, v in w.items()})
    return out


def sample_mixture(
    sources: Mapping[str, Sequence[str]], weights: Mapping[str, float], budget: int, seed: int = 0
) -> tuple[list[str], dict[str, float]]:
    """Documents drawn so that source i contributes ~``weights[i] * budget`` bytes.

    Each source is shuffled and read in order; a source smaller than its share is repeated
    (more epochs of it). Returns the documents and the epochs used per source.
    """
    missing = set(weights) - set(sources)
    if missing:
        raise ValueError(f"weights name unknown sources {sorted(missing)}; sources are {sorted(sources)}")
    if budget < 1:
        raise ValueError(f"budget must be >= 1 byte, got {budget}")
    r = random.Random(seed)
    z = sum(weights.values())
    docs, epochs = [], {}
    for name in sorted(weights):
        want = weights[name] / z * budget
        pool = [t for t in sources[name] if t]
        if want <= 0 or not pool:
            epochs[name] = 0.0
            continue
        order = list(range(len(pool)))
        r.shuffle(order)
        size, taken, i = sum(nbytes(t) for t in pool), 0, 0
        while taken < want:
            t = pool[order[i % len(pool)]]
            docs.append(t)
            taken += nbytes(t)
            i += 1
        epochs[name] = taken / size
    r.shuffle(docs)
    return docs, epochs


def mixture_loss(model: ByteNGramLM, heldout: Mapping[str, Sequence[str]], target: Mapping[str, float]) -> float:
    """sum_i target_i * loss(heldout_i): the loss on the target mixture (nats per byte)."""
    z = sum(target.values())
    return float(sum(w / z * model.loss(heldout[k]) for k, w in target.items() if w > 0))


def proxy_search(
    train: Mapping[str, Sequence[str]],
    heldout: Mapping[str, Sequence[str]],
    target: Mapping[str, float],
    candidates: Mapping[str, Mapping[str, float]],
    budget: int,
    order: int = 4,
    seed: int = 0,
) -> list[dict]:
    """Train one proxy n-gram LM per candidate mixture (same byte budget); rows sorted by target loss.

    Each row: ``candidate``, ``weights``, ``epochs`` (per source), ``target_loss`` and the loss
    on each source's held-out text (``loss_<source>``).
    """
    if not candidates:
        raise ValueError("candidates must name at least one mixture")
    rows = []
    for name, weights in candidates.items():
        docs, epochs = sample_mixture(train, weights, budget, seed)
        model = ByteNGramLM(order).fit(docs)
        row = {
            "candidate": name,
            "weights": dict(weights),
            "epochs": epochs,
            "target_loss": mixture_loss(model, heldout, target),
        }
        row.update({f"loss_{k}": model.loss(v) for k, v in heldout.items()})
        rows.append(row)
    return sorted(rows, key=lambda r: r["target_loss"])
