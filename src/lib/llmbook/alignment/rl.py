"""Policy-gradient RL for language models: PPO's pieces, GRPO and RLOO, as pure tensor functions.

A completion is an episode: the state is the prompt plus the tokens so far, each completion token is
an action, and a reward model scores the finished text. Every tensor here is ``(B, T)`` over the
completion tokens with a ``mask`` that is 1 on real tokens and 0 on padding (float or bool).

PPO with a learned critic (Ziegler et al. 2019, arXiv:1909.08593; InstructGPT, Ouyang et al. 2022,
arXiv:2203.02155):

- KL-shaped reward: ``r_t = -beta * KL_t`` on every token, plus the sequence score ``R(x, y)`` on the
  last one, so the policy pays for drifting from the reference (SFT) model token by token.
- GAE (Schulman et al. 2015, arXiv:1506.02438): ``delta_t = r_t + gamma V_{t+1} - V_t`` and
  ``A_t = sum_l (gamma lam)^l delta_{t+l}``, with ``V = 0`` after the last token; returns
  ``R_t = A_t + V_t`` are the critic's targets. ``lam = 1`` gives the Monte-Carlo return minus
  ``V_t`` (unbiased, noisy); ``lam = 0`` the one-step TD error (biased, quiet).
- Clipped surrogate (Schulman et al. 2017, arXiv:1707.06347): with ``rho_t = pi(a_t) / pi_old(a_t)``,
  ``L = -E[min(rho_t A_t, clip(rho_t, 1 - eps, 1 + eps_high) A_t)]``: once the ratio has moved
  ``eps`` in the direction the advantage rewards, the gradient stops. DAPO's "clip-higher"
  (Yu et al. 2025, arXiv:2503.14476) takes ``eps_high > eps`` so unlikely tokens can grow further.
- Clipped value loss: ``0.5 * E[max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2)]``.
- KL estimators for ``x ~ pi`` (Schulman 2020, "Approximating KL Divergence"), ``log r = log pi_ref - log pi``:
  ``k1 = -log r`` (unbiased, can be negative), ``k2 = (log r)^2 / 2`` (biased, low variance),
  ``k3 = (r - 1) - log r`` (unbiased and >= 0 because ``log r <= r - 1``).
- Adaptive KL coefficient (Ziegler et al. 2019): ``e = clip(KL / KL_target - 1, -0.2, 0.2)``,
  ``beta <- beta * (1 + e * n_steps / horizon)``.

Critic-free, group-relative methods: sample ``G`` completions per prompt and use the other samples of
the same prompt as the baseline; the advantage of completion ``i`` is given to every one of its tokens.

- GRPO (Shao et al. 2024, DeepSeekMath, arXiv:2402.03300): ``A_i = (r_i - mean(r)) / (std(r) + 1e-4)``
  over the group (std with Bessel's correction, as trl). Dr. GRPO (Liu et al. 2025, arXiv:2503.20783)
  drops the division ("none"), which up-weights prompts whose rewards barely vary; "batch" divides
  by the std of the whole batch instead.
- RLOO (Ahmadian et al. 2024, arXiv:2402.14740): leave-one-out baseline
  ``A_i = r_i - sum_{j != i} r_j / (G - 1) = G / (G - 1) * (r_i - mean(r))``.
- GRPO's loss is the clipped surrogate per token plus ``beta * rho * k3`` against the reference (trl
  weights k3 by the ratio so its gradient is the reverse KL's). The loss types differ only in how
  per-token losses are averaged: "grpo" per sequence then over sequences (a long completion's tokens
  weigh less: length bias), "bnpo" over all tokens of the batch, "dapo" over all tokens of the
  generation batch (``num_items_in_batch``), "dr_grpo" by the constant ``B * max_completion_length``.

``group_advantages``, ``rloo_advantages`` and ``grpo_loss`` reproduce trl 1.16's ``GRPOTrainer`` and
``RLOOTrainer`` (token-level importance sampling, one gradient-accumulation step), checked against the
trainers' own methods in tests/test_alignment_rl.py.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

KLKind = Literal["k1", "k2", "k3"]
ScaleRewards = Literal["group", "batch", "none"]
GRPOLossType = Literal["grpo", "bnpo", "dapo", "dr_grpo"]
GRPO_LOSS_TYPES: tuple[str, ...] = ("grpo", "bnpo", "dapo", "dr_grpo")
STD_EPS = 1e-4  # added to the reward std before dividing, as trl (keeps zero-variance groups finite)


def _check_shapes(**tensors: torch.Tensor) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    first = next(iter(shapes.values()))
    if len(first) != 2 or any(shape != first for shape in shapes.values()):
        raise ValueError(f"expected (B, T) tensors of one shape, got {shapes}")


# --------------------------------------------------------------------------- masked statistics


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over the positions where ``mask`` is 1 (all of them, or along ``dim``)."""
    m = mask.to(x.dtype)
    if dim is None:
        return (x * m).sum() / m.sum()
    return (x * m).sum(dim) / m.sum(dim)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """``(x - mean) / std`` over the masked positions (unbiased variance); padding comes out 0.

    ``shift_mean=False`` rescales but keeps the mean (used on rewards, whose sign matters).
    """
    m = mask.to(x.dtype)
    n = m.sum()
    if n < 2:
        raise ValueError(f"masked_whiten needs at least 2 unmasked values, got {int(n)}")
    mean = masked_mean(x, m)
    var = masked_mean((x - mean) ** 2, m) * n / (n - 1)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * m


