"""llmbook.alignment.trl_runs: trl.DPOTrainer fed our token ids reproduces train_preference(method="dpo").

A tiny seeded Llama (vocabulary 64, 2 blocks, width 32), a 64-word word-level tokenizer (trl wants a
tokenizer object for its pad token; it never tokenises here), 4 pairs of random ids of different lengths,
4 full-batch steps at lr 1e-2 (large enough that the loss moves well away from log 2). Both loops then
run the same fp32 operations on the same batch; what differs is the order of sums: trl computes the
log-probabilities through its chunked fused LM head, its sampler permutes the rows of the full batch, and
the Adam states inherit those rounding differences. That is ~1e-7 of loss per step here (6e-8 seen);
TOL = 1e-5 leaves room for other CPUs and thread counts and is still far below what a different setting
does (beta 0.1 vs 0.2 moves step 2's loss by ~1e-2: the negative test).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from tokenizers import Tokenizer, models
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from llmbook.alignment.preference import (
    EncodedPair,
    encode_pair,
    frozen_copy,
    pair_batch,
    reference_logps,
    train_preference,
)
from llmbook.training.finetune import IGNORE

pytest.importorskip("trl")

from llmbook.alignment.trl_runs import TrlDpoRun, trl_dpo_run, trl_dpo_train  # noqa: E402

VOCAB, PAD, EOS = 64, 0, 1
STEPS, LR, BETA, SEED = 4, 1e-2, 0.1, 0
TOL = 1e-5  # summation order only (see the module docstring)

Runs = tuple[LlamaForCausalLM, list[EncodedPair], list[float], TrlDpoRun]  # model, pairs, our losses, trl's run


def word_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {f"t{i}": i for i in range(VOCAB)}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t2")),
                                   pad_token="t0", eos_token="t1", unk_token="t2", bos_token="t3")


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, pad_token_id=PAD, eos_token_id=EOS,
                         bos_token_id=3)
    return LlamaForCausalLM(config).eval()


def make_pairs(n: int = 4) -> list[EncodedPair]:
    g = torch.Generator().manual_seed(1)

    def ids(k: int) -> list[int]:
        return torch.randint(4, VOCAB, (k,), generator=g).tolist()

    # prompts and answers of different lengths, so the batch is padded and the rows are told apart
    return [encode_pair(ids(3 + i), ids(2 + i) + [EOS], ids(4 - i) + [EOS], max_len=64) for i in range(n)]


def ours(model: LlamaForCausalLM, pairs: list[EncodedPair], *, beta: float = BETA) -> list[float]:
    ref = reference_logps(frozen_copy(model), pairs, pad_id=PAD)
    return train_preference(copy.deepcopy(model), pairs, method="dpo", ref=ref, pad_id=PAD, steps=STEPS,
                            batch_size=len(pairs), lr=LR, beta=beta, seed=SEED).losses


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    model, pairs = tiny_llama(), make_pairs()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trl_run = trl_dpo_train(model, word_tokenizer(), pairs, steps=STEPS, batch_size=len(pairs), lr=LR, beta=BETA,
                            seed=SEED, output_dir=tmp_path_factory.mktemp("trl"))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "trl must train a copy, not the caller's model"
    return model, pairs, ours(model, pairs), trl_run


def test_losses_equal_trl_step_by_step(runs: Runs) -> None:
    _, _, our_losses, trl_run = runs
    assert len(our_losses) == len(trl_run.losses) == STEPS
    assert our_losses[0] == pytest.approx(math.log(2), abs=1e-6)  # policy == reference: margin 0
    assert trl_run.losses[0] == pytest.approx(math.log(2), abs=1e-6)
    assert our_losses[-1] < math.log(2) - 0.1  # the run trains: equality is not that of two constants
    diffs = [abs(a - b) for a, b in zip(our_losses, trl_run.losses)]
    assert max(diffs) < TOL, diffs


def test_trl_trains_on_our_token_ids(runs: Runs) -> None:
    """Every batch trl fed the model is our pair_batch (chosen rows over rejected rows), up to the order of
    the pairs: the same ids, padding, attention mask, and loss positions (completion_mask == our labels)."""
    _, pairs, _, trl_run = runs
    ref = pair_batch(pairs, PAD)
    ref_mask = (ref["labels"] != IGNORE).long()

    def rows(input_ids: torch.Tensor, attention: torch.Tensor, scored: torch.Tensor) -> list[tuple]:
        """One entry per pair: its (chosen, rejected) rows as tuples; sorted, so order does not matter."""
        half = len(input_ids) // 2
        each = [(input_ids[i].tolist(), attention[i].tolist(), scored[i].tolist()) for i in range(len(input_ids))]
        return sorted(zip(map(str, each[:half]), map(str, each[half:])))

    expected = rows(ref["input_ids"], ref["attention_mask"], ref_mask)
    assert len(trl_run.batches) == STEPS
    for fed in trl_run.batches:
        assert fed["input_ids"].shape == ref["input_ids"].shape
        assert rows(fed["input_ids"], fed["attention_mask"], fed["completion_mask"]) == expected


def test_comparison_detects_a_different_beta(runs: Runs) -> None:
    """The check can fail: our loop at beta 0.2 starts at log 2 too, then leaves trl's beta-0.1 losses."""
    model, pairs, _, trl_run = runs
    other = ours(model, pairs, beta=2 * BETA)
    assert other[0] == pytest.approx(trl_run.losses[0], abs=TOL)
    assert max(abs(a - b) for a, b in zip(other[1:], trl_run.losses[1:])) > 100 * TOL


def test_timing_and_metrics_are_reported(runs: Runs) -> None:
    _, _, _, trl_run = runs
    assert trl_run.seconds_per_step > 0 and trl_run.tokens_per_second > 0
    assert trl_run.reward_accuracy[0] == 0.0 and trl_run.margins[0] == 0.0  # no preference before any update
    assert trl_run.margins[-1] > 0


def test_full_batch_is_required(tmp_path) -> None:
    pairs = make_pairs()
    with pytest.raises(ValueError, match="full-batch"):
        trl_dpo_run(tiny_llama(), word_tokenizer(), pairs, steps=2, batch_size=2, lr=LR, beta=BETA, seed=SEED,
                    output_dir=tmp_path)
