"""The small training loop and long-context helpers the attention chapter uses."""

import math
import random

import pytest
import torch

from llmbook.model import DecoderLM, ModelConfig
from llmbook.model import long_context as lc
from llmbook.model.train_small import eval_loss, random_windows
from llmbook.training import train_on_batches
from llmbook.positional import RopeConfig, rope_parameters


class DigitTokenizer:
    """One token per character: enough to build passkey prompts without a trained vocabulary."""

    def encode(self, text: str) -> list[int]:
        return [min(ord(c), 127) for c in text]


def tiny(**changes) -> DecoderLM:
    torch.manual_seed(0)
    return DecoderLM(ModelConfig(vocab_size=128, d_model=32, n_layers=1, n_heads=2, max_seq_len=32, **changes))



def test_train_on_batches_reduces_loss_and_eval_matches_manual():
    # A repeating sequence is learnable in a few dozen steps: loss must drop well below log(V).
    tokens = torch.arange(16).repeat(64)
    model = tiny()
    losses = train_on_batches(model, random_windows(tokens, batch_size=8, seq_len=16, seed=0), steps=40, lr=1e-2)
    assert len(losses) == 40 and losses[-1] < 0.5 * losses[0], f"first {losses[0]:.3f} last {losses[-1]:.3f}"
    loss = eval_loss(model, tokens, seq_len=16, max_windows=4)
    with torch.no_grad():
        x = tokens[:64].view(4, 16)
        manual = model(x, labels=x).loss.item()
    assert abs(loss - manual) < 1e-5, f"eval_loss {loss} vs manual {manual}"


def test_random_windows_and_bad_input():
    batch = next(random_windows(torch.arange(100), batch_size=3, seq_len=10, seed=1))
    assert batch.shape == (3, 10) and bool(((batch[:, 1:] - batch[:, :-1]) == 1).all())  # contiguous windows
    with pytest.raises(ValueError, match="seq_len"):
        next(random_windows(torch.arange(5), batch_size=1, seq_len=10))
    with pytest.raises(ValueError, match="steps"):
        train_on_batches(tiny(), iter([]), steps=0, lr=1e-3)
    with pytest.raises(FloatingPointError, match="lower the learning rate"):
        train_on_batches(tiny(), random_windows(torch.arange(100), batch_size=2, seq_len=8), steps=5, lr=1e9, grad_clip=0)


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


def test_perplexity_vs_length_learned_table_is_nan_past_its_end():
    tokens = torch.randint(0, 128, (512,), generator=torch.Generator().manual_seed(0))
    ppl = lc.perplexity_vs_length(tiny(pos_encoding="learned"), tokens, [32, 64], eval_tokens=128)
    assert math.isfinite(ppl[32]) and math.isnan(ppl[64])
    ppl = lc.perplexity_vs_length(tiny(pos_encoding="alibi"), tokens, [32, 64], eval_tokens=128)
    assert all(math.isfinite(v) for v in ppl.values())


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
            nxt = torch.cat((ids[:, 1:], ids[:, :1]), dim=1)
            return type("Out", (), {"logits": torch.nn.functional.one_hot(nxt, 128).float()})()

    assert lc.passkey_accuracy(Oracle(), tok, 100, trials=5) == {"key": 1.0, "token": 1.0}
    with pytest.raises(ValueError, match="too short"):
        lc.passkey_example(tok, 20, rng=random.Random(0))
    batch = next(lc.mixed_batches(iter([torch.zeros(4, 80, dtype=torch.long)]), lc.passkey_batches(tok, batch_size=4, seq_len=80), 0.5))
    assert batch.shape == (4, 80) and bool((batch[2:] == 0).all()) and bool((batch[:2] != 0).any())
