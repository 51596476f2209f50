"""Long context: RoPE rescaling, perplexity against context length, passkey prompts, batches and accuracy."""

import math
import random

import pytest
import torch

from llmbook.model import DecoderLM, ModelConfig, seeded_model
from llmbook.positional import RopeConfig, rope_parameters
from llmbook.training import long_context as lc


class DigitTokenizer:
    """One token per character: enough to build passkey prompts without a trained vocabulary."""

    def encode(self, text: str) -> list[int]:
        return [min(ord(c), 127) for c in text]


def tiny(**changes) -> DecoderLM:
    torch.manual_seed(0)
    return DecoderLM(ModelConfig(vocab_size=128, d_model=32, n_layers=1, n_heads=2, max_seq_len=32, **changes))


def test_with_rope_swaps_frequencies_keeps_weights():
    model = tiny()
    pi = lc.with_rope(model, RopeConfig(scaling="linear", factor=4.0))
    expected = rope_parameters(16, RopeConfig())[0] / 4
    assert torch.allclose(pi.rotary.inv_freq, expected), (pi.rotary.inv_freq - expected).abs().max()
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), pi.state_dict().values()))
    x = torch.randint(0, 128, (1, 8))
    with torch.no_grad():
        assert (lc.with_rope(model, RopeConfig())(x).logits - model(x).logits).abs().max() == 0
        assert (pi(x).logits - model(x).logits).abs().max() > 1e-4  # different positions -> different logits
    with pytest.raises(ValueError, match="pos_encoding"):
        lc.with_rope(tiny(pos_encoding="alibi"), RopeConfig())


def test_perplexity_vs_length_is_exp_of_the_window_mean_and_nan_past_a_learned_table():
    tokens = torch.randint(0, 128, (512,), generator=torch.Generator().manual_seed(0))
    model = tiny(pos_encoding="learned").train()
    ppl = lc.perplexity_vs_length(model, tokens, [16, 32, 64], eval_tokens=128, batch_size=3)
    assert model.training and math.isnan(ppl[64])  # no position vector for positions >= 32
    for t in (16, 32):  # by hand: eval_tokens // t non-overlapping windows, each scored from its own start
        x = tokens[: (128 // t) * t].view(-1, t)  # (n, T)
        with torch.no_grad():
            logp = model.eval()(x).logits.log_softmax(-1)  # (n, T, V)
        model.train()
        nll = -logp[:, :-1].gather(-1, x[:, 1:, None]).mean()
        assert abs(math.log(ppl[t]) - nll.item()) < 1e-6, f"T={t}: log ppl {math.log(ppl[t])} vs hand {nll.item()}"
    ppl = lc.perplexity_vs_length(tiny(pos_encoding="alibi"), tokens, [32, 64], eval_tokens=128)
    assert all(math.isfinite(v) for v in ppl.values())
    assert lc.max_context(tiny(pos_encoding="learned")) == 32 and lc.max_context(tiny()) is None


def test_passkey_prompt_layout_and_accuracy():
    tok = DigitTokenizer()
    ids, start, n = lc.passkey_example(tok, 120, n_digits=5, depth=0.5, rng=random.Random(0))
    assert len(ids) == 120 and n == 6  # " " + 5 digits, one token each
    key = "".join(chr(i) for i in ids[start + 1 :])
    text = "".join(chr(i) for i in ids)
    assert text.count(f"The pass key is {key}.") == 1 and text.endswith(f"The pass key is {key}")

    class Oracle(torch.nn.Module):
        """Predicts the true next token everywhere: accuracy must be exactly 1."""

        def __init__(self) -> None:
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(1))

        def forward(self, ids):
            assert not self.training  # scored in eval mode
            nxt = torch.cat((ids[:, 1:], ids[:, :1]), dim=1)
            return type("Out", (), {"logits": torch.nn.functional.one_hot(nxt, 128).float()})()

    oracle = Oracle().train()
    assert lc.passkey_accuracy(oracle, tok, 100, trials=5) == {"key": 1.0, "token": 1.0}
    assert oracle.training  # the caller's mode comes back
    with pytest.raises(ValueError, match="too short"):
        lc.passkey_example(tok, 20, rng=random.Random(0))
    text = iter([torch.zeros(4, 80, dtype=torch.long)])
    batch = next(lc.mixed_batches(text, lc.passkey_batches(tok, batch_size=4, seq_len=80), 0.5))
    assert batch.shape == (4, 80) and bool((batch[2:] == 0).all()) and bool((batch[:2] != 0).any())



def test_passkey_training_batches_mix_the_stated_share() -> None:
    tokens = torch.arange(1000) % 97
    batches = lc.passkey_training_batches(tokens, DigitTokenizer(), seq_len=96, batch_size=8, passkey_fraction=0.25,
                                          seed=1)
    batch = next(batches)
    assert batch.shape == (8, 96)
    windows = [row for row in batch.tolist() if all((b - a) % 97 == 1 for a, b in zip(row, row[1:]))]
    assert len(windows) == 6  # 2 of 8 rows are passkey prompts, the rest consecutive windows of `tokens`


def test_seeded_model_starts_from_the_same_weights() -> None:
    cfg = ModelConfig(vocab_size=100, d_model=32, n_layers=1, n_heads=4)
    a, b, c = seeded_model(cfg, seed=3), seeded_model(cfg, seed=3), seeded_model(cfg, seed=4)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.lm_head.weight, c.lm_head.weight)
