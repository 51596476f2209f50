"""llmbook.alignment.logprobs and .preference_losses against trl 1.16's own trainer code.

trl's losses live inside trainer methods. Each test calls the real method with a stand-in ``self``
(a SimpleNamespace holding the attributes the method reads, the trainer methods it calls bound to
it) instead of building a trainer: DPOTrainer._compute_loss and KTOTrainer._compute_loss run on two
tiny seeded Llamas patched with trl's fused LM head, as the trainers patch them, so our
``sequence_logps`` on the models' logits is checked on the way; CPOTrainer (SimPO), ORPOTrainer and
RewardTrainer get seeded random log-probabilities / scores from a stand-in forward.

The accelerator stand-in is one process: its gathers are the identity and it keeps what ``gather``
saw, which is where DPOTrainer and RewardTrainer hand over the per-example rewards they log.

Tolerance: 1e-6 absolute plus 1e-6 relative. Both sides run fp32; a sequence log-probability is a
sum of ~10 terms of size ~4, so the two libraries' summation orders can differ in its last place
(~2e-6 at |x| ~ 30).
"""

from __future__ import annotations

import math
import os
import types
from collections import defaultdict
from functools import partial

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from trl import DPOTrainer, KTOTrainer, RewardTrainer
from trl.trainer.utils import add_fused_lm_head, selective_log_softmax

from llmbook.alignment.logprobs import sequence_logps, token_logps
from llmbook.alignment.preference_losses import (
    PreferenceLoss,
    bradley_terry_loss,
    dpo_loss,
    kto_kl_estimate,
    kto_loss,
    orpo_loss,
    simpo_loss,
)
from llmbook.training.finetune import IGNORE

os.environ["TRL_EXPERIMENTAL_SILENCE"] = "1"  # trl.experimental (CPO, ORPO) warns on import otherwise

close = partial(torch.testing.assert_close, atol=1e-6, rtol=1e-6)
B, T, V = 6, 12, 64


class Accelerator:
    """accelerate.Accelerator on one process; ``gathered`` keeps what ``gather`` was given, in order."""

    device = torch.device("cpu")

    def __init__(self) -> None:
        self.gathered: list[torch.Tensor] = []

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        self.gathered.append(x)
        return x

    def gather_for_metrics(self, x: torch.Tensor) -> torch.Tensor:
        return x


def stand_in(trainer: type, methods: tuple[str, ...] = (), **attrs) -> types.SimpleNamespace:
    """A minimal ``self`` for ``trainer``'s methods: ``attrs``, metric stores, ``methods`` bound to it."""
    self = types.SimpleNamespace(accelerator=Accelerator(), aux_loss_enabled=False, _total_train_tokens=0,
                                 _tp_size=1, _metrics={"train": defaultdict(list), "eval": defaultdict(list)}, **attrs)
    for name in methods:
        setattr(self, name, types.MethodType(getattr(trainer, name), self))
    return self


def tiny_llama(seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    # initializer_range 0.5: peaked next-token distributions, so log-ratios between two seeds are O(1-10)
    config = LlamaConfig(vocab_size=V, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, initializer_range=0.5)
    model = LlamaForCausalLM(config).eval()
    # As DPOTrainer patches the policy; a superset of what KTOTrainer and either reference need
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))
    return model


@pytest.fixture(scope="module")
def models() -> tuple[LlamaForCausalLM, LlamaForCausalLM]:
    return tiny_llama(0), tiny_llama(1)


def token_batch(n: int, seed: int) -> dict[str, torch.Tensor]:
    """Right-padded rows: a 2-4 token prompt, then a completion, 6 to T tokens in all."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(6, T + 1, (n,), generator=g)
    attention = (torch.arange(T) < lengths[:, None]).long()
    completion = (torch.arange(T) >= torch.randint(2, 5, (n,), generator=g)[:, None]).long() * attention
    return {"input_ids": torch.randint(0, V, (n, T), generator=g) * attention, "attention_mask": attention,
            "completion_mask": completion}


def ours_logps(model: LlamaForCausalLM, batch: dict[str, torch.Tensor], prefix: str = "", *,
               average: bool = False) -> torch.Tensor:
    """Our sequence log-probabilities of the completions, from the model's plain logits."""
    ids, attention = batch[f"{prefix}input_ids"], batch[f"{prefix}attention_mask"]
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=attention).logits
    return sequence_logps(logits, ids.masked_fill(batch[f"{prefix}completion_mask"] == 0, IGNORE), average=average)


