"""Scaling laws: fit Chinchilla's parametric loss and read off the compute-optimal model size.

Hoffmann et al. (2022, "Training Compute-Optimal Large Language Models", arXiv:2203.15556,
approach 3) model the final loss of a model with ``N`` parameters trained on ``D`` tokens as::

    L(N, D) = E + A / N^alpha + B / D^beta

``E`` is the irreducible loss of the data, the two power laws the penalties for a finite model and
finite data. The fit minimises the Huber loss (delta = 1e-3) of the residuals in log space::

    r_i = LSE(a - alpha log N_i, b - beta log D_i, e) - log L_i        a = log A, b = log B, e = log E

with L-BFGS, started from the best points of a grid (the paper starts from every grid point; we
score the whole grid in one vectorised pass and refine the best few, which finds the same minimum).

A sweep does not always pin ``E`` down. ``E`` and the data term ``B / D^beta`` both lower the loss at
every budget; only how the gap between budgets shrinks tells them apart, and with two budgets it
cannot: any ``E`` below the fitted loss floor fits exactly as well, with ``B`` and ``beta`` adjusted.
:func:`profile_E` refits with ``E`` held at each of several values (``FitConfig.fixed_E``), so a
reader can see which values of ``E`` (and so of ``beta`` and of the compute-optimal split) the data
allow.

With the training-compute approximation ``C = 6 N D`` (Kaplan et al. 2020, arXiv:2001.08361), the
loss-minimising split of a budget ``C`` is, in closed form::

    N_opt(C) = G (C/6)^(beta/(alpha+beta)),  D_opt(C) = G^-1 (C/6)^(alpha/(alpha+beta)),
    G = (alpha A / (beta B))^(1/(alpha+beta))
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.optimize import minimize

from llmbook.model import DecoderLM, ModelConfig
from llmbook.training.data import LoaderConfig, PackedLoader, eval_windows
from llmbook.training.loop import TrainConfig, Trainer, evaluate
from llmbook.training.schedule import ScheduleConfig


@dataclass(kw_only=True)
class ScalingFit:
    """The five parameters of ``L(N, D) = E + A / N^alpha + B / D^beta``."""

    E: float  # irreducible loss (nats per token)
    A: float  # model-size coefficient
    alpha: float  # model-size exponent
    B: float  # data coefficient
    beta: float  # data exponent
    objective: float = float("nan")  # Huber loss at the optimum (sum over runs)

    def as_dict(self) -> dict[str, float]:
        return {"E": self.E, "A": self.A, "alpha": self.alpha, "B": self.B, "beta": self.beta}


@dataclass(kw_only=True)
class FitConfig:
    """Huber delta and the grid of starting points (in a = log A, b = log B, e = log E)."""

    huber_delta: float = 1e-3  # Chinchilla's delta: residuals above it count linearly (robust to outlier runs)
    a_grid: tuple[float, ...] = (0.0, 2.5, 5.0, 10.0, 15.0, 20.0, 25.0)  # log A starts
    b_grid: tuple[float, ...] = (0.0, 2.5, 5.0, 10.0, 15.0, 20.0, 25.0)  # log B starts
    e_grid: tuple[float, ...] = (-1.0, -0.5, 0.0, 0.5, 1.0, 1.5)  # log E starts
    alpha_grid: tuple[float, ...] = (0.05, 0.2, 0.4, 0.7, 1.0, 1.5, 2.0)  # alpha starts
    beta_grid: tuple[float, ...] = (0.05, 0.2, 0.4, 0.7, 1.0, 1.5, 2.0)  # beta starts
    n_refine: int = 5  # best grid points refined with L-BFGS (more gave the same optimum in tests)
    max_iter: int = 2000  # L-BFGS iterations per start
    bounds: dict[str, tuple[float, float]] = field(  # exponents stay positive (a finite optimum)
        default_factory=lambda: {"alpha": (0.01, 3.0), "beta": (0.01, 3.0)}
    )
    fixed_E: float | None = None  # hold E at this value and fit the other four (see profile_E); None: fit E


def predict(fit: ScalingFit, N: np.ndarray | float, D: np.ndarray | float) -> np.ndarray | float:
    """``E + A / N^alpha + B / D^beta``."""
    N, D = np.asarray(N, dtype=float), np.asarray(D, dtype=float)
    out = fit.E + fit.A / N**fit.alpha + fit.B / D**fit.beta
    return float(out) if out.ndim == 0 else out


def _huber(r: np.ndarray, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """Huber loss of residuals ``r`` and its derivative."""
    small = np.abs(r) <= delta
    loss = np.where(small, 0.5 * r**2, delta * (np.abs(r) - 0.5 * delta))
    grad = np.where(small, r, delta * np.sign(r))
    return loss, grad


def _objective(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray, delta: float
               ) -> tuple[np.ndarray, np.ndarray]:
    """Huber objective and gradient for parameter rows ``theta (P, 5) = [a, alpha, b, beta, e]``."""
    a, alpha, b, beta, e = (theta[:, i : i + 1] for i in range(5))  # each (P, 1)
    terms = np.stack([a - alpha * log_n, b - beta * log_d, np.broadcast_to(e, (len(theta), len(log_n)))])  # (3, P, R)
    top = terms.max(axis=0)
    w = np.exp(terms - top)  # (3, P, R)
    total = w.sum(axis=0)
    lse = top + np.log(total)
    w = w / total  # softmax weights: d LSE / d term
    loss, dr = _huber(lse - log_l, delta)  # (P, R)
    grad = np.stack(
        [
            (dr * w[0]).sum(1), (dr * w[0] * -log_n).sum(1), (dr * w[1]).sum(1), (dr * w[1] * -log_d).sum(1),
            (dr * w[2]).sum(1),
        ],
        axis=1,
    )  # (P, 5)
    return loss.sum(axis=1), grad


def fit_scaling_law(N: np.ndarray, D: np.ndarray, L: np.ndarray, cfg: FitConfig | None = None) -> ScalingFit:
    """Fit ``L(N, D) = E + A / N^alpha + B / D^beta`` by Huber loss on ``log L`` (Hoffmann et al., arXiv:2203.15556).

    ``N`` parameters, ``D`` training tokens, ``L`` final loss in nats per token: one entry per run.
    With ``cfg.fixed_E`` set, ``E`` is held there and the other four parameters are fitted.
    """
    cfg = cfg or FitConfig()
    return _fit(*_logs(N, D, L, cfg), cfg)


def _logs(N: np.ndarray, D: np.ndarray, L: np.ndarray, cfg: FitConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``log N, log D, log L`` after checking the runs and ``cfg``."""
    N, D, L = (np.asarray(x, dtype=float).ravel() for x in (N, D, L))
    if not len(N) == len(D) == len(L):
        raise ValueError(f"N, D and L must have the same length, got {len(N)}, {len(D)}, {len(L)}")
    if len(N) < 5:
        raise ValueError(f"N, D, L must hold at least 5 runs (the law has 5 parameters), got {len(N)}")
    if (N <= 0).any() or (D <= 0).any() or (L <= 0).any():
        raise ValueError("N, D and L must all be positive")
    if cfg.n_refine < 1:
        raise ValueError(f"cfg.n_refine must be >= 1, got {cfg.n_refine}")
    if cfg.fixed_E is not None and not cfg.fixed_E > 0:
        raise ValueError(f"cfg.fixed_E must be positive (or None), got {cfg.fixed_E}")
    return np.log(N), np.log(D), np.log(L)