# --------------------------------------------------------------------------- PPO


@torch.no_grad()  # advantages and returns are targets, not paths for gradients
def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, *, gamma: float = 1.0, lam: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized Advantage Estimation over ``(B, T)`` tokens -> ``(advantages, returns)``.

    Masked positions are skipped: the recursion links each valid token to the next valid one, and the
    value after a row's last valid token is 0 (the episode ends). Both outputs are 0 on padding.
    """
    _check_shapes(rewards=rewards, values=values, mask=mask)
    valid = mask.bool()
    next_value = values.new_zeros(values.shape[0])  # V of the next valid state; 0 past the end
    running = values.new_zeros(values.shape[0])  # A of the next valid token
    columns = []
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantage = delta + gamma * lam * running
        ok = valid[:, t]
        running = torch.where(ok, advantage, running)
        next_value = torch.where(ok, values[:, t], next_value)
        columns.append(torch.where(ok, advantage, 0.0))
    advantages = torch.stack(columns[::-1], dim=1)
    return advantages, (advantages + values) * valid


def ppo_policy_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate, averaged over all completion tokens -> ``(loss, clip_fraction)``.

    ``clip_fraction`` is the share of tokens where the clipped term wins the min (no gradient there).
    ``clip_eps_high`` (default ``clip_eps``) is DAPO's separate upper bound.
    """
    _check_shapes(logps=logps, old_logps=old_logps, advantages=advantages, mask=mask)
    high = clip_eps if clip_eps_high is None else clip_eps_high
    if not 0 < clip_eps < 1 or high <= 0:
        raise ValueError(f"need 0 < clip_eps < 1 and clip_eps_high > 0, got {clip_eps}, {high}")
    ratio = torch.exp(logps - old_logps)
    # As losses (negated objectives), min of the objectives becomes max of the losses.
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip_eps, 1 + high)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    return loss, masked_mean((clipped > unclipped).to(logps.dtype), mask).detach()


def ppo_value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, *, clip: float = 0.2
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss ``0.5 * max((V - R)^2, (V_clipped - R)^2)`` -> ``(loss, clip_fraction)``.

    ``V_clipped`` keeps the new value within ``clip`` of the value at rollout time, like the policy ratio.
    """
    _check_shapes(values=values, old_values=old_values, returns=returns, mask=mask)
    if clip <= 0:
        raise ValueError(f"value clip must be > 0, got {clip}")
    clipped_values = old_values + (values - old_values).clamp(-clip, clip)
    err = (values - returns) ** 2
    err_clipped = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(err, err_clipped), mask)
    return loss, masked_mean((err_clipped > err).to(values.dtype), mask).detach()


def kl_per_token(logps: torch.Tensor, ref_logps: torch.Tensor, kind: KLKind = "k1") -> torch.Tensor:
    """Per-token estimate of ``KL(pi || pi_ref)`` from the sampled tokens' log-probabilities."""
    if logps.shape != ref_logps.shape:
        raise ValueError(f"logps {tuple(logps.shape)} and ref_logps {tuple(ref_logps.shape)} differ in shape")
    log_r = ref_logps - logps
    if kind == "k1":
        return -log_r
    if kind == "k2":
        return 0.5 * log_r**2
    if kind == "k3":
        return torch.exp(log_r) - log_r - 1
    raise ValueError(f"kind must be 'k1', 'k2' or 'k3', got {kind!r}")