def random_logits_and_labels(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(B, T, V, generator=g)
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[:, :3] = IGNORE  # the prompt
    labels[1, 8:] = IGNORE  # padding
    labels[2, 5] = IGNORE  # a hole in the middle
    return logits, labels


# --------------------------------------------------------------------------- log-probabilities


def test_token_logps_equal_trl_selective_log_softmax():
    logits, labels = random_logits_and_labels(0)
    targets = labels[:, 1:]
    scored = targets != IGNORE
    theirs = selective_log_softmax(logits[:, :-1], targets.masked_fill(~scored, 0)) * scored
    ours = token_logps(logits, labels)
    close(ours, theirs)
    assert (ours[~scored] == 0).all() and (ours[scored] < 0).all()


@pytest.mark.parametrize("average", [False, True])
def test_sequence_logps_equal_trl_get_batch_logps(average):
    from trl.experimental.cpo import CPOTrainer

    logits, labels = random_logits_and_labels(1)
    close(sequence_logps(logits, labels, average=average),
          CPOTrainer.get_batch_logps(logits, labels, average_log_prob=average))


def test_sequence_logps_reads_only_scored_targets():
    logits, labels = random_logits_and_labels(2)
    before = sequence_logps(logits, labels)
    unread = logits.clone()
    unread[:, :2] += 5 * torch.randn(B, 2, V)  # positions 0-1 predict labels 1-2: the prompt
    unread[1, 7:] += 5 * torch.randn(T - 7, V)  # predict row 1's padding (and nothing after the last token)
    unread[2, 4] += 5 * torch.randn(V)  # predicts row 2's hole
    close(sequence_logps(unread, labels), before, atol=0, rtol=0)
    read = logits.clone()
    read[2, 5] += 5 * torch.randn(V)  # predicts row 2's label 6, scored
    changed = sequence_logps(read, labels) != before
    assert changed.tolist() == [False, False, True, False, False, False]


def test_sequence_logps_bf16_logits_are_scored_in_float32():
    logits, labels = random_logits_and_labels(3)
    low = logits.bfloat16()
    ours = sequence_logps(low, labels)
    assert ours.dtype == torch.float32
    close(ours, sequence_logps(low.float(), labels))


def test_logps_bad_inputs():
    logits, labels = random_logits_and_labels(4)
    with pytest.raises(ValueError, match=r"must be \(B, T, V\) and \(B, T\)"):
        token_logps(logits, labels[:, :-1])
    with pytest.raises(ValueError, match="at least 2 positions"):
        token_logps(logits[:, :1], labels[:, :1])
    labels[[1, 4], 1:] = IGNORE
    with pytest.raises(ValueError, match=r"rows \[1, 4\] have no target token"):
        sequence_logps(logits, labels)


# --------------------------------------------------------------------------- DPO


@pytest.mark.parametrize(("loss_type", "label_smoothing"),
                         [("sigmoid", 0.0), ("hinge", 0.0), ("ipo", 0.0), ("robust", 0.0), ("robust", 0.2)])
def test_dpo_equals_trl_dpo_trainer(models, loss_type, label_smoothing):
    policy, ref = models
    batch = token_batch(2 * B, seed=5)  # rows [chosen; rejected], as DPOTrainer's collator stacks them
    trainer = stand_in(DPOTrainer, model=policy, ref_model=ref, ld_alpha=None, precompute_ref_logps=False,
                       args=types.SimpleNamespace(gradient_checkpointing_kwargs=None), f_divergence_type="reverse_kl",
                       loss_types=[loss_type], loss_weights=[1.0], beta=0.1, label_smoothing=label_smoothing,
                       use_weighting=False)
    with torch.no_grad():
        theirs = DPOTrainer._compute_loss(trainer, policy, batch, return_outputs=False)
    chosen_rewards, rejected_rewards, _, _, chosen_logps, rejected_logps = trainer.accelerator.gathered

    average = loss_type == "ipo"  # trl divides IPO's log-ratios by the completion length
    pi, pi_ref = ours_logps(policy, batch, average=average), ours_logps(ref, batch, average=average)
    ours = dpo_loss(pi[:B], pi[B:], pi_ref[:B], pi_ref[B:], beta=0.1, label_smoothing=label_smoothing,
                    loss_type=loss_type)
    close(ours.loss, theirs)
    lengths = batch["completion_mask"].sum(dim=1) if average else torch.ones(2 * B)
    close(ours.chosen_rewards * lengths[:B], chosen_rewards)
    close(ours.rejected_rewards * lengths[B:], rejected_rewards)
    if not average:  # the policy's summed log-probabilities, from trl's fused LM head
        close(pi, torch.cat([chosen_logps, rejected_logps]))
    assert ours.chosen_rewards.abs().max() > 0.1  # the two models differ: a bug in a log-ratio would show


def test_cdpo_equals_trl_cpo_smoothed_sigmoid_on_log_ratios():
    # trl 1.16's DPOTrainer ignores label_smoothing for sigmoid (it reads it for robust, EXO, AOT); CPO's keeps cDPO's
    # smoothing, and on the log-ratios ρ_w, ρ_l it is DPO's.
    from trl.experimental.cpo import CPOTrainer

    g = torch.Generator().manual_seed(6)
    pc, pr, rc, rr = (-30 * torch.rand(B, generator=g) for _ in range(4))
    trainer = stand_in(CPOTrainer, alpha=0.0, loss_type="sigmoid", beta=0.1, label_smoothing=0.2, simpo_gamma=0.0)
    losses, chosen_rewards, rejected_rewards = CPOTrainer.cpo_loss(trainer, pc - rc, pr - rr)
    ours = dpo_loss(pc, pr, rc, rr, beta=0.1, label_smoothing=0.2)
    close(ours.loss, losses.mean())
    close(ours.chosen_rewards, chosen_rewards)
    close(ours.rejected_rewards, rejected_rewards)
    assert not torch.allclose(ours.loss, dpo_loss(pc, pr, rc, rr, beta=0.1).loss)  # the smoothing mattered


# --------------------------------------------------------------------------- SimPO and ORPO


def policy_forward(chosen: torch.Tensor, rejected: torch.Tensor, nll: torch.Tensor):
    """A ``concatenated_forward`` returning given length-averaged log-probabilities (and dummy logits)."""
    logits = torch.zeros(B, T - 1, V)
    return lambda model, batch: (chosen, rejected, logits, logits, nll)


def mean_logps(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Length-averaged log-probabilities on both sides of log1mexp's branch at -log 2."""
    g = torch.Generator().manual_seed(seed)
    return -0.02 - 3 * torch.rand(B, generator=g), -0.02 - 3 * torch.rand(B, generator=g)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_simpo_equals_trl_cpo_trainer(label_smoothing):
    from trl.experimental.cpo import CPOTrainer

    chosen, rejected = mean_logps(7)
    beta, gamma_beta_ratio = 2.0, 0.5
    trainer = stand_in(CPOTrainer, ("cpo_loss",), loss_type="simpo", cpo_alpha=0.0, alpha=0.0, beta=beta,
                       simpo_gamma=gamma_beta_ratio * beta,  # trl's simpo_gamma is γ itself
                       label_smoothing=label_smoothing,
                       concatenated_forward=policy_forward(chosen, rejected, torch.tensor(2.5)))
    theirs, metrics = CPOTrainer.get_batch_loss_metrics(trainer, None, {})
    _, chosen_rewards, rejected_rewards = trainer.cpo_loss(chosen, rejected)
    ours = simpo_loss(chosen, rejected, beta=beta, gamma_beta_ratio=gamma_beta_ratio, label_smoothing=label_smoothing)
    close(ours.loss, theirs)
    close(ours.chosen_rewards, chosen_rewards)
    close(ours.rejected_rewards, rejected_rewards)
    assert math.isclose(ours.chosen_rewards.mean().item(), metrics["rewards/chosen"], abs_tol=1e-6)


def test_orpo_equals_trl_orpo_trainer():
    from trl.experimental.orpo import ORPOTrainer

    chosen, rejected = mean_logps(8)
    nll = torch.tensor(2.5)
    trainer = stand_in(ORPOTrainer, ("odds_ratio_loss",), beta=0.1,
                       concatenated_forward=policy_forward(chosen, rejected, nll))
    theirs, metrics = ORPOTrainer.get_batch_loss_metrics(trainer, None, {})
    _, chosen_rewards, rejected_rewards, _, _ = trainer.odds_ratio_loss(chosen, rejected)
    ours = orpo_loss(chosen, rejected, nll, beta=0.1)
    close(ours.loss, theirs)
    close(ours.chosen_rewards, chosen_rewards)
    close(ours.rejected_rewards, rejected_rewards)
    # a per-example NLL is averaged
    close(orpo_loss(chosen, rejected, torch.full((B,), 2.5), beta=0.1).loss, theirs)


# --------------------------------------------------------------------------- KTO


@pytest.mark.parametrize(("desirable", "swap"), [
    ([True, False, True, True, False, True], False),
    ([True, False, True, True, False, True], True),  # the roles of the two models swapped: the other KL sign
    ([True] * B, False),  # no undesirable example
])
def test_kto_equals_trl_kto_trainer(models, desirable, swap):
    policy, ref = models[::-1] if swap else models
    batch = token_batch(B, seed=9)
    # trl pairs each prompt with another example's completion for the KL estimate; any other rows do here
    batch |= {f"KL_{k}": v for k, v in token_batch(B, seed=10).items()} | {"label": torch.tensor(desirable)}
    trainer = stand_in(KTOTrainer, ("_compute_kl_logps",), model=policy, ref_model=ref, calculate_KL=True,
                       precompute_ref_logps=False, args=types.SimpleNamespace(gradient_checkpointing_kwargs=None),
                       loss_type="kto", beta=0.1, desirable_weight=1.0, undesirable_weight=1.5)
    with torch.no_grad():
        theirs = KTOTrainer._compute_loss(trainer, policy, batch, return_outputs=False)
    metrics = trainer._metrics["eval"]
    assert (metrics["kl"][0] > 0) != swap  # one order exercises z₀ > 0, the other trl's clamp at 0

    kl = kto_kl_estimate(ours_logps(policy, batch, "KL_"), ours_logps(ref, batch, "KL_"))
    assert math.isclose(kl.item(), metrics["kl"][0], abs_tol=1e-6)
    pi, pi_ref, good = ours_logps(policy, batch), ours_logps(ref, batch), batch["label"]
    ours = kto_loss(pi[good], pi[~good], pi_ref[good], pi_ref[~good], kl, beta=0.1, desirable_weight=1.0,
                    undesirable_weight=1.5)
    close(ours.loss, theirs)
    # KTOTrainer logs the rewards' means only
    assert math.isclose(ours.chosen_rewards.mean().item(), metrics["rewards/chosen"][0], abs_tol=1e-6)
    if not all(desirable):
        assert math.isclose(ours.rejected_rewards.mean().item(), metrics["rewards/rejected"][0], abs_tol=1e-6)
    else:
        assert ours.rejected_rewards.shape == (0,) and "rewards/rejected" not in metrics


def test_kto_kl_is_clamped_and_gets_no_gradient():
    g = torch.Generator().manual_seed(11)
    policy, ref = -20 * torch.rand(B, generator=g), -20 * torch.rand(B, generator=g)
    assert kto_kl_estimate(policy, policy + 1) == 0  # a negative estimate: KL ≥ 0
    close(kto_kl_estimate(policy, ref), (policy - ref).mean().clamp(min=0))
    pi = policy.clone().requires_grad_()
    kl = torch.tensor(0.7, requires_grad=True)
    kto_loss(pi[:3], pi[3:], ref[:3], ref[3:], kl).loss.backward()
    assert kl.grad is None and pi.grad is not None
    clamped = kto_loss(policy[:3], policy[3:], ref[:3], ref[3:], torch.tensor(-0.5)).loss
    close(clamped, kto_loss(policy[:3], policy[3:], ref[:3], ref[3:], torch.tensor(0.0)).loss, atol=0, rtol=0)


# --------------------------------------------------------------------------- reward model


@pytest.mark.parametrize("margin", [False, True])
@pytest.mark.parametrize("center", [None, 0.01])
def test_bradley_terry_equals_trl_reward_trainer(margin, center):
    g = torch.Generator().manual_seed(12)
    chosen, rejected = 2 * torch.randn(B, generator=g), 2 * torch.randn(B, generator=g)
    margins = torch.rand(B, generator=g) if margin else None
    model = lambda **inputs: types.SimpleNamespace(logits=torch.cat([chosen, rejected]).unsqueeze(-1))
    trainer = stand_in(RewardTrainer, model=types.SimpleNamespace(training=True),
                       args=types.SimpleNamespace(center_rewards_coefficient=center))
    inputs = {"attention_mask": torch.ones(2 * B, T, dtype=torch.long)} | ({"margin": margins} if margin else {})
    theirs = RewardTrainer.compute_loss(trainer, model, inputs)
    ours = bradley_terry_loss(chosen, rejected, margin=margins, center_rewards_coefficient=center)
    close(ours.loss, theirs)
    (all_rewards,) = trainer.accelerator.gathered
    close(torch.cat([ours.chosen_rewards, ours.rejected_rewards]), all_rewards.squeeze(-1))
    assert math.isclose((ours.chosen_rewards - ours.rejected_rewards).mean().item(),
                        trainer._metrics["train"]["margin"][0], abs_tol=1e-6)


# --------------------------------------------------------------------------- bad inputs

LOGPS = torch.tensor([-3.0, -4.0, -5.0])  # three sequences' log-probabilities
NAN = torch.tensor([-3.0, float("nan"), -5.0])
EMPTY = LOGPS[:0]
BAD = [
    (lambda: dpo_loss(LOGPS, LOGPS, LOGPS, LOGPS[:2]), r"shapes must match"),
    (lambda: dpo_loss(LOGPS, LOGPS, LOGPS[None], LOGPS), r"ref_chosen must be 1-D"),
    (lambda: dpo_loss(EMPTY, EMPTY, EMPTY, EMPTY), r"the batch is empty"),
    (lambda: dpo_loss(LOGPS, LOGPS, LOGPS, LOGPS, beta=0.0), r"beta must be > 0"),
    (lambda: dpo_loss(LOGPS, LOGPS, LOGPS, LOGPS, loss_type="kto"), r"unknown loss_type 'kto'"),
    (lambda: dpo_loss(LOGPS, LOGPS, LOGPS, LOGPS, label_smoothing=0.5), r"label_smoothing 0.5 must be in \[0, 0.5\)"),
    (lambda: dpo_loss(LOGPS, LOGPS, LOGPS, LOGPS, label_smoothing=-0.1), r"label_smoothing -0.1 must be in \[0, 0.5\)"),
    (lambda: dpo_loss(LOGPS, LOGPS, LOGPS, LOGPS, label_smoothing=0.1, loss_type="hinge"), r"not 'hinge'"),
    (lambda: dpo_loss(LOGPS, LOGPS, LOGPS, NAN), r"ref_rejected contains NaN"),
    (lambda: simpo_loss(LOGPS, NAN), r"policy_rejected contains NaN"),
    (lambda: simpo_loss(LOGPS, LOGPS, beta=-1.0), r"beta must be > 0"),
    (lambda: simpo_loss(LOGPS, LOGPS, gamma_beta_ratio=float("nan")), r"gamma_beta_ratio is NaN"),
    (lambda: simpo_loss(LOGPS, LOGPS, label_smoothing=0.7), r"label_smoothing 0.7"),
    (lambda: orpo_loss(LOGPS, LOGPS, torch.tensor(float("nan"))), r"chosen_nll contains NaN"),
    (lambda: orpo_loss(LOGPS, LOGPS, LOGPS[:2]), r"chosen_nll must be a scalar or of shape \(3,\)"),
    (lambda: orpo_loss(-LOGPS, LOGPS, torch.tensor(1.0)), r"policy_chosen has a positive log-probability"),
    (lambda: orpo_loss(LOGPS, NAN, torch.tensor(1.0)), r"policy_rejected contains NaN"),
    (lambda: kto_loss(LOGPS, LOGPS, LOGPS, LOGPS, torch.tensor(float("nan"))), r"kl is NaN"),
    (lambda: kto_loss(LOGPS, LOGPS, LOGPS, LOGPS, LOGPS), r"kl must be a single value"),
    (lambda: kto_loss(LOGPS, LOGPS[:2], LOGPS, LOGPS, torch.tensor(0.0)), r"shapes must match"),
    (lambda: kto_loss(EMPTY, EMPTY, EMPTY, EMPTY, torch.tensor(0.0)), r"no desirable and no undesirable"),
    (lambda: kto_loss(NAN, LOGPS, LOGPS, LOGPS, torch.tensor(0.0)), r"policy_chosen contains NaN"),
    (lambda: kto_loss(LOGPS, LOGPS, LOGPS, LOGPS, torch.tensor(0.0), undesirable_weight=0.0), r"must be > 0"),
    (lambda: kto_kl_estimate(LOGPS, NAN), r"ref_kl_logps contains NaN"),
    (lambda: bradley_terry_loss(LOGPS, LOGPS, margin=NAN), r"margin contains NaN"),
    (lambda: bradley_terry_loss(LOGPS, LOGPS[:2]), r"shapes must match"),
    (lambda: bradley_terry_loss(LOGPS, LOGPS, center_rewards_coefficient=-1.0), r"coefficient must be >= 0"),
]


@pytest.mark.parametrize(("call", "match"), BAD, ids=[match for _, match in BAD])
def test_bad_inputs_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_result_is_frozen_with_detached_rewards():
    pc = torch.tensor([-3.0, -4.0], requires_grad=True)
    out = dpo_loss(pc, pc.detach() - 1, pc.detach(), pc.detach())
    assert isinstance(out, PreferenceLoss) and out.loss.requires_grad and not out.chosen_rewards.requires_grad
    with pytest.raises(AttributeError):
        out.loss = torch.tensor(0.0)
