"""PPO pieces against hand-derived numbers; GRPO and RLOO against trl 1.16's own trainer methods."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llmbook.alignment.rl import (
    AdaptiveKLController,
    FixedKLController,
    gae,
    group_advantages,
    grpo_loss,
    kl_per_token,
    kl_shaped_rewards,
    masked_mean,
    masked_whiten,
    ppo_policy_loss,
    ppo_value_loss,
    rloo_advantages,
)

# --------------------------------------------------------------------------- GAE


def test_gae_by_hand() -> None:
    rewards = torch.tensor([[0.5, 0.0, -0.2, 1.0]])
    values = torch.tensor([[0.4, 0.3, 0.1, 0.6]])
    adv, ret = gae(rewards, values, torch.ones(1, 4), gamma=0.9, lam=0.5)
    # delta_t = r_t + 0.9 V_{t+1} - V_t, with V_4 = 0:
    #   delta_3 = 1.0 + 0 - 0.6 = 0.4;        delta_2 = -0.2 + 0.9*0.6 - 0.1 = 0.24
    #   delta_1 = 0 + 0.9*0.1 - 0.3 = -0.21;  delta_0 = 0.5 + 0.9*0.3 - 0.4 = 0.37
    # A_t = delta_t + (0.9*0.5) A_{t+1}:
    #   A_3 = 0.4;  A_2 = 0.24 + 0.45*0.4 = 0.42;  A_1 = -0.21 + 0.45*0.42 = -0.021
    #   A_0 = 0.37 + 0.45*(-0.021) = 0.36055
    torch.testing.assert_close(adv, torch.tensor([[0.36055, -0.021, 0.42, 0.4]]))
    torch.testing.assert_close(ret, torch.tensor([[0.76055, 0.279, 0.52, 1.0]]))  # A + V


def test_gae_lambda_one_is_reward_to_go_minus_value() -> None:
    g = torch.Generator().manual_seed(0)
    rewards, values = torch.randn(3, 6, generator=g), torch.randn(3, 6, generator=g)
    adv, ret = gae(rewards, values, torch.ones(3, 6), gamma=1.0, lam=1.0)
    reward_to_go = rewards.flip(1).cumsum(1).flip(1)
    torch.testing.assert_close(adv, reward_to_go - values)
    torch.testing.assert_close(ret, reward_to_go)


def test_gae_skips_padding() -> None:
    g = torch.Generator().manual_seed(1)
    rewards, values = torch.randn(1, 3, generator=g), torch.randn(1, 3, generator=g)
    compact, compact_ret = gae(rewards, values, torch.ones(1, 3), gamma=0.9, lam=0.8)
    # Right padding, left padding and a hole: garbage at masked positions must change nothing.
    for where in ([3, 4], [0, 1], [1, 3]):
        keep = [i for i in range(5) if i not in where]
        r, v = torch.full((1, 5), 9.0), torch.full((1, 5), -7.0)
        r[:, keep], v[:, keep] = rewards, values
        mask = torch.zeros(1, 5)
        mask[:, keep] = 1
        adv, ret = gae(r, v, mask.bool(), gamma=0.9, lam=0.8)
        torch.testing.assert_close(adv[:, keep], compact)
        torch.testing.assert_close(ret[:, keep], compact_ret)
        assert adv[:, where].eq(0).all() and ret[:, where].eq(0).all()


def test_masked_mean_and_whiten() -> None:
    x = torch.tensor([[1.0, 2.0, 100.0], [3.0, 4.0, 5.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert masked_mean(x, mask).item() == pytest.approx(15 / 5)
    torch.testing.assert_close(masked_mean(x, mask, dim=1), torch.tensor([1.5, 4.0]))
    white = masked_whiten(x, mask)
    valid = white[mask.bool()]
    assert valid.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert valid.std().item() == pytest.approx(1.0, abs=1e-6)  # unbiased std, as the variance used
    assert white[0, 2] == 0
    kept = masked_whiten(x, mask, shift_mean=False)[mask.bool()]
    assert kept.mean().item() == pytest.approx(3.0)
    torch.testing.assert_close(kept - 3.0, valid)


# --------------------------------------------------------------------------- PPO losses


def _clip_cases() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # ratios 1.1, 1.5, 1.5, 0.5, 0.5 and a padded 9.0; advantages +1, +1, -1, -1, +1 (and +1 on padding)
    ratio = torch.tensor([[1.1, 1.5, 1.5, 0.5, 0.5, 9.0]])
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0, 1.0, 1.0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0]])
    return ratio, adv, mask


def test_ppo_policy_loss_picks_the_pessimistic_branch() -> None:
    ratio, adv, mask = _clip_cases()
    old = torch.zeros_like(ratio)
    logps = ratio.log().requires_grad_()
    loss, clip_fraction = ppo_policy_loss(logps, old, adv, mask, clip_eps=0.2)
    # per-token loss = max(-A*rho, -A*clip(rho, 0.8, 1.2)):
    #   rho 1.1, A>0: inside            -> -1.1
    #   rho 1.5, A>0: max(-1.5, -1.2)   -> -1.2 (clipped: no more credit past 1.2)
    #   rho 1.5, A<0: max(1.5, 1.2)     ->  1.5 (unclipped: the penalty is never capped)
    #   rho 0.5, A<0: max(0.5, 0.8)     ->  0.8 (clipped)
    #   rho 0.5, A>0: max(-0.5, -0.8)   -> -0.5 (unclipped)
    # mean = (-1.1 - 1.2 + 1.5 + 0.8 - 0.5) / 5 = -0.1; clipped 2 of 5
    assert loss.item() == pytest.approx(-0.1)
    assert clip_fraction.item() == pytest.approx(0.4)
    (grad,) = torch.autograd.grad(loss, logps)
    # d/dlogp of -A*rho/5 is -A*rho/5 where unclipped, 0 where clipped or padded
    torch.testing.assert_close(grad, torch.tensor([[-1.1 / 5, 0.0, 1.5 / 5, 0.0, -0.5 / 5, 0.0]]))


def test_ppo_policy_loss_clip_higher() -> None:
    ratio, adv, mask = _clip_cases()
    loss, clip_fraction = ppo_policy_loss(ratio.log(), torch.zeros_like(ratio), adv, mask, clip_eps_high=0.6)
    # upper bound 1.6: the rho = 1.5, A > 0 token is no longer clipped -> -1.5 instead of -1.2
    assert loss.item() == pytest.approx((-1.1 - 1.5 + 1.5 + 0.8 - 0.5) / 5)
    assert clip_fraction.item() == pytest.approx(0.2)


def test_ppo_value_loss_by_hand() -> None:
    old = torch.ones(1, 3)
    returns = torch.full((1, 3), 2.0)
    values = torch.tensor([[1.1, 1.5, 0.5]])
    loss, clip_fraction = ppo_value_loss(values, old, returns, torch.ones(1, 3), clip=0.2)
    # V 1.1: within 0.2 of V_old        -> 0.5 * (1.1-2)^2 = 0.405
    # V 1.5: clipped to 1.2, max((1.5-2)^2 = 0.25, (1.2-2)^2 = 0.64) -> 0.5 * 0.64 = 0.32 (clipped)
    # V 0.5: clipped to 0.8, max((0.5-2)^2 = 2.25, (0.8-2)^2 = 1.44) -> 0.5 * 2.25 = 1.125
    assert loss.item() == pytest.approx((0.405 + 0.32 + 1.125) / 3)
    assert clip_fraction.item() == pytest.approx(1 / 3)


def test_kl_estimators_on_known_numbers() -> None:
    logps = torch.log(torch.tensor([0.5, 0.25]))
    ref = torch.log(torch.tensor([0.25, 0.5]))
    ln2 = math.log(2)
    # log r = ref - logp = [-ln 2, ln 2]
    torch.testing.assert_close(kl_per_token(logps, ref, "k1"), torch.tensor([ln2, -ln2]))
    torch.testing.assert_close(kl_per_token(logps, ref, "k2"), torch.tensor([ln2**2 / 2, ln2**2 / 2]))
    # k3 = r - 1 - log r: 0.5 - 1 + ln 2 and 2 - 1 - ln 2
    torch.testing.assert_close(kl_per_token(logps, ref, "k3"), torch.tensor([ln2 - 0.5, 1 - ln2]))


def test_k1_and_k3_are_unbiased() -> None:
    g = torch.Generator().manual_seed(2)
    p = torch.randn(10, generator=g).log_softmax(0)  # policy
    q = torch.randn(10, generator=g).log_softmax(0)  # reference
    exact = (p.exp() * (p - q)).sum()
    for kind in ("k1", "k3"):  # E_{x~p}[k(x)] = KL(p || q) exactly
        assert (p.exp() * kl_per_token(p, q, kind)).sum().item() == pytest.approx(exact.item(), abs=1e-6)
    assert (p.exp() * kl_per_token(p, q, "k2")).sum().item() != pytest.approx(exact.item(), abs=1e-3)


@settings(max_examples=200, deadline=None)
@given(st.floats(-30, 0), st.floats(-30, 0))
def test_k3_is_never_negative(logp: float, ref: float) -> None:
    # exp(r) - r - 1 >= 0 exactly; in float32 it rounds to about -6e-8 for r within an ulp of 0
    assert kl_per_token(torch.tensor([logp]), torch.tensor([ref]), "k3").item() >= -1e-6


def test_kl_shaped_rewards_by_hand() -> None:
    logps = torch.tensor([[-1.0, -2.0, -5.0], [-1.0, -1.0, -1.0]])
    ref = torch.tensor([[-1.5, -1.0, 0.0], [-1.0, -2.0, -0.5]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    rewards = kl_shaped_rewards(torch.tensor([1.0, -2.0]), logps, ref, mask, beta=0.1)
    # k1 = logp - ref: row 0 [0.5, -1.0, pad], row 1 [0, 1.0, -0.5]; reward = -0.1 * k1 (+ score at the end)
    expected = torch.tensor([[-0.05, 0.1 + 1.0, 0.0], [0.0, -0.1, 0.05 - 2.0]])
    torch.testing.assert_close(rewards, expected)


def test_kl_controllers() -> None:
    fixed = FixedKLController(0.1)
    fixed.update(100.0, 256)
    assert fixed.beta == 0.1
    up = AdaptiveKLController(0.2, target=6.0, horizon=10_000)
    up.update(9.0, 256)  # error 9/6 - 1 = 0.5, clipped to 0.2: beta * (1 + 0.2 * 256 / 10000)
    assert up.beta == pytest.approx(0.2 * 1.00512)
    down = AdaptiveKLController(0.2, target=6.0, horizon=10_000)
    down.update(5.7, 256)  # error 5.7/6 - 1 = -0.05: beta * (1 - 0.05 * 256 / 10000)
    assert down.beta == pytest.approx(0.2 * 0.99872)
    floor = AdaptiveKLController(0.2, target=6.0, horizon=10_000)
    floor.update(0.0, 256)  # error -1 clipped to -0.2
    assert floor.beta == pytest.approx(0.2 * 0.99488)


# --------------------------------------------------------------------------- trl's GRPO and RLOO trainers

GROUP = 4


@pytest.fixture(scope="module")
def trainers(tmp_path_factory: pytest.TempPathFactory):
    """A GRPOTrainer and an RLOOTrainer on a seeded 1-layer Llama (vocab 64) with a word-level tokenizer."""
    from datasets import Dataset
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    vocab = {"<pad>": 0, "<eos>": 1, **{f"w{i}": i + 2 for i in range(62)}}
    word_level = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    word_level.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=word_level, pad_token="<pad>", eos_token="<eos>")

    def tiny(seed: int) -> LlamaForCausalLM:
        torch.manual_seed(seed)
        return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                            num_attention_heads=2, num_key_value_heads=1, pad_token_id=0,
                                            eos_token_id=1))

    def reward(completions: list, r: list[float], **_) -> list[float]:
        return list(r)  # each input row carries its own reward: trl's reward plumbing, our numbers

    common = dict(per_device_train_batch_size=2 * GROUP, num_generations=GROUP, max_completion_length=4,
                  report_to="none", use_cpu=True, beta=0.0)
    dataset = Dataset.from_dict({"prompt": ["w1 w2 w3", "w4 w5"]})
    grpo = GRPOTrainer(model=tiny(0), reward_funcs=reward, train_dataset=dataset, processing_class=tokenizer,
                       args=GRPOConfig(output_dir=str(tmp_path_factory.mktemp("grpo")), **common))
    rloo = RLOOTrainer(model=tiny(1), reward_funcs=reward, train_dataset=dataset, processing_class=tokenizer,
                       args=RLOOConfig(output_dir=str(tmp_path_factory.mktemp("rloo")), **common))
    grpo.current_gradient_accumulation_steps = 1  # set by Trainer's loop, which we do not run
    return grpo, rloo


def _rollout_advantages(trainer, rewards: torch.Tensor) -> torch.Tensor:
    """Run the trainer's generate-and-score step on 2 prompts x GROUP completions with these rewards."""
    prompts = ["w1 w2 w3"] * GROUP + ["w4 w5"] * GROUP
    inputs = [{"prompt": p, "r": r} for p, r in zip(prompts, rewards.tolist(), strict=True)]
    return trainer._generate_and_score_completions(inputs)["advantages"]