@torch.no_grad()  # rewards are constants for the policy update
def kl_shaped_rewards(
    scores: torch.Tensor,
    logps: torch.Tensor,
    ref_logps: torch.Tensor,
    mask: torch.Tensor,
    *,
    beta: float = 0.1,
    kind: KLKind = "k1",
) -> torch.Tensor:
    """``(B, T)`` rewards: ``-beta * KL`` per token, plus ``scores (B,)`` on each row's last valid token."""
    _check_shapes(logps=logps, ref_logps=ref_logps, mask=mask)
    if scores.shape != (logps.shape[0],):
        raise ValueError(f"scores must have shape ({logps.shape[0]},), got {tuple(scores.shape)}")
    m = mask.to(logps.dtype)
    empty = (m.sum(1) == 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"rows {empty} have no completion token to put the score on")
    T = m.shape[1]
    last = T - 1 - m.flip(1).argmax(1)  # argmax finds the first 1 from the right
    return -beta * kl_per_token(logps, ref_logps, kind) * m + F.one_hot(last, T) * scores[:, None]


class FixedKLController:
    """A constant KL coefficient ``beta``."""

    def __init__(self, beta: float) -> None:
        self.beta = beta

    def update(self, current_kl: float, n_steps: int) -> None:
        """Nothing to adapt."""


class AdaptiveKLController:
    """Proportional controller steering the measured KL toward ``target`` (Ziegler et al. 2019).

    The error ``KL / target - 1`` is clipped to ±0.2, so one update changes ``beta`` by at most
    ``20% * n_steps / horizon``: too much KL raises the penalty, too little lowers it.
    """

    def __init__(self, init_beta: float, target: float, horizon: int) -> None:
        if init_beta <= 0 or target <= 0 or horizon <= 0:
            raise ValueError(f"init_beta, target and horizon must be > 0, got {init_beta}, {target}, {horizon}")
        self.beta = init_beta
        self.target = target
        self.horizon = horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        """Adapt ``beta`` after ``n_steps`` samples (episodes) whose mean KL was ``current_kl``."""
        error = min(max(current_kl / self.target - 1, -0.2), 0.2)
        self.beta *= 1 + error * n_steps / self.horizon


# --------------------------------------------------------------------------- GRPO / RLOO


