"""llmbook.alignment's loops: rollouts, answer log-probabilities, preference training, reward model, GRPO.

The model is a tiny seeded Llama (2 blocks, width 32, vocabulary 64) with a stand-in tokenizer, so
every test runs in seconds; the losses themselves are checked against trl in
tests/test_alignment_preference_losses.py and tests/test_alignment_rl.py.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from llmbook.alignment.evaluate import kl_to_reference
from llmbook.alignment.grpo import checker, completion_token_logps, train_grpo
from llmbook.alignment.logprobs import sequence_logps
from llmbook.alignment.preference import (
    METHODS,
    completion_logps,
    encode_pair,
    pair_batch,
    reference_logps,
    train_preference,
)
from llmbook.alignment.reward_model import RewardModel, pairwise_accuracy, train_reward_model
from llmbook.alignment.rollouts import generate, left_pad
from llmbook.evaluation.tasks import TaskExample

VOCAB, EOS, PAD = 64, 1, 0


class ToyTokenizer:
    """Token i is the character chr(65 + i); enough of a tokenizer for the loops under test."""

    eos_token_id, pad_token_id = EOS, PAD

    def batch_decode(self, rows, skip_special_tokens=True):
        return ["".join(chr(65 + t) for t in row if not (skip_special_tokens and t in (EOS, PAD))) for row in rows]


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         eos_token_id=EOS, pad_token_id=PAD)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def model() -> LlamaForCausalLM:
    return tiny_llama()


PROMPTS = [[5, 6, 7], [8, 9], [10, 11, 12, 13, 14], [15]]


def test_greedy_rollouts_equal_hf_generate(model):
    ours = generate(model, ToyTokenizer(), PROMPTS, max_new_tokens=12, do_sample=False, batch_size=3)
    ids, mask = left_pad(PROMPTS, PAD)
    ref = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=12,
                         eos_token_id=EOS, pad_token_id=PAD)[:, ids.shape[1]:].tolist()
    for got, want in zip(ours.completion_ids, ref):
        cut = want.index(EOS) + 1 if EOS in want else len(want)
        assert got == want[:cut]
    assert ours.texts == ToyTokenizer().batch_decode(ours.completion_ids)


def test_rollouts_stop_at_eos_and_report_it():
    model = tiny_llama()
    model.lm_head = torch.nn.Linear(32, VOCAB)  # EOS always on top: every row must stop at once
    with torch.no_grad():
        model.lm_head.weight.zero_()
        model.lm_head.bias.zero_()[EOS] = 10.0
    out = generate(model, ToyTokenizer(), PROMPTS, max_new_tokens=5, do_sample=False)
    assert out.completion_ids == [[EOS]] * len(PROMPTS) and all(out.finished)


def test_seeded_sampling_repeats():
    model = tiny_llama()
    a = generate(model, ToyTokenizer(), PROMPTS, max_new_tokens=6, generator=torch.Generator().manual_seed(3))
    b = generate(model, ToyTokenizer(), PROMPTS, max_new_tokens=6, generator=torch.Generator().manual_seed(3))
    assert a.completion_ids == b.completion_ids


def pairs():
    return [encode_pair([5 + i, 6, 7], [20, 21, EOS], [30 + i, 31, 32, EOS], max_len=16) for i in range(6)]


def test_answer_logps_equal_full_logits(model):
    batch = pair_batch(pairs(), PAD)
    summed, mean = completion_logps(model, batch)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert torch.allclose(summed, sequence_logps(logits, batch["labels"]), atol=1e-5)
    assert torch.allclose(mean, sequence_logps(logits, batch["labels"], average=True), atol=1e-5)
    prompts = [p.prompt_ids for p in pairs()]
    answers = [p.rejected_ids for p in pairs()]
    token, mask = completion_token_logps(model, prompts, answers, pad_id=PAD)
    assert torch.allclose((token * mask).sum(1), summed[6:], atol=1e-5)
    assert mask.sum(1).tolist() == [4.0] * 6


def test_chapter_config_lists_every_method():
    from llmbook.book.profiles.post_training import PREFERENCE_METHODS

    assert PREFERENCE_METHODS == METHODS


def test_bad_pairs_raise():
    with pytest.raises(ValueError, match="identical"):
        encode_pair([5], [6, EOS], [6, EOS], max_len=8)
    with pytest.raises(ValueError, match="max_len"):
        encode_pair([5] * 8, [6, EOS], [7, EOS], max_len=8)
    with pytest.raises(ValueError, match="unknown preference method"):
        train_preference(tiny_llama(), pairs(), method="ppo", ref=None, pad_id=PAD, steps=1, batch_size=2,
                         lr=1e-3, beta=0.1, seed=0)


def test_dpo_starts_at_log2_and_learns_the_preference():
    policy, data = tiny_llama(), pairs()
    ref = reference_logps(policy, data, pad_id=PAD)
    run = train_preference(policy, data, method="dpo", ref=ref, pad_id=PAD, steps=12, batch_size=6, lr=3e-3,
                           beta=0.5, seed=0)
    assert run.losses[0] == pytest.approx(math.log(2), abs=1e-5)  # policy == reference: sigma(0)
    assert run.losses[-1] < 0.3 and run.reward_accuracy[-1] == 1.0


@pytest.mark.parametrize("method", [m for m in METHODS if m != "dpo"])
def test_every_method_moves_towards_chosen(method):
    policy, data = tiny_llama(), pairs()
    ref = reference_logps(policy, data, pad_id=PAD)
    before = completion_logps(policy, pair_batch(data, PAD))[1].detach()
    train_preference(policy, data, method=method, ref=ref, pad_id=PAD, steps=8, batch_size=6, lr=3e-3,
                     beta=2.0 if method == "simpo" else 0.5, seed=0)
    after = completion_logps(policy, pair_batch(data, PAD))[1].detach()
    gap_before = (before[:6] - before[6:]).mean()
    gap_after = (after[:6] - after[6:]).mean()
    assert gap_after > gap_before + 0.2  # chosen answers gained on rejected ones (nats per token)


def test_reward_model_learns_a_preference_and_generalises():
    torch.manual_seed(0)
    train = [encode_pair([5 + i % 9, 6], [20 + i % 7, 40, EOS], [20 + i % 7, 50, EOS], max_len=16)
             for i in range(24)]
    test = [encode_pair([15, 16, 17], [30, 40, EOS], [30, 50, EOS], max_len=16)]
    model = RewardModel(tiny_llama())
    assert model(torch.tensor([[5, 6, 7]]), torch.ones(1, 3, dtype=torch.long)).shape == (1,)
    run = train_reward_model(model, train, pad_id=PAD, steps=30, batch_size=8, lr=3e-3, seed=0)
    assert run.losses[-1] < run.losses[0]
    assert all(pairwise_accuracy(model, test, pad_id=PAD))


def test_grpo_raises_a_checkable_reward_and_counts_broken_rewards():
    policy = tiny_llama(seed=1)
    reference = copy.deepcopy(policy)
    examples = [TaskExample(prompt=str(i), answer="V") for i in range(4)]
    likes_v = checker(lambda text, example: text.count(example.answer) / max(len(text), 1))
    run = train_grpo(policy, ToyTokenizer(), PROMPTS, examples, likes_v, steps=12, prompts_per_step=2,
                     group_size=4, max_new_tokens=6, lr=1e-2, seed=0, beta=0.04, reference=reference)
    assert sum(run.rewards[-4:]) > sum(run.rewards[:4])
    assert run.kl[-1] > 0
    # a Monte-Carlo estimate: enough samples that a drifted policy's KL shows above the noise
    assert kl_to_reference(policy, reference, ToyTokenizer(), PROMPTS * 16, max_new_tokens=6, seed=0) > 0
    assert kl_to_reference(reference, reference, ToyTokenizer(), PROMPTS, max_new_tokens=6, seed=0) == 0

    def broken(text, example):
        raise RuntimeError("checker crashed")

    counted = checker(broken)
    run = train_grpo(tiny_llama(), ToyTokenizer(), PROMPTS, examples, counted, steps=1, prompts_per_step=2,
                     group_size=2, max_new_tokens=3, lr=1e-3, seed=0)
    assert counted.skipped == 4 and run.flat_groups == [1.0]