# The second group's std (~5e-4) is close to the 1e-4 added to it, so its eps convention shows.
REWARDS = torch.tensor([0.3, -1.2, 2.0, 0.7, 1.0, 1.0, 1.0, 1.001])


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_group_advantages_match_trl(trainers, scale: str) -> None:
    grpo, _ = trainers
    grpo.scale_rewards = scale
    expected = _rollout_advantages(grpo, REWARDS)
    torch.testing.assert_close(group_advantages(REWARDS, GROUP, scale_rewards=scale), expected, atol=1e-6, rtol=0)


def test_rloo_advantages_match_trl(trainers) -> None:
    _, rloo = trainers
    expected = _rollout_advantages(rloo, REWARDS)
    torch.testing.assert_close(rloo_advantages(REWARDS, GROUP), expected, atol=1e-6, rtol=0)
    grouped = REWARDS.view(-1, GROUP)  # G / (G - 1) times the GRPO "none" advantage
    torch.testing.assert_close(rloo_advantages(REWARDS, GROUP), (grouped - grouped.mean(1, keepdim=True)).flatten()
                               * GROUP / (GROUP - 1))


def _loss_inputs(trainer, on_policy: bool) -> tuple[dict, torch.Tensor]:
    """A batch in the format `_generate_and_score_completions` returns, and trl's per-token log-probs for it."""
    g = torch.Generator().manual_seed(3)
    n, t = 2 * GROUP, 6
    lengths = torch.tensor([6, 4, 1, 5, 6, 2, 3, 6])
    completion_mask = (torch.arange(t) < lengths[:, None]).long()
    inputs = {
        "prompt_ids": torch.randint(2, 64, (n, 3), generator=g),
        "prompt_mask": torch.ones(n, 3, dtype=torch.long),
        "completion_ids": torch.randint(2, 64, (n, t), generator=g) * completion_mask,
        "completion_mask": completion_mask,
        "advantages": group_advantages(torch.randn(n, generator=g), GROUP),
        "num_items_in_batch": completion_mask.sum() * 3,  # as if this were 1 of 3 micro-batches
    }
    with torch.no_grad():
        logps = trainer._get_per_token_logps_and_entropies(
            trainer.model, torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1),
            torch.cat([inputs["prompt_mask"], completion_mask], 1), t)[0]
    # Shifts of +-0.4 nat put ratios on both sides of 0.8, 1.2 and 1.28.
    if not on_policy:
        inputs["old_per_token_logps"] = logps + 0.4 * (2 * torch.rand(n, t, generator=g) - 1)
    inputs["ref_per_token_logps"] = logps + 0.4 * (2 * torch.rand(n, t, generator=g) - 1)
    return inputs, logps


