"""Decoding vs transformers: greedy and beam tokens from generate(), logit filters from its processors."""

from __future__ import annotations

import pytest
import torch

from llmbook.decoding import (
    SamplingConfig,
    apply_temperature,
    beam_search,
    greedy,
    min_p_filter,
    process_logits,
    repetition_penalty,
    sample,
    top_k_filter,
    top_p_filter,
)
from llmbook.model import DecoderLM, ModelConfig, to_hf

T0, NEW = 5, 10


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    # init_std 0.2: peaked next-token distributions, so no near-ties between the two implementations' logits
    ours = DecoderLM(ModelConfig(vocab_size=97, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, init_std=0.2)).eval()
    return ours, to_hf(ours)


def hf_generate(hf, x, **kw):
    return hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=NEW, do_sample=False, **kw)


def assert_same(ours: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    assert ours.shape == ref.shape and torch.equal(ours, ref), f"{what}:\nours {ours.tolist()}\nhf   {ref.tolist()}"


def test_greedy_matches_generate(models) -> None:
    ours, hf = models
    x = torch.randint(3, 97, (4, T0), generator=torch.Generator().manual_seed(1))
    assert_same(greedy(ours, x, NEW), hf_generate(hf, x, eos_token_id=None, pad_token_id=0), "greedy")
    eos = int(greedy(ours, x, NEW)[1, T0 + 2])  # a token row 1 emits early, so that row stops and is padded
    out = greedy(ours, x, NEW, eos_token_id=eos, pad_token_id=0)
    assert_same(out, hf_generate(hf, x, eos_token_id=eos, pad_token_id=0), "greedy with eos")
    assert (out[1, T0 + 3 :] == 0).all()


def test_greedy_with_and_without_cache_and_eos_padding(models) -> None:
    ours, _ = models
    x = torch.randint(3, 97, (4, T0), generator=torch.Generator().manual_seed(2))
    cached = greedy(ours, x, NEW)
    assert torch.equal(cached, greedy(ours, x, NEW, use_cache=False))  # the cache changes the cost, not the tokens
    eos = int(cached[0, T0 + 1])
    out = greedy(ours, x, NEW, eos_token_id=eos)  # no pad_token_id: finished rows keep emitting EOS
    assert (out[0, T0 + 1 :] == eos).all()
    assert torch.equal(out, greedy(ours, x, NEW, eos_token_id=eos, use_cache=False))
    with pytest.raises(ValueError, match="max_new_tokens"):
        greedy(ours, x, 0)


def test_decoders_run_in_eval_mode_and_restore_the_mode() -> None:
    torch.manual_seed(0)
    model = DecoderLM(ModelConfig(vocab_size=97, d_model=64, n_layers=2, n_heads=4, init_std=0.2, dropout=0.5))
    x = torch.randint(3, 97, (2, T0), generator=torch.Generator().manual_seed(3))
    reference = {"greedy": greedy(model.eval(), x, NEW), "beam": beam_search(model, x, NEW, num_beams=2)}
    model.train()  # dropout 0.5 would change the tokens if decoding ran in training mode
    for name, out in (("greedy", greedy(model, x, NEW)), ("beam", beam_search(model, x, NEW, num_beams=2))):
        assert torch.equal(out, reference[name]), name
        assert model.training, f"{name} left the model in eval mode"
    sample(model, x, 3, generator=torch.Generator().manual_seed(0))
    assert model.training


@pytest.mark.parametrize("early_stopping", [False, True, "never"])
def test_beam_matches_generate(models, early_stopping) -> None:
    ours, hf = models
    stopped_early = 0
    for seed in range(3 if early_stopping is False else 2):  # HF's default gets the most prompts
        x = torch.randint(3, 97, (3, T0), generator=torch.Generator().manual_seed(seed))
        out = beam_search(ours, x, NEW, num_beams=3, early_stopping=early_stopping)
        ref = hf_generate(hf, x, num_beams=3, length_penalty=1.0, early_stopping=early_stopping, eos_token_id=None,
                          pad_token_id=0)
        assert_same(out, ref, f"beam seed={seed}")
        eos_choices = greedy(ours, x, 3)[:, T0 + 1].tolist()  # EOS tokens that do come up early
        for eos in eos_choices:
            out = beam_search(ours, x, NEW, num_beams=3, eos_token_id=eos, pad_token_id=1,
                              early_stopping=early_stopping)
            ref = hf_generate(hf, x, num_beams=3, early_stopping=early_stopping, eos_token_id=eos, pad_token_id=1)
            assert_same(out, ref, f"beam seed={seed} eos={eos}")
            stopped_early += int(out.shape[1] < T0 + NEW) + int((out == 1).any())
    if early_stopping is False:
        assert stopped_early > 0  # some hypotheses did finish on EOS before max length


def test_beam_differs_from_greedy_and_beats_it(models) -> None:
    ours, _ = models
    x = torch.randint(3, 97, (8, T0), generator=torch.Generator().manual_seed(5))
    g, bm = greedy(ours, x, 6), beam_search(ours, x, 6, num_beams=3)

    def logprob(seq: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            lp = ours(seq).logits[:, T0 - 1 : -1].log_softmax(-1)
        return lp.gather(-1, seq[:, T0:, None]).sum(dim=(1, 2))

    assert not torch.equal(g, bm)
    # not guaranteed row by row (the greedy path can be pruned), but on average beam finds likelier text
    assert logprob(bm).sum() > logprob(g).sum()


def _logits() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 50, generator=g) * 3
    logits[0, :10] = logits[0, 10]  # ties, including around the cut-off
    logits[1] = (logits[1] * 2).round() / 2
    context = torch.randint(0, 50, (4, 7), generator=g)
    return logits, context


def assert_processed_equal(ours: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    inf_o, inf_r = torch.isneginf(ours), torch.isneginf(ref)
    assert torch.equal(inf_o, inf_r), f"{what}: -inf positions differ ({int((inf_o != inf_r).sum())})"
    d = (ours[~inf_o] - ref[~inf_r]).abs().max().item()
    assert d < 1e-6, f"{what}: max_abs_diff={d:.3e}"


@pytest.mark.parametrize("k", [1, 5, 12, 50])
def test_top_k_matches_hf(k: int) -> None:
    from transformers import TopKLogitsWarper

    logits, ctx = _logits()
    ours = top_k_filter(logits, k)
    assert_processed_equal(ours, TopKLogitsWarper(k)(ctx, logits.clone()), f"top_k={k}")
    if k == 5:
        assert torch.isneginf(ours).any()


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9, 0.99])
def test_top_p_matches_hf(p: float) -> None:
    from transformers import TopPLogitsWarper

    logits, ctx = _logits()
    for keep in (1, 3):
        ref = TopPLogitsWarper(p, min_tokens_to_keep=keep)(ctx, logits.clone())
        assert_processed_equal(top_p_filter(logits, p, keep), ref, f"top_p={p} keep={keep}")


