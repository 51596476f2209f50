"""How sure is a number from a few hundred prompts? Bootstrap intervals, win-rates and judge agreement.

An accuracy of 0.62 on 200 test prompts could easily have been 0.55 or 0.69 on another 200; a method
"beats" another only if the difference survives that noise. Everything here resamples *prompts*, the
unit the evaluation drew at random, and is deterministic given ``seed``:

- :func:`bootstrap_ci`: the percentile bootstrap. Resample the n per-prompt values with replacement,
  recompute the statistic, and read the interval off the quantiles of the recomputed values.
- :func:`win_rate`: A against B prompt by prompt (win 1, tie 0.5, loss 0), with a bootstrap interval.
- :func:`length_controlled_win_rate`: judges, human and model, prefer longer answers, so a method can
  "win" by talking more. AlpacaEval's length-controlled win-rate (Dubois et al. 2024,
  arXiv:2404.04475) fits a logistic regression of the win on the length difference and reports the
  win probability the fit predicts when the lengths are equal. This is a simplified version for two
  systems on one prompt set: the features are an intercept and ``tanh(length difference / its
  standard deviation)`` (AlpacaEval's length term; the difference is scaled but not centred, so 0
  still means equal length), without AlpacaEval's per-instruction difficulty term or its comparison of
  many models against one baseline. Ties are half-wins (targets of 0.5). The fit is a few Newton steps
  with a tiny ridge penalty, which keeps it finite when one system wins every prompt.
- :func:`agreement` and :func:`cohen_kappa`: how often two judges (or a judge and people) give the same
  verdict, and how much more often than two judges who guessed with the same verdict frequencies would.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

_RIDGE = 1e-3  # penalty on the logistic coefficients: negligible on real data, keeps separable data finite
_NEWTON_STEPS = 50  # the fit converges in under ten on ordinary data; a separable one creeps up to the cap


@dataclass(frozen=True)
class Interval:
    estimate: float  # the statistic on the sample itself
    low: float
    high: float


def bootstrap_ci(values: ArrayLike, *, stat: Callable[[np.ndarray], float] = np.mean, n_resamples: int = 2000,
                 level: float = 0.95, seed: int = 0) -> Interval:
    """Percentile-bootstrap interval of ``stat`` over the rows of ``values`` (one row per prompt)."""
    data = np.asarray(values, dtype=float)
    if data.ndim == 0 or len(data) == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    if not 0 < level < 1:
        raise ValueError(f"level must be between 0 and 1, got {level}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be positive, got {n_resamples}")
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, len(data), size=(n_resamples, len(data)))
    replicates = np.array([stat(data[r]) for r in rows], dtype=float)
    alpha = (1 - level) / 2
    low, high = np.quantile(replicates, [alpha, 1 - alpha])
    return Interval(float(stat(data)), float(low), float(high))


def accuracy_ci(correct: Sequence[bool], *, n_resamples: int = 2000, level: float = 0.95, seed: int = 0) -> Interval:
    """The share of correct answers with its bootstrap interval."""
    return bootstrap_ci(np.asarray(correct, dtype=float), n_resamples=n_resamples, level=level, seed=seed)


def _outcomes(scores_a: ArrayLike, scores_b: ArrayLike) -> np.ndarray:
    """Per prompt: 1 where A scores higher, 0.5 on a tie, 0 where B does."""
    a, b = np.asarray(scores_a, dtype=float), np.asarray(scores_b, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"need one score per prompt for each system; got shapes {a.shape} and {b.shape}")
    return 0.5 + 0.5 * np.sign(a - b)


def win_rate(scores_a: ArrayLike, scores_b: ArrayLike, *, n_resamples: int = 2000, level: float = 0.95,
             seed: int = 0) -> Interval:
    """How often A beats B on the same prompt (ties count half), with a bootstrap interval over prompts."""
    return bootstrap_ci(_outcomes(scores_a, scores_b), n_resamples=n_resamples, level=level, seed=seed)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + np.tanh(z / 2))  # = 1 / (1 + exp(-z)), without overflow for large |z|


def _win_at_equal_length(rows: np.ndarray) -> float:
    """Fit P(win) = sigmoid(b0 + b1 * tanh(diff / std(diff))) to rows of (outcome, diff); return sigmoid(b0)."""
    y, diff = rows[:, 0], rows[:, 1]
    scale = diff.std()
    x = np.tanh(diff / scale) if scale > 0 else np.zeros_like(diff)  # all lengths equal: nothing to control for
    features = np.column_stack([np.ones_like(x), x])
    beta = np.zeros(2)
    for _ in range(_NEWTON_STEPS):
        p = _sigmoid(features @ beta)
        gradient = features.T @ (p - y) + _RIDGE * beta  # cross-entropy with soft targets y in {0, 0.5, 1}
        hessian = (features * (p * (1 - p))[:, None]).T @ features + _RIDGE * np.eye(2)
        step = np.linalg.solve(hessian, gradient)
        beta -= step
        if np.abs(step).max() < 1e-9:
            break
    return float(_sigmoid(beta[0]))


def length_controlled_win_rate(scores_a: ArrayLike, scores_b: ArrayLike, len_a: ArrayLike, len_b: ArrayLike, *,
                               n_resamples: int = 2000, level: float = 0.95, seed: int = 0) -> Interval:
    """The win-rate of A over B predicted at equal answer lengths (simplified AlpacaEval-LC, see the module).

    Lengths are in any unit (tokens, characters) as long as A and B use the same one. The interval
    bootstraps prompts and refits the regression on each resample.
    """
    outcomes = _outcomes(scores_a, scores_b)
    diff = np.asarray(len_a, dtype=float) - np.asarray(len_b, dtype=float)
    if diff.shape != outcomes.shape:
        raise ValueError(f"need one length per prompt for each system; got {diff.shape} for {outcomes.shape} scores")
    return bootstrap_ci(np.column_stack([outcomes, diff]), stat=_win_at_equal_length, n_resamples=n_resamples,
                        level=level, seed=seed)


def _verdicts(a: Sequence[int], b: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(a), np.asarray(b)
    if x.shape != y.shape or x.ndim != 1 or len(x) == 0:
        raise ValueError(f"need one verdict per prompt from each judge; got shapes {x.shape} and {y.shape}")
    return x, y


def agreement(a: Sequence[int], b: Sequence[int]) -> float:
    """The share of prompts on which the two judges give the same verdict."""
    x, y = _verdicts(a, b)
    return float(np.mean(x == y))


def cohen_kappa(a: Sequence[int], b: Sequence[int]) -> float:
    """Cohen's kappa: (observed agreement - chance agreement) / (1 - chance agreement).

    Chance agreement is what two judges would reach by giving verdicts at random with their own
    frequencies. Kappa is 1 for perfect agreement, 0 for agreement no better than chance.
    """
    x, y = _verdicts(a, b)
    observed = float(np.mean(x == y))
    chance = sum(float(np.mean(x == v)) * float(np.mean(y == v)) for v in np.union1d(x, y))
    if chance == 1.0:
        raise ValueError("kappa is undefined when both judges give the same single verdict to every prompt")
    return (observed - chance) / (1 - chance)
