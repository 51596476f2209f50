"""Our preference losses next to trl 1.16's, on one batch of log-probabilities: the table the chapter shows.

:func:`trl_side_by_side` computes each loss of :mod:`llmbook.alignment.preference_losses` and the same loss
through trl's own trainer code, on the same numbers. trl's losses live inside trainer methods, so each is
called unbound with a minimal stand-in ``self`` (the attributes the method reads, a one-process
accelerator); the methods that run a model forward get one that returns the given log-probabilities.
Which trl code backs each row:

- **DPO (sigmoid), IPO, robust DPO**: ``DPOTrainer._compute_loss``, the loss DPOTrainer trains with, with
  precomputed reference log-probabilities (trl's ``precompute_ref_log_probs`` path) and a stand-in
  policy (:class:`_LogpTable`) that returns each sequence's log-probability as a one-token completion.
  IPO gets the per-token means: trl divides the summed log-ratios by the completion length, and a
  one-token completion of the mean is that division done beforehand.
- **Conservative DPO**: ``CPOTrainer.cpo_loss`` (``loss_type="sigmoid"``) on the log-ratios
  ``ρ = log π_θ - log π_ref``. trl 1.16's DPOTrainer ignores ``label_smoothing`` for sigmoid, so it has no
  cDPO. CPO's smoothed sigmoid ``-(1-ε) log σ(β x) - ε log σ(-β x)`` is cDPO's formula: CPO, having no
  reference model, feeds it ``x = log π_θ(y_w) - log π_θ(y_l)``; fed ``x = ρ_w - ρ_l`` it is cDPO.
- **SimPO**: ``CPOTrainer.get_batch_loss_metrics`` with ``loss_type="simpo"``, ``cpo_alpha=0`` (pure SimPO:
  CPOConfig's default 1.0 adds CPO's NLL term, "CPO-SimPO") and trl's ``simpo_gamma = gamma_beta_ratio * beta``.
- **ORPO**: ``ORPOTrainer.get_batch_loss_metrics``; its forward is stood in by the given mean
  log-probabilities and the mean of ``chosen_nll``.
- **KTO**: ``KTOTrainer._compute_loss`` on the pairs split into desirable (chosen) and undesirable
  (rejected) examples, reference log-probabilities precomputed, the KL reference point z₀ from the
  mismatched pairs' log-probabilities.
- **Bradley-Terry**: ``RewardTrainer.compute_loss`` with a stand-in reward model returning the given scores.
"""

from __future__ import annotations

import os
import types
from collections import defaultdict

import torch

from llmbook.alignment.preference_losses import (
    bradley_terry_loss,
    dpo_loss,
    kto_kl_estimate,
    kto_loss,
    orpo_loss,
    simpo_loss,
)


class _Accelerator:
    """accelerate.Accelerator on one process: every gather is the identity."""

    device = torch.device("cpu")

    @staticmethod
    def gather(x: torch.Tensor) -> torch.Tensor:
        return x

    gather_for_metrics = gather


def _stand_in(trainer: type, methods: tuple[str, ...] = (), **attrs: object) -> types.SimpleNamespace:
    """A minimal ``self`` for ``trainer``'s methods: ``attrs``, metric stores, ``methods`` bound to it."""
    self = types.SimpleNamespace(accelerator=_Accelerator(), aux_loss_enabled=False, _total_train_tokens=0,
                                 _tp_size=1, _metrics={"train": defaultdict(list), "eval": defaultdict(list)}, **attrs)
    for name in methods:
        setattr(self, name, types.MethodType(getattr(trainer, name), self))
    return self


class _LogpTable:
    """A policy whose forward returns given sequence log-probabilities, for trl code that runs the model.

    Row ``(0, i)`` of ``input_ids`` is one prompt token and one completion token whose id ``i`` indexes
    ``logps``; trl sums the per-token log-probabilities over the completion, one token, and gets ``logps[i]``.
    """

    training = False  # trl reads model.training only to file its metrics under "eval"

    def __init__(self, logps: torch.Tensor) -> None:
        self.logps = logps

    def __call__(self, *, input_ids: torch.Tensor, **_: object) -> types.SimpleNamespace:
        log_probs = self.logps[input_ids[:, 1:]]
        zeros = torch.zeros_like(log_probs)  # what the fused LM head also returns, read only for metrics
        return types.SimpleNamespace(log_probs=log_probs, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool())

    @staticmethod
    def rows(first: int, n: int) -> dict[str, torch.Tensor]:
        """``n`` two-token rows pointing at entries ``first .. first + n - 1``, the second token the completion."""
        ids = torch.stack([torch.zeros(n, dtype=torch.long), torch.arange(first, first + n)], dim=1)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                "completion_mask": torch.tensor([[0, 1]]).repeat(n, 1)}


