"""llmbook.evaluation.stats: bootstrap intervals, win-rates (raw and length-controlled), judge agreement."""

from __future__ import annotations

import numpy as np
import pytest

from llmbook.evaluation.stats import (
    Interval,
    accuracy_ci,
    agreement,
    bootstrap_ci,
    cohen_kappa,
    length_controlled_win_rate,
    win_rate,
)


def test_bootstrap_ci_contains_the_mean_and_narrows_with_n() -> None:
    rng = np.random.default_rng(0)
    widths = []
    for n in (30, 300, 3000):
        sample = rng.normal(5.0, 2.0, n)
        ci = bootstrap_ci(sample, n_resamples=1000, seed=1)
        assert ci.estimate == pytest.approx(sample.mean())
        assert ci.low < sample.mean() < ci.high
        # the normal-theory 95% interval is mean +- 1.96 sd / sqrt(n); the bootstrap's is close to it
        assert ci.high - ci.low == pytest.approx(2 * 1.96 * sample.std() / np.sqrt(n), rel=0.2)
        widths.append(ci.high - ci.low)
    assert widths[0] > 2.5 * widths[1] > 2.5 ** 2 * widths[2]  # ~sqrt(10) narrower per tenfold n


def test_bootstrap_ci_seeded_level_and_stat() -> None:
    sample = np.arange(100.0)
    assert bootstrap_ci(sample, seed=3) == bootstrap_ci(sample, seed=3)
    assert bootstrap_ci(sample, seed=3) != bootstrap_ci(sample, seed=4)
    wide, narrow = bootstrap_ci(sample, level=0.99), bootstrap_ci(sample, level=0.5)
    assert wide.low < narrow.low < narrow.high < wide.high
    assert bootstrap_ci(sample, stat=np.median).estimate == 49.5
    assert bootstrap_ci([7.0, 7.0, 7.0]) == Interval(7.0, 7.0, 7.0)
    for bad in ({"values": []}, {"values": [1.0], "level": 1.0}, {"values": [1.0], "n_resamples": 0}):
        with pytest.raises(ValueError):
            bootstrap_ci(**bad)


def test_accuracy_ci() -> None:
    ci = accuracy_ci([True] * 30 + [False] * 10)
    assert ci.estimate == 0.75
    assert 0.55 < ci.low < 0.75 < ci.high < 0.9


def test_win_rate_wins_ties_losses() -> None:
    a = np.array([3.0, 2.0, 5.0, 1.0])
    assert win_rate(a, a - 1) == Interval(1.0, 1.0, 1.0)
    assert win_rate(a, a + 1) == Interval(0.0, 0.0, 0.0)
    assert win_rate(a, a).estimate == 0.5  # all ties
    assert win_rate([1, 0, 1, 0], [0, 1, 0, 1]).estimate == 0.5  # half wins, half losses
    half_ties = win_rate([1, 1, 1, 1], [0, 0, 1, 1])
    assert half_ties.estimate == 0.75 and half_ties.low < 0.75 < half_ties.high
    with pytest.raises(ValueError):
        win_rate([1, 2], [1, 2, 3])


def synthetic_judgements(advantage: float, *, tie_share: float, n: int = 2000, seed: int = 0) -> tuple[np.ndarray, ...]:
    """A judge that prefers A with log-odds ``advantage + 2.5 * tanh(d / sd(d))``, A usually longer (d > 0);
    a ``tie_share`` of the prompts tie whatever the lengths."""
    rng = np.random.default_rng(seed)
    diff = rng.normal(1.0, 1.0, n)
    p_win = 1 / (1 + np.exp(-(advantage + 2.5 * np.tanh(diff / diff.std()))))
    wins = rng.random(n) < p_win
    ties = rng.random(n) < tie_share
    scores_a = np.where(ties, 0.5, wins.astype(float))
    len_b = rng.integers(50, 150, n).astype(float)
    return scores_a, np.full(n, 0.5), len_b + 60 * diff, len_b


def test_length_controlled_win_rate_removes_a_length_only_advantage() -> None:
    a, b, len_a, len_b = synthetic_judgements(advantage=0.0, tie_share=0.1)
    raw = win_rate(a, b, n_resamples=500)
    lc = length_controlled_win_rate(a, b, len_a, len_b, n_resamples=500)
    assert raw.low > 0.7  # A "wins" because it is longer ...
    assert lc.low < 0.5 < lc.high and abs(lc.estimate - 0.5) < 0.04  # ... and at equal length it does not
    # the unit of length does not matter: the difference is standardised
    in_chars = length_controlled_win_rate(a, b, 4 * len_a, 4 * len_b, n_resamples=500)
    assert in_chars.estimate == pytest.approx(lc.estimate)


def test_length_controlled_win_rate_keeps_a_real_advantage() -> None:
    a, b, len_a, len_b = synthetic_judgements(advantage=1.5, tie_share=0.0)
    lc = length_controlled_win_rate(a, b, len_a, len_b, n_resamples=500)
    expected = 1 / (1 + np.exp(-1.5))  # the judge's preference at equal length
    assert lc.low > 0.75 and lc.estimate == pytest.approx(expected, abs=0.05)
    assert lc.estimate < win_rate(a, b).estimate  # still less than the raw win-rate, which length inflates


def test_length_controlled_win_rate_edge_cases() -> None:
    ones = np.ones(40)
    same_length = length_controlled_win_rate(ones, ones - 1, ones, ones, n_resamples=50)
    assert same_length.estimate > 0.99 and np.isfinite(same_length.low)  # every prompt won: finite, near 1
    balanced = length_controlled_win_rate([1, 0] * 20, [0, 1] * 20, ones, ones, n_resamples=50)
    assert balanced.estimate == pytest.approx(0.5)
    with pytest.raises(ValueError):
        length_controlled_win_rate(ones, ones, ones[:3], ones[:3])


def test_agreement_and_kappa_hand_computed() -> None:
    # 50 prompts: both "A" 20, judge 1 "A" and judge 2 "B" 5, the reverse 10, both "B" 15
    judge1 = [1] * 20 + [1] * 5 + [0] * 10 + [0] * 15
    judge2 = [1] * 20 + [0] * 5 + [1] * 10 + [0] * 15
    assert agreement(judge1, judge2) == pytest.approx(0.7)
    # chance: judge 1 says A half the time, judge 2 0.6 of it: 0.5 * 0.6 + 0.5 * 0.4 = 0.5
    assert cohen_kappa(judge1, judge2) == pytest.approx((0.7 - 0.5) / (1 - 0.5))
    assert cohen_kappa(judge1, judge1) == pytest.approx(1.0)
    assert cohen_kappa([0, 1, 2, 0], [0, 1, 2, 1]) == pytest.approx((0.75 - 5 / 16) / (1 - 5 / 16))  # 3 verdicts
    with pytest.raises(ValueError, match="undefined"):
        cohen_kappa([1, 1, 1], [1, 1, 1])
    with pytest.raises(ValueError):
        agreement([1, 0], [1])