@pytest.mark.parametrize("on_policy", [False, True])
@pytest.mark.parametrize("epsilon_high", [0.2, 0.28])
@pytest.mark.parametrize(("beta", "correct_kl"), [(0.0, True), (0.04, True), (0.04, False)])
@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dapo", "dr_grpo"])
def test_grpo_loss_matches_trl(trainers, loss_type: str, beta: float, correct_kl: bool, epsilon_high: float,
                               on_policy: bool) -> None:
    grpo, _ = trainers
    grpo.loss_type, grpo.beta, grpo.epsilon_low, grpo.epsilon_high = loss_type, beta, 0.2, epsilon_high
    grpo.args.use_bias_correction_kl = correct_kl  # trl's default is True
    grpo.max_completion_length = 8  # wider than the batch, so dr_grpo's constant differs from T
    model = grpo.model
    params = [p for p in model.parameters() if p.requires_grad]
    inputs, _ = _loss_inputs(grpo, on_policy)

    expected = grpo._compute_loss(model, inputs)
    expected_grads = torch.autograd.grad(expected, params)
    metrics = {key: values[-1] for key, values in grpo._metrics["train"].items()}

    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
    attention = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1)
    logps = grpo._get_per_token_logps_and_entropies(model, ids, attention, ids.shape[1] - 3)[0]
    loss, stats = grpo_loss(
        logps, inputs.get("old_per_token_logps"), inputs["ref_per_token_logps"], inputs["advantages"],
        inputs["completion_mask"], beta=beta, epsilon_low=0.2, epsilon_high=epsilon_high, loss_type=loss_type,
        max_completion_length=8 if loss_type == "dr_grpo" else None,
        num_items_in_batch=int(inputs["num_items_in_batch"]) if loss_type == "dapo" else None,
        use_bias_correction_kl=correct_kl,
    )
    grads = torch.autograd.grad(loss, params)

    torch.testing.assert_close(loss, expected, atol=1e-6, rtol=0)
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad, atol=1e-6, rtol=1e-5)
    assert stats["clip_ratio_low"].item() == pytest.approx(metrics["clip_ratio/low_mean"], abs=1e-6)
    assert stats["clip_ratio_high"].item() == pytest.approx(metrics["clip_ratio/high_mean"], abs=1e-6)
    assert stats["clip_ratio"].item() == pytest.approx(metrics["clip_ratio/region_mean"], abs=1e-6)
    if beta:
        assert stats["kl"].item() == pytest.approx(metrics["kl"], abs=1e-6)
    else:
        assert "kl" not in stats
    if not on_policy:  # the shifted old log-probs must actually trigger clipping on both sides
        assert stats["clip_ratio_low"] > 0 and stats["clip_ratio_high"] > 0


