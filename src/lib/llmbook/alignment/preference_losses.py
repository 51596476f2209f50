"""Preference-optimisation losses as pure functions of per-sequence log-probabilities.

Each takes (B,) tensors of log π(y | x) (``llmbook.alignment.logprobs.sequence_logps``) and returns a
``PreferenceLoss``: the batch-mean loss and, detached, the per-example rewards trl logs. With the
log-ratio ``ρ(y) = log π_θ(y|x) - log π_ref(y|x)``, ``Δ = ρ(y_w) - ρ(y_l)`` (chosen y_w, rejected y_l),
σ the logistic function and β > 0:

- **DPO** (Rafailov et al., arXiv 2305.18290): ``-log σ(βΔ)``; the implicit reward is ``r(y) = β ρ(y)``.
  With label smoothing ε it is conservative DPO (cDPO, Mitchell 2023): the expected loss when each
  label is wrong with probability ε, ``-(1-ε) log σ(βΔ) - ε log σ(-βΔ)``.
- **Robust DPO** (Chowdhury et al., arXiv 2403.00409): ``[-(1-ε) log σ(βΔ) + ε log σ(-βΔ)] / (1-2ε)``,
  an unbiased estimate of the clean-label loss when labels flip with probability ε.
- **IPO** (Azar et al., arXiv 2310.12036, Eq. 17): ``(Δ - 1/(2β))²``, a squared loss that keeps Δ at a
  finite target instead of pushing it to infinity; β is the paper's τ.
- **Hinge** (SLiC, Zhao et al., arXiv 2305.10425): ``max(0, 1 - βΔ)``.
- **SimPO** (Meng et al., arXiv 2405.14734): reference-free, on length-averaged log-probabilities
  ``ℓ(y) = log π_θ(y|x) / |y|``: ``-log σ(β(ℓ(y_w) - ℓ(y_l)) - γ)`` with the margin γ given as γ/β.
- **ORPO** (Hong et al., arXiv 2403.07691): SFT on the chosen answer plus an odds-ratio term on
  length-averaged log-probabilities, ``L_SFT - λ log σ(log odds(y_w) - log odds(y_l))`` with
  ``log odds(y) = ℓ(y) - log(1 - e^ℓ(y))``; λ is ``beta`` as in trl.
- **KTO** (Ethayarajh et al., arXiv 2402.01306, Eq. 7): unpaired, one loss per example,
  ``λ_D (1 - σ(β(ρ(y) - z₀)))`` for a desirable y and ``λ_U (1 - σ(β(z₀ - ρ(y))))`` for an undesirable
  one; z₀ ≥ 0 is a batch estimate of KL(π_θ ‖ π_ref), a baseline that gets no gradient.
- **Bradley-Terry reward model** (Ouyang et al., arXiv 2203.02155): ``-log σ(r_w - r_l - m)`` on scalar
  scores, with an optional margin m (Llama 2, arXiv 2307.09288) and an optional centering term
  ``c · mean((r_w + r_l)²)`` that keeps scores near 0 (Eisenstein et al., arXiv 2312.09244).

Every function equals trl 1.16's trainers (DPOTrainer, CPOTrainer with ``loss_type="simpo"``,
ORPOTrainer, KTOTrainer, RewardTrainer) to 1e-6: tests/test_alignment_preference_losses.py.
What trl does that is easy to miss:

- DPO's IPO divides each log-ratio by the answer's token count, so pass ``average=True``
  log-probabilities for ``loss_type="ipo"`` (the rewards are then per token, trl's divided by length).
- trl 1.16's DPOTrainer reads ``label_smoothing`` for robust, EXO and AOT but not for sigmoid: it has no
  cDPO. Here ``"sigmoid"`` with ε > 0 is cDPO, CPOTrainer's smoothed sigmoid loss applied to log-ratios.
- CPO/SimPO's ``simpo_gamma`` is γ itself (trl subtracts γ/β inside σ(β·)); here it is ``gamma_beta_ratio``.
- ORPO's and SimPO's "rewards" are β times the policy's mean log-probability: there is no reference.
- KTO's loss is the mean over all examples of the weighted losses, not a mean per kind.
- ORPO's NLL is trl's token-mean cross-entropy over prompt *and* answer of the chosen rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

DPO_LOSS_TYPES = ("sigmoid", "ipo", "robust", "hinge")


@dataclass(frozen=True)
class PreferenceLoss:
    loss: torch.Tensor  # scalar: mean over the batch, differentiable
    chosen_rewards: torch.Tensor  # (B,) detached; KTO: one per desirable example
    rejected_rewards: torch.Tensor  # (B,) detached; KTO: one per undesirable example


def _check_tensors(*, allow_empty: bool = False, **named: torch.Tensor) -> None:
    """Each a 1-D tensor without NaN, all of one shape (one value per sequence of the batch)."""
    for name, x in named.items():
        if x.dim() != 1:
            raise ValueError(f"{name} must be 1-D, one value per sequence: got shape {tuple(x.shape)}")
        if torch.isnan(x).any():
            raise ValueError(f"{name} contains NaN: the loss would be NaN")
    shapes = {name: tuple(x.shape) for name, x in named.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"shapes must match: {shapes}")
    if not allow_empty and next(iter(shapes.values())) == (0,):
        raise ValueError("the batch is empty: a mean over no pairs is NaN")


def _check_beta(beta: float) -> None:
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")


def _check_label_smoothing(label_smoothing: float) -> None:
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing {label_smoothing} must be in [0, 0.5): the chance that a label is flipped")


def _smoothed_logistic(z: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """-log σ(z), its expectation when the label is flipped with probability ``label_smoothing``."""
    return -(1 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, *, beta: float = 0.1, label_smoothing: float = 0.0,
             loss_type: str = "sigmoid") -> PreferenceLoss:
    """DPO and its variants ``loss_type`` in sigmoid (cDPO with label_smoothing > 0), ipo, robust, hinge.

    Rewards are ``β (log π_θ - log π_ref)``. For ipo pass length-averaged log-probabilities, as trl does.
    """
    _check_tensors(policy_chosen=policy_chosen, policy_rejected=policy_rejected, ref_chosen=ref_chosen,
                   ref_rejected=ref_rejected)
    _check_beta(beta)
    if loss_type not in DPO_LOSS_TYPES:
        raise ValueError(f"unknown loss_type {loss_type!r}: use one of {DPO_LOSS_TYPES}")
    _check_label_smoothing(label_smoothing)
    if label_smoothing and loss_type not in ("sigmoid", "robust"):
        raise ValueError(f"label_smoothing applies to 'sigmoid' and 'robust', not {loss_type!r}")
    chosen = policy_chosen - ref_chosen
    rejected = policy_rejected - ref_rejected
    margin = beta * (chosen - rejected)
    if loss_type == "sigmoid":
        losses = _smoothed_logistic(margin, label_smoothing)
    elif loss_type == "robust":
        losses = (-(1 - label_smoothing) * F.logsigmoid(margin) + label_smoothing * F.logsigmoid(-margin)) / (
            1 - 2 * label_smoothing)
    elif loss_type == "ipo":
        losses = (chosen - rejected - 1 / (2 * beta)) ** 2
    else:
        losses = torch.relu(1 - margin)
    return PreferenceLoss(loss=losses.mean(), chosen_rewards=beta * chosen.detach(),
                          rejected_rewards=beta * rejected.detach())


def simpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, *, beta: float = 2.0,
               gamma_beta_ratio: float = 0.5, label_smoothing: float = 0.0) -> PreferenceLoss:
    """SimPO on length-averaged log-probabilities: ``-log σ(β(ℓ_w - ℓ_l - γ/β))``; rewards ``β ℓ``."""
    _check_tensors(policy_chosen=policy_chosen, policy_rejected=policy_rejected)
    _check_beta(beta)
    _check_label_smoothing(label_smoothing)
    if math.isnan(gamma_beta_ratio):
        raise ValueError("gamma_beta_ratio is NaN")
    margin = beta * (policy_chosen - policy_rejected - gamma_beta_ratio)
    return PreferenceLoss(loss=_smoothed_logistic(margin, label_smoothing).mean(),
                          chosen_rewards=beta * policy_chosen.detach(),
                          rejected_rewards=beta * policy_rejected.detach())


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - e^x) for x ≤ 0 without cancellation: log1p(-e^x) below -log 2, log(-expm1(x)) above (Mächler 2012)."""
    return torch.where(x < -math.log(2), torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def orpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, chosen_nll: torch.Tensor, *,
              beta: float = 0.1) -> PreferenceLoss:
    """ORPO: ``chosen_nll - β mean(log σ(log odds_w - log odds_l))`` on length-averaged log-probabilities.

    ``chosen_nll`` is the SFT loss on the chosen answers: a scalar (trl: token-mean over the batch) or
    one value per example (averaged). Rewards are ``β ℓ``, as trl logs them.
    """
    _check_tensors(policy_chosen=policy_chosen, policy_rejected=policy_rejected)
    if chosen_nll.dim() != 0 and chosen_nll.shape != policy_chosen.shape:
        raise ValueError(f"chosen_nll must be a scalar or of shape {tuple(policy_chosen.shape)}, "
                         f"got {tuple(chosen_nll.shape)}")
    if torch.isnan(chosen_nll).any():
        raise ValueError("chosen_nll contains NaN: the loss would be NaN")
    _check_beta(beta)
    for name, x in (("policy_chosen", policy_chosen), ("policy_rejected", policy_rejected)):
        if (x > 0).any():
            raise ValueError(f"{name} has a positive log-probability: pass log π(y|x) ≤ 0")
    dtype = torch.promote_types(policy_chosen.dtype, torch.float32)  # log1mexp near 0 needs the digits
    chosen, rejected = policy_chosen.to(dtype), policy_rejected.to(dtype)
    log_odds = (chosen - rejected) - (_log1mexp(chosen) - _log1mexp(rejected))
    loss = chosen_nll.mean() - beta * F.logsigmoid(log_odds).mean()
    return PreferenceLoss(loss=loss, chosen_rewards=beta * chosen.detach(), rejected_rewards=beta * rejected.detach())