def _fit(log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray, cfg: FitConfig,
         extra_starts: tuple[ScalingFit, ...] = ()) -> ScalingFit:
    """:func:`fit_scaling_law` on validated logs; ``extra_starts`` are refined besides the best grid points."""
    e_grid = cfg.e_grid if cfg.fixed_E is None else (math.log(cfg.fixed_E),)
    grid = np.array(
        list(itertools.product(cfg.a_grid, cfg.alpha_grid, cfg.b_grid, cfg.beta_grid, e_grid))
    )  # (P, 5)
    scores = _objective(grid, log_n, log_d, log_l, cfg.huber_delta)[0]
    starts = list(grid[np.argsort(scores)[: cfg.n_refine]])
    for f in extra_starts:  # e.g. the fit at a neighbouring fixed E: keeps a profile on one branch
        starts.append(np.array([math.log(f.A), f.alpha, math.log(f.B), f.beta, e_grid[0] if cfg.fixed_E else
                                math.log(f.E)]))
    lo_a, hi_a = cfg.bounds["alpha"]
    lo_b, hi_b = cfg.bounds["beta"]
    e_bounds = (None, None) if cfg.fixed_E is None else (e_grid[0], e_grid[0])
    bounds = [(None, None), (lo_a, hi_a), (None, None), (lo_b, hi_b), e_bounds]

    def fun(x: np.ndarray) -> tuple[float, np.ndarray]:
        value, grad = _objective(x[None], log_n, log_d, log_l, cfg.huber_delta)
        return float(value[0]), grad[0]

    best = None
    for x0 in starts:
        options = {"maxiter": cfg.max_iter, "ftol": 1e-15, "gtol": 1e-12}  # residuals are ~1e-3: tight tolerances
        x0 = np.clip(x0, [lo if lo is not None else -np.inf for lo, _ in bounds],
                     [hi if hi is not None else np.inf for _, hi in bounds])
        res = minimize(fun, x0, jac=True, method="L-BFGS-B", bounds=bounds, options=options)
        if best is None or res.fun < best.fun:
            best = res
    a, alpha, b, beta, e = best.x
    return ScalingFit(E=math.exp(e), A=math.exp(a), alpha=float(alpha), B=math.exp(b), beta=float(beta),
                      objective=float(best.fun))


