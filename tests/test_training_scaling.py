"""Scaling-law fit: recover known Chinchilla parameters from synthetic runs; closed-form optimum vs brute force."""

import numpy as np
import pytest

from llmbook.training.scaling import (
    ScalingFit,
    compute_optimal,
    fit_scaling_law,
    predict,
    training_flops,
)

TRUE = ScalingFit(E=1.69, A=406.4, alpha=0.34, B=410.7, beta=0.28)  # Hoffmann et al.'s published fit


def synthetic(noise: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    N = np.repeat(np.logspace(7, 10, 8), 5)  # 8 sizes x 5 budgets
    D = np.tile(np.logspace(9, 12, 5), 8)
    L = predict(TRUE, N, D) * np.exp(rng.normal(0, noise, N.shape))
    return N, D, L


def test_recovers_parameters_without_noise():
    fit = fit_scaling_law(*synthetic(0.0))
    for k, v in TRUE.as_dict().items():
        got = fit.as_dict()[k]
        assert abs(got - v) / v < 0.02, f"{k}: fitted {got} vs true {v}"


def test_recovers_exponents_and_predictions_with_noise():
    N, D, L = synthetic(0.003, seed=1)
    fit = fit_scaling_law(N, D, L)
    assert abs(fit.alpha - TRUE.alpha) < 0.05, f"alpha {fit.alpha} vs {TRUE.alpha}"
    assert abs(fit.beta - TRUE.beta) < 0.05, f"beta {fit.beta} vs {TRUE.beta}"
    assert abs(fit.E - TRUE.E) < 0.1, f"E {fit.E} vs {TRUE.E}"
    # extrapolation 10x beyond the largest run stays within 1 %
    rel = abs(predict(fit, 1e11, 2e12) - predict(TRUE, 1e11, 2e12)) / predict(TRUE, 1e11, 2e12)
    assert rel < 0.01, f"relative prediction error {rel}"


def test_compute_optimal_matches_brute_force():
    C = 1e22
    n_opt, d_opt = compute_optimal(C, TRUE)
    assert abs(training_flops(n_opt, d_opt) - C) / C < 1e-9
    grid = np.logspace(8, 12, 20001)
    n_best = grid[np.argmin(predict(TRUE, grid, C / (6 * grid)))]
    assert abs(np.log(n_opt / n_best)) < 1e-3, f"closed form {n_opt:.4g} vs brute force {n_best:.4g}"


def test_bad_input():
    with pytest.raises(ValueError, match="at least 5"):
        fit_scaling_law([1, 2], [1, 2], [1, 2])
    with pytest.raises(ValueError, match="same length"):
        fit_scaling_law(np.ones(5), np.ones(6), np.ones(5))