def _import_trl() -> types.SimpleNamespace:
    try:
        import trl  # noqa: F401  (the heavy import, only when a comparison is asked for)
    except ImportError as err:
        raise ImportError('trl_side_by_side needs trl 1.16: pip install -e ".[alignment]"') from err
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # trl.experimental (CPO, ORPO) warns on import otherwise
    from trl import DPOTrainer, KTOTrainer, RewardTrainer
    from trl.experimental.cpo import CPOTrainer
    from trl.experimental.orpo import ORPOTrainer

    return types.SimpleNamespace(DPOTrainer=DPOTrainer, KTOTrainer=KTOTrainer, RewardTrainer=RewardTrainer,
                                 CPOTrainer=CPOTrainer, ORPOTrainer=ORPOTrainer)


@torch.no_grad()
def trl_side_by_side(*, chosen_sum: torch.Tensor, rejected_sum: torch.Tensor, ref_chosen_sum: torch.Tensor,
                     ref_rejected_sum: torch.Tensor, chosen_mean: torch.Tensor, rejected_mean: torch.Tensor,
                     ref_chosen_mean: torch.Tensor, ref_rejected_mean: torch.Tensor, chosen_nll: torch.Tensor,
                     kl_policy: torch.Tensor, kl_ref: torch.Tensor, beta: float, simpo_beta: float, ipo_beta: float,
                     label_smoothing: float = 0.1, gamma_beta_ratio: float = 0.5) -> list[dict[str, str | float]]:
    """Each preference loss by llmbook and by trl 1.16's trainer code, with their absolute difference.

    ``*_sum`` are (B,) summed log-probabilities of the answers under the policy and the reference, ``*_mean``
    the same divided by the answer's token count; ``chosen_nll`` the SFT loss on the chosen rows, (B,) or a
    scalar (ORPO's trl side gets its mean). ``kl_policy`` / ``kl_ref`` are summed log-probabilities of
    mismatched (prompt, answer) pairs for KTO's reference point z₀. ``beta`` is DPO's, cDPO's, robust DPO's
    and KTO's β and ORPO's λ; ``label_smoothing`` ε is cDPO's and robust DPO's. The Bradley-Terry row uses
    ``chosen_sum`` / ``rejected_sum`` as stand-in reward-model scores.

    Returns one row per loss: ``{"loss", "llmbook", "trl", "trl code", "|difference|"}``.
    """
    trl = _import_trl()
    n = chosen_sum.numel()
    rows: list[dict[str, str | float]] = []

    def add(name: str, ours: torch.Tensor, theirs: torch.Tensor, code: str) -> None:
        rows.append({"loss": name, "llmbook": ours.item(), "trl": theirs.item(), "trl code": f"trl.{code}",
                     "|difference|": (ours - theirs).abs().item()})

    def dpo_trainer(policy: tuple[torch.Tensor, torch.Tensor], ref: tuple[torch.Tensor, torch.Tensor], *,
                    loss_type: str, beta_: float, smoothing: float = 0.0) -> torch.Tensor:
        model = _LogpTable(torch.cat(policy))
        self = _stand_in(trl.DPOTrainer, model=model, ld_alpha=None, precompute_ref_logps=True,
                         f_divergence_type="reverse_kl", loss_types=[loss_type], loss_weights=[1.0], beta=beta_,
                         label_smoothing=smoothing, use_weighting=False)
        inputs = _LogpTable.rows(0, 2 * n) | {"ref_chosen_logps": ref[0], "ref_rejected_logps": ref[1]}
        return trl.DPOTrainer._compute_loss(self, model, inputs, return_outputs=False)

    sums = (chosen_sum, rejected_sum), (ref_chosen_sum, ref_rejected_sum)
    means = (chosen_mean, rejected_mean), (ref_chosen_mean, ref_rejected_mean)

    add("DPO (sigmoid)", dpo_loss(*sums[0], *sums[1], beta=beta).loss,
        dpo_trainer(*sums, loss_type="sigmoid", beta_=beta), "DPOTrainer._compute_loss")

    cpo = _stand_in(trl.CPOTrainer, alpha=0.0, loss_type="sigmoid", beta=beta, label_smoothing=label_smoothing)
    losses, _, _ = trl.CPOTrainer.cpo_loss(cpo, chosen_sum - ref_chosen_sum, rejected_sum - ref_rejected_sum)
    add(f"conservative DPO (ε = {label_smoothing})",
        dpo_loss(*sums[0], *sums[1], beta=beta, label_smoothing=label_smoothing).loss, losses.mean(),
        "experimental.cpo.CPOTrainer.cpo_loss")

    add("IPO (per-token log-probabilities)", dpo_loss(*means[0], *means[1], beta=ipo_beta, loss_type="ipo").loss,
        dpo_trainer(*means, loss_type="ipo", beta_=ipo_beta), "DPOTrainer._compute_loss")

    add(f"robust DPO (ε = {label_smoothing})",
        dpo_loss(*sums[0], *sums[1], beta=beta, label_smoothing=label_smoothing, loss_type="robust").loss,
        dpo_trainer(*sums, loss_type="robust", beta_=beta, smoothing=label_smoothing), "DPOTrainer._compute_loss")

    # The trainers' forward is stood in by the log-probabilities it would return (logits are read for metrics only)
    nll, logits = chosen_nll.mean(), torch.zeros(1)
    simpo = _stand_in(trl.CPOTrainer, ("cpo_loss",), loss_type="simpo", cpo_alpha=0.0, alpha=0.0, beta=simpo_beta,
                      simpo_gamma=gamma_beta_ratio * simpo_beta, label_smoothing=0.0,  # trl's simpo_gamma is γ
                      concatenated_forward=lambda model, batch: (chosen_mean, rejected_mean, logits, logits, nll))
    add(f"SimPO (γ/β = {gamma_beta_ratio})",
        simpo_loss(chosen_mean, rejected_mean, beta=simpo_beta, gamma_beta_ratio=gamma_beta_ratio).loss,
        trl.CPOTrainer.get_batch_loss_metrics(simpo, None, {})[0], "experimental.cpo.CPOTrainer.get_batch_loss_metrics")

    orpo = _stand_in(trl.ORPOTrainer, ("odds_ratio_loss",), beta=beta,
                     concatenated_forward=lambda model, batch: (chosen_mean, rejected_mean, logits, logits, nll))
    add("ORPO", orpo_loss(chosen_mean, rejected_mean, chosen_nll, beta=beta).loss,
        trl.ORPOTrainer.get_batch_loss_metrics(orpo, None, {})[0],
        "experimental.orpo.ORPOTrainer.get_batch_loss_metrics")

    # KTO: the pairs as unpaired examples, rows [chosen; rejected], then the mismatched pairs for z₀
    model = _LogpTable(torch.cat([chosen_sum, rejected_sum, kl_policy]))
    kto = _stand_in(trl.KTOTrainer, ("_compute_kl_logps",), model=model, calculate_KL=True, precompute_ref_logps=True,
                    loss_type="kto", beta=beta, desirable_weight=1.0, undesirable_weight=1.0)
    inputs = _LogpTable.rows(0, 2 * n) | {f"KL_{k}": v for k, v in _LogpTable.rows(2 * n, kl_policy.numel()).items()}
    inputs |= {"label": torch.arange(2 * n) < n, "ref_logps": torch.cat([ref_chosen_sum, ref_rejected_sum]),
               "ref_KL_logps": kl_ref}
    add("KTO", kto_loss(*sums[0], *sums[1], kto_kl_estimate(kl_policy, kl_ref), beta=beta).loss,
        trl.KTOTrainer._compute_loss(kto, model, inputs, return_outputs=False), "KTOTrainer._compute_loss")

    scores = torch.cat([chosen_sum, rejected_sum]).unsqueeze(-1)
    reward = _stand_in(trl.RewardTrainer, model=types.SimpleNamespace(training=False),
                       args=types.SimpleNamespace(center_rewards_coefficient=None))
    add("Bradley-Terry reward model", bradley_terry_loss(chosen_sum, rejected_sum).loss,
        trl.RewardTrainer.compute_loss(reward, lambda **_: types.SimpleNamespace(logits=scores), {}),
        "RewardTrainer.compute_loss")
    return rows