# --------------------------------------------------------------------------- bad inputs


def test_advantages_reject_bad_groups() -> None:
    rewards = torch.arange(8.0)
    with pytest.raises(ValueError, match="group_size 3 does not divide the 8 rewards"):
        group_advantages(rewards, 3)
    with pytest.raises(ValueError, match="group_size must be >= 2"):
        rloo_advantages(rewards, 1)
    with pytest.raises(ValueError, match=r"rewards must have shape \(N,\)"):
        group_advantages(rewards.view(2, 4), 4)
    with pytest.raises(ValueError, match="scale_rewards must be"):
        group_advantages(rewards, 4, scale_rewards="std")
    rewards[[1, 6]] = float("nan")
    with pytest.raises(ValueError, match="2 of 8 rewards are NaN"):
        group_advantages(rewards, 4)
    with pytest.raises(ValueError, match="2 of 8 rewards are NaN"):
        rloo_advantages(rewards, 4)


def test_grpo_loss_rejects_bad_inputs() -> None:
    logps, mask, adv = torch.zeros(4, 3), torch.ones(4, 3), torch.zeros(4)
    with pytest.raises(ValueError, match="loss_type must be one of"):
        grpo_loss(logps, None, None, adv, mask, loss_type="ppo")
    with pytest.raises(ValueError, match="needs max_completion_length"):
        grpo_loss(logps, None, None, adv, mask, loss_type="dr_grpo")
    with pytest.raises(ValueError, match="a completion has 3 tokens > max_completion_length=2"):
        grpo_loss(logps, None, None, adv, mask, loss_type="dr_grpo", max_completion_length=2)
    with pytest.raises(ValueError, match="beta > 0 needs ref_logps"):
        grpo_loss(logps, None, None, adv, mask, beta=0.04)
    with pytest.raises(ValueError, match=r"advantages must have shape \(4,\)"):
        grpo_loss(logps, None, None, adv[:3], mask)
    with pytest.raises(ValueError, match="expected \\(B, T\\) tensors of one shape"):
        grpo_loss(logps, torch.zeros(4, 2), None, adv, mask)
    with pytest.raises(ValueError, match="num_items_in_batch only applies to loss_type='dapo'"):
        grpo_loss(logps, None, None, adv, mask, loss_type="bnpo", num_items_in_batch=12)