def profile_E(N: np.ndarray, D: np.ndarray, L: np.ndarray, E_values: np.ndarray,
              cfg: FitConfig | None = None) -> list[ScalingFit]:
    """The best fit with ``E`` held at each of ``E_values``: the profile of the objective over ``E``.

    Where the profile is flat the sweep does not identify ``E`` (nor, with it, ``B``, ``beta`` and the
    compute-optimal split). The profile is followed outwards from the free fit: each value is
    started, besides the best grid points, from the optimum at its neighbour nearer the free fit's
    ``E`` (the first ones from the free fit itself), so it stays on the best branch instead of
    stopping in a poorer local minimum. Returns one :class:`ScalingFit` per value, in the order given.
    """
    cfg = cfg or FitConfig()
    E_values = np.asarray(E_values, dtype=float).ravel()
    if len(E_values) == 0 or not (E_values > 0).all():
        raise ValueError("E_values must be a non-empty array of positive values")
    logs = _logs(N, D, L, cfg)
    free = _fit(*logs, dataclasses.replace(cfg, fixed_E=None))
    order = np.argsort(E_values)
    below = [int(i) for i in order[::-1] if E_values[i] < free.E]  # walking down from the free fit
    above = [int(i) for i in order if E_values[i] >= free.E]  # walking up from it
    fits: dict[int, ScalingFit] = {}
    for chain in (below, above):
        previous = free
        for i in chain:
            fits[i] = _fit(*logs, dataclasses.replace(cfg, fixed_E=float(E_values[i])), (previous,))
            previous = fits[i]
    return [fits[i] for i in range(len(E_values))]


def compute_optimal(C: np.ndarray | float, fit: ScalingFit) -> tuple[np.ndarray | float, np.ndarray | float]:
    """``(N_opt, D_opt)`` minimising ``L(N, D)`` subject to ``6 N D = C`` (closed form, see module docstring)."""
    if fit.alpha <= 0 or fit.beta <= 0:
        raise ValueError(f"fit.alpha and fit.beta must be > 0 for a finite optimum, got {fit.alpha}, {fit.beta}")
    C = np.asarray(C, dtype=float)
    if (C <= 0).any():
        raise ValueError("C must be positive")
    s = fit.alpha + fit.beta
    g = (fit.alpha * fit.A / (fit.beta * fit.B)) ** (1.0 / s)
    n_opt = g * (C / 6.0) ** (fit.beta / s)
    d_opt = (C / 6.0) ** (fit.alpha / s) / g
    if n_opt.ndim == 0:
        return float(n_opt), float(d_opt)
    return n_opt, d_opt


def training_flops(N: np.ndarray | float, D: np.ndarray | float) -> np.ndarray | float:
    """``C = 6 N D``: forward (2 N D) plus backward (4 N D) FLOPs of a dense model (Kaplan et al., arXiv:2001.08361)."""
    return 6.0 * np.asarray(N, dtype=float) * np.asarray(D, dtype=float) if np.ndim(N) or np.ndim(D) else 6.0 * N * D


def non_embedding_params(model) -> int:
    """N of the scaling law: matrices of the blocks plus the output head (the input embedding is a lookup, no FLOPs)."""
    n = sum(p.numel() for name, p in model.named_parameters() if p.ndim >= 2 and name != "embed_tokens.weight")
    if model.cfg.tie_embeddings:
        n += model.embed_tokens.weight.numel()  # the head shares it
    return int(n)


@dataclass(kw_only=True)
class RunConfig:
    """One run of a scaling sweep: a model shape and a token budget."""

    d_model: int  # C
    n_layers: int  # L
    n_heads: int  # H
    tokens: int  # D, training tokens (steps = tokens / (batch_size * seq_len), rounded up)
    seq_len: int = 64  # T
    batch_size: int = 8  # B
    lr: float = 3e-3  # peak LR (cosine to 10 %, 10 % warm-up)
    seed: int = 0  # init and data order


def train_run(run: RunConfig, vocab_size: int, train_tokens: np.ndarray, val_tokens: np.ndarray) -> dict[str, float]:
    """Train a fresh :class:`llmbook.model.DecoderLM` for ``run.tokens`` tokens.

    Returns N, D, steps, validation loss and seconds.
    """
    steps = max(1, math.ceil(run.tokens / (run.batch_size * run.seq_len)))
    torch.manual_seed(run.seed)
    model = DecoderLM(ModelConfig(vocab_size=vocab_size, d_model=run.d_model, n_layers=run.n_layers,
                                  n_heads=run.n_heads, max_seq_len=run.seq_len))
    loader = PackedLoader(train_tokens, LoaderConfig(seq_len=run.seq_len, batch_size=run.batch_size, seed=run.seed))
    schedule = ScheduleConfig(total_steps=steps, warmup_steps=max(1, steps // 10))
    trainer = Trainer(model, loader, TrainConfig(lr=run.lr, schedule=schedule))
    t0 = time.perf_counter()
    trainer.run()
    seconds = time.perf_counter() - t0
    val = evaluate(model, eval_windows(val_tokens, run.seq_len, 16))
    return {"d_model": run.d_model, "n_layers": run.n_layers, "N": non_embedding_params(model),
            "D": steps * run.batch_size * run.seq_len, "steps": steps, "loss": val.loss, "seconds": seconds}