def kto_kl_estimate(policy_kl_logps: torch.Tensor, ref_kl_logps: torch.Tensor) -> torch.Tensor:
    """KTO's z₀: mean of ``log π_θ - log π_ref`` over mismatched (prompt, completion) pairs, detached, ≥ 0.

    trl pairs each prompt with another example's completion, so the estimate is of KL(π_θ ‖ π_ref)
    away from the answers being trained on; a negative estimate is clamped to 0, the true KL's floor.
    """
    _check_tensors(policy_kl_logps=policy_kl_logps, ref_kl_logps=ref_kl_logps)
    return (policy_kl_logps - ref_kl_logps).mean().detach().clamp(min=0)


def kto_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, kl: torch.Tensor, *, beta: float = 0.1, desirable_weight: float = 1.0,
             undesirable_weight: float = 1.0) -> PreferenceLoss:
    """KTO on unpaired examples: chosen = the desirable ones, rejected = the undesirable ones (either may be empty).

    ``kl`` is z₀ (``kto_kl_estimate``), detached and clamped at 0 here too: it is a baseline, not trained.
    The loss is the mean over all examples of the weighted per-example losses; rewards ``β ρ``.
    """
    _check_tensors(allow_empty=True, policy_chosen=policy_chosen, ref_chosen=ref_chosen)
    _check_tensors(allow_empty=True, policy_rejected=policy_rejected, ref_rejected=ref_rejected)
    if policy_chosen.numel() + policy_rejected.numel() == 0:
        raise ValueError("no desirable and no undesirable example: the batch is empty")
    if kl.numel() != 1:
        raise ValueError(f"kl must be a single value (the batch KL estimate), got shape {tuple(kl.shape)}")
    if torch.isnan(kl).any():
        raise ValueError("kl is NaN: the loss would be NaN")
    _check_beta(beta)
    if not (desirable_weight > 0 and undesirable_weight > 0):
        raise ValueError(f"desirable_weight {desirable_weight} and undesirable_weight {undesirable_weight} "
                         "must be > 0")
    z0 = kl.detach().clamp(min=0).reshape(())
    chosen = policy_chosen - ref_chosen
    rejected = policy_rejected - ref_rejected
    losses = torch.cat([desirable_weight * (1 - torch.sigmoid(beta * (chosen - z0))),
                        undesirable_weight * (1 - torch.sigmoid(beta * (z0 - rejected)))])
    return PreferenceLoss(loss=losses.mean(), chosen_rewards=beta * chosen.detach(),
                          rejected_rewards=beta * rejected.detach())


def bradley_terry_loss(chosen_scores: torch.Tensor, rejected_scores: torch.Tensor, *,
                       margin: torch.Tensor | None = None,
                       center_rewards_coefficient: float | None = None) -> PreferenceLoss:
    """Reward-model loss ``-log σ(r_w - r_l - m)`` (+ ``c · mean((r_w + r_l)²)``); rewards are the scores."""
    named = {"chosen_scores": chosen_scores, "rejected_scores": rejected_scores}
    _check_tensors(**named, **({} if margin is None else {"margin": margin}))
    if center_rewards_coefficient is not None and not center_rewards_coefficient >= 0:
        raise ValueError(f"center_rewards_coefficient must be >= 0, got {center_rewards_coefficient}")
    gap = chosen_scores - rejected_scores
    loss = -F.logsigmoid(gap if margin is None else gap - margin).mean()
    if center_rewards_coefficient is not None:
        loss = loss + center_rewards_coefficient * ((chosen_scores + rejected_scores) ** 2).mean()
    return PreferenceLoss(loss=loss, chosen_rewards=chosen_scores.detach(), rejected_rewards=rejected_scores.detach())