def test_ppo_pieces_reject_bad_inputs() -> None:
    x, mask = torch.zeros(2, 3), torch.ones(2, 3)
    with pytest.raises(ValueError, match="expected \\(B, T\\) tensors of one shape"):
        gae(x, torch.zeros(2, 4), mask)
    with pytest.raises(ValueError, match="need 0 < clip_eps < 1"):
        ppo_policy_loss(x, x, x, mask, clip_eps=1.5)
    with pytest.raises(ValueError, match="value clip must be > 0"):
        ppo_value_loss(x, x, x, mask, clip=0.0)
    with pytest.raises(ValueError, match="kind must be 'k1', 'k2' or 'k3'"):
        kl_per_token(x, x, "k4")
    with pytest.raises(ValueError, match=r"rows \[1\] have no completion token"):
        kl_shaped_rewards(torch.zeros(2), x, x, torch.tensor([[1, 0, 0], [0, 0, 0]]), beta=0.1)
    with pytest.raises(ValueError, match=r"scores must have shape \(2,\)"):
        kl_shaped_rewards(torch.zeros(3), x, x, mask)
    with pytest.raises(ValueError, match="masked_whiten needs at least 2 unmasked values"):
        masked_whiten(x, torch.tensor([[1, 0, 0], [0, 0, 0]]))
    with pytest.raises(ValueError, match="init_beta, target and horizon must be > 0"):
        AdaptiveKLController(0.1, target=0.0, horizon=10_000)