def _grouped(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    if rewards.dim() != 1:
        raise ValueError(f"rewards must have shape (N,), got {tuple(rewards.shape)}")
    if group_size < 2:
        raise ValueError(f"group_size must be >= 2 (a group needs a baseline), got {group_size}")
    if rewards.numel() % group_size:
        raise ValueError(f"group_size {group_size} does not divide the {rewards.numel()} rewards")
    n_nan = int(torch.isnan(rewards).sum())
    if n_nan:
        raise ValueError(f"{n_nan} of {rewards.numel()} rewards are NaN")
    return rewards.view(-1, group_size)


def group_advantages(rewards: torch.Tensor, group_size: int, *, scale_rewards: ScaleRewards = "group") -> torch.Tensor:
    """GRPO advantages ``(N,)``: reward minus its group's mean, divided by a std per ``scale_rewards``.

    ``rewards`` holds ``N / group_size`` consecutive groups of ``group_size`` completions of one prompt.
    "group": the group's std; "batch": the std of all N rewards; "none": no division (Dr. GRPO).
    """
    if scale_rewards not in ("group", "batch", "none"):
        raise ValueError(f"scale_rewards must be 'group', 'batch' or 'none', got {scale_rewards!r}")
    grouped = _grouped(rewards, group_size)
    centred = (grouped - grouped.mean(1, keepdim=True)).flatten()
    if scale_rewards == "none":
        return centred
    if scale_rewards == "group":
        std = grouped.std(1).repeat_interleave(group_size)  # Bessel-corrected, as trl's nanstd
    else:
        std = rewards.std()
    return centred / (std + STD_EPS)


def rloo_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """RLOO advantages ``(N,)``: each reward minus the mean of the other rewards of its group."""
    grouped = _grouped(rewards, group_size)
    baseline = (grouped.sum(1, keepdim=True) - grouped) / (group_size - 1)
    return (grouped - baseline).flatten()


def grpo_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor | None,
    ref_logps: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    beta: float = 0.0,
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.2,
    loss_type: GRPOLossType = "dapo",
    max_completion_length: int | None = None,
    num_items_in_batch: int | None = None,
    use_bias_correction_kl: bool = True,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GRPO's loss over ``(N, T)`` completion tokens with one advantage per completion -> ``(loss, stats)``.

    ``old_logps=None`` means on-policy (one update per generation): the ratio is ``exp(logps - logps.detach())``,
    1 in value but still carrying the policy gradient. ``beta > 0`` adds ``beta * k3`` against ``ref_logps``
    per token, multiplied by the ratio when ``use_bias_correction_kl`` (trl's default, from DeepSeek-V3.2,
    arXiv:2512.02556): the tokens were sampled from ``pi_old``, and only ``rho * k3`` has the gradient of
    ``KL(pi || pi_ref)`` in expectation, ``E_pi[grad log pi * (log pi - log pi_ref)]``; plain ``k3`` gives
    ``E_pi[grad log pi * (1 - r)]``, the gradient of the forward ``KL(pi_ref || pi)``, even on-policy (``rho = 1``).
    ``max_completion_length`` is Dr. GRPO's constant (required for "dr_grpo"); ``num_items_in_batch`` is the
    completion-token count of the whole generation batch for "dapo" (default: this batch's). ``stats``:
    detached ``clip_ratio_low``/``_high``/``clip_ratio`` (token share clipped below with A < 0, above with
    A > 0, either) and, when ``beta > 0``, ``kl``: the masked mean of the KL term as it enters the loss.
    """
    if loss_type not in GRPO_LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {GRPO_LOSS_TYPES}, got {loss_type!r}")
    old_logps = logps.detach() if old_logps is None else old_logps
    _check_shapes(logps=logps, old_logps=old_logps, mask=mask)
    if advantages.shape != (logps.shape[0],):
        raise ValueError(f"advantages must have shape ({logps.shape[0]},), got {tuple(advantages.shape)}")
    if beta != 0.0 and ref_logps is None:
        raise ValueError("beta > 0 needs ref_logps for the KL term")
    if loss_type == "dr_grpo" and max_completion_length is None:
        raise ValueError("loss_type='dr_grpo' needs max_completion_length (its constant normaliser)")
    if num_items_in_batch is not None and loss_type != "dapo":
        raise ValueError(f"num_items_in_batch only applies to loss_type='dapo', not {loss_type!r}")
    m = mask.to(logps.dtype)
    longest = int(m.sum(1).max())
    if max_completion_length is not None and longest > max_completion_length:
        raise ValueError(f"a completion has {longest} tokens > max_completion_length={max_completion_length}")

    adv = advantages[:, None]
    ratio = torch.exp(logps - old_logps)
    per_token = -torch.min(ratio * adv, ratio.clamp(1 - epsilon_low, 1 + epsilon_high) * adv)
    stats: dict[str, torch.Tensor] = {}
    if beta != 0.0:
        kl = kl_per_token(logps, ref_logps, "k3")
        if use_bias_correction_kl:
            kl = kl * ratio
        per_token = per_token + beta * kl
        stats["kl"] = masked_mean(kl, m).detach()

    masked = per_token * m
    if loss_type == "grpo":
        loss = (masked.sum(1) / m.sum(1).clamp(min=1.0)).mean()
    elif loss_type == "bnpo":
        loss = masked.sum() / m.sum().clamp(min=1.0)
    elif loss_type == "dapo":
        tokens = m.sum() if num_items_in_batch is None else torch.tensor(float(num_items_in_batch))
        loss = masked.sum() / tokens.clamp(min=1.0)
    else:  # dr_grpo
        loss = masked.sum() / (logps.shape[0] * max_completion_length)

    low = (ratio < 1 - epsilon_low) & (adv < 0)
    high = (ratio > 1 + epsilon_high) & (adv > 0)
    stats["clip_ratio_low"] = masked_mean(low.to(m.dtype), m).detach()
    stats["clip_ratio_high"] = masked_mean(high.to(m.dtype), m).detach()
    stats["clip_ratio"] = masked_mean((low | high).to(m.dtype), m).detach()
    return loss, stats