@pytest.mark.parametrize("min_p", [0.01, 0.1, 0.5])
def test_min_p_matches_hf(min_p: float) -> None:
    from transformers import MinPLogitsWarper

    logits, ctx = _logits()
    for keep in (1, 4):
        ref = MinPLogitsWarper(min_p, min_tokens_to_keep=keep)(ctx, logits.clone())
        assert_processed_equal(min_p_filter(logits, min_p, keep), ref, f"min_p={min_p} keep={keep}")


def test_temperature_and_repetition_penalty_match_hf() -> None:
    from transformers import RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper

    logits, ctx = _logits()
    for t in (0.3, 1.7):
        assert_processed_equal(apply_temperature(logits, t), TemperatureLogitsWarper(t)(ctx, logits.clone()), f"T={t}")
    for pen in (1.3, 0.8):
        ref = RepetitionPenaltyLogitsProcessor(pen)(ctx, logits.clone())
        ours = repetition_penalty(logits, ctx, pen)
        assert_processed_equal(ours, ref, f"repetition_penalty={pen}")
        assert not torch.equal(ours, logits)


def test_process_logits_chain_matches_hf_order() -> None:
    from transformers import (
        LogitsProcessorList,
        MinPLogitsWarper,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    logits, ctx = _logits()
    cfg = SamplingConfig(temperature=0.7, top_k=20, top_p=0.9, min_p=0.05, repetition_penalty=1.2)
    chain = LogitsProcessorList(
        [
            RepetitionPenaltyLogitsProcessor(1.2),
            TemperatureLogitsWarper(0.7),
            TopKLogitsWarper(20),
            TopPLogitsWarper(0.9),
            MinPLogitsWarper(0.05),
        ]
    )
    assert_processed_equal(process_logits(logits, ctx, cfg), chain(ctx, logits.clone()), "chain")


def test_sampling_is_seeded_and_respects_filters(models) -> None:
    ours, _ = models
    x = torch.randint(3, 97, (2, T0), generator=torch.Generator().manual_seed(2))
    cfg = SamplingConfig(temperature=1.5, top_k=3)
    a = sample(ours, x, 8, cfg=cfg, generator=torch.Generator().manual_seed(0))
    b = sample(ours, x, 8, cfg=cfg, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    # top_k=1 sampling is greedy
    one = sample(ours, x, 8, cfg=SamplingConfig(top_k=1), generator=torch.Generator().manual_seed(3))
    assert torch.equal(one, greedy(ours, x, 8))


def test_bad_arguments() -> None:
    logits, ctx = _logits()
    with pytest.raises(ValueError, match="top_p"):
        top_p_filter(logits, 1.5)
    with pytest.raises(ValueError, match="temperature"):
        apply_temperature(logits, 0.0)
