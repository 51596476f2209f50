"""llmbook.alignment.ppo: the value model's layout and RLHF's PPO loop on a tiny seeded Llama.

PPO's tensor pieces (GAE, the clipped losses, the KL controllers) are tested in tests/test_alignment_rl.py;
here the loop must use them so that a reward is learned, the critic fits and beta follows the KL.
"""

from __future__ import annotations

import copy

import pytest
import torch

from llmbook.alignment.grpo import checker, completion_token_logps
from llmbook.alignment.ppo import ValueModel, train_ppo, values_of_completion
from llmbook.alignment.rl import AdaptiveKLController, FixedKLController
from llmbook.evaluation.tasks import TaskExample
from test_alignment_training import PAD, PROMPTS, ToyTokenizer, tiny_llama

LIKED = "QRSTUVWXYZ"  # 10 of the 64 tokens: a reward most first answers already earn a little of
EXAMPLES = [TaskExample(prompt=str(i), answer=LIKED) for i in range(2 * len(PROMPTS))]
likes_letters = checker(lambda text, example: sum(ch in example.answer for ch in text) / max(len(text), 1))


def run_ppo(kl, steps: int = 12, scorer=likes_letters, **overrides):
    policy = tiny_llama(seed=1)
    settings = dict(steps=steps, prompts_per_step=8, max_new_tokens=6, lr=1e-2, value_lr=1e-2, seed=0, kl=kl)
    return train_ppo(policy, ValueModel(policy), copy.deepcopy(policy), ToyTokenizer(), PROMPTS * 2, EXAMPLES, scorer,
                     **{**settings, **overrides})


def test_values_are_read_at_the_position_that_predicts_each_token():
    value_model = ValueModel(tiny_llama()).eval()
    prompts, completions = [[5, 6, 7], [8], [10, 11, 12, 13]], [[20, 21], [30, 31, 32, 33], [40]]
    got = values_of_completion(value_model, prompts, completions, pad_id=PAD)
    _, mask = completion_token_logps(tiny_llama(), prompts, completions, pad_id=PAD)
    assert got.shape == mask.shape
    with torch.no_grad():
        for row, (p, c) in enumerate(zip(prompts, completions)):
            hidden = value_model.decoder(input_ids=torch.tensor([p + c])).last_hidden_state[0]  # unpadded, alone
            want = value_model.head(hidden[len(p) - 1:len(p) + len(c) - 1]).squeeze(-1)  # V(s_k) predicts token k
            assert torch.allclose(got[row, :len(c)], want, atol=1e-5)
            assert (got[row, len(c):] == 0).all()


def test_ppo_raises_the_score_and_fits_the_values():
    run = run_ppo(FixedKLController(0.05))
    assert sum(run.scores[-3:]) > 1.5 * sum(run.scores[:3])
    assert sum(run.value_losses[-3:]) < 0.1 * sum(run.value_losses[:3])
    assert run.betas == [0.05] * 12  # a fixed coefficient never moves
    assert run.kl[0] == pytest.approx(0.0, abs=1e-6) and max(run.kl) > 0.1  # starts at the reference, drifts


def test_adaptive_kl_raises_beta_when_the_policy_drifts_past_its_target():
    controller = AdaptiveKLController(0.05, target=1e-3, horizon=16)
    run = run_ppo(controller)
    assert run.betas[1] < run.betas[0]  # the first batch has KL 0 < target: beta falls
    assert controller.beta > run.betas[-1] > 1.5 * run.betas[0]


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="8 prompts for 3 examples"):
        train_ppo(tiny_llama(), ValueModel(tiny_llama()), tiny_llama(), ToyTokenizer(), PROMPTS * 2, EXAMPLES[:3],
                  likes_letters, steps=1, prompts_per_step=2, max_new_tokens=2, lr=1e-3, value_lr=1e-3, seed=0,
                  kl=FixedKLController(0.1))
    with pytest.raises(ValueError, match="prompts_per_step=9 > 8"):
        run_ppo(FixedKLController(0.1), steps=1, prompts_per_step=9)
    with pytest.raises(ValueError, match="ppo_epochs must be >= 1"):
        run_ppo(FixedKLController(0.1), steps=1, ppo_epochs=0)

    def half_nan(rollouts, examples):
        return [float("nan") if i % 2 else 1.0 for i in range(len(examples))]

    with pytest.raises(ValueError, match="4 of 8 scores are NaN"):
        run_ppo(FixedKLController(0.1), steps=1, max_new_tokens=2, scorer=half_nan)
