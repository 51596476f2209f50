"""Gradient accumulation, loss scaling, packed loader and window samplers, evaluation, the ablation trainer."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from llmbook.model import DecoderLM, ModelConfig
from llmbook.training import (
    AdamW,
    DynamicLossScaler,
    LoaderConfig,
    PackedLoader,
    accumulate_gradients,
    bits_per_byte,
    disjoint_windows,
    document_mask,
    document_positions,
    eval_windows,
    evaluate,
    pack_documents,
    param_groups,
    random_windows,
    train_on_batches,
    train_step,
)


def tiny_model(seed: int = 0) -> DecoderLM:
    torch.manual_seed(seed)
    return DecoderLM(ModelConfig(vocab_size=50, d_model=32, n_layers=2, n_heads=4))


def grads(model: DecoderLM) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters()]


def test_accumulation_equals_big_batch() -> None:
    torch.manual_seed(1)
    x = torch.randint(0, 50, (4, 16))
    labels = x.clone()
    labels[0, :5] = -100  # unequal token counts per micro-batch: weights n_i / n matter
    big, acc = tiny_model(), tiny_model()
    loss_big, n_big = accumulate_gradients(big, [{"input_ids": x, "labels": labels}])
    micro = [{"input_ids": x[i : i + 1], "labels": labels[i : i + 1]} for i in range(4)]
    loss_acc, n_acc = accumulate_gradients(acc, micro)
    assert n_big == n_acc == 4 * 15 - 4
    assert abs(loss_big - loss_acc) < 1e-6, f"loss {loss_big} vs {loss_acc}"
    d = max((a - b).abs().max().item() for a, b in zip(grads(big), grads(acc)))
    assert d < 1e-6, f"grad max_abs_diff={d:.3e}"
    # naive mean of micro-batch means is NOT the big-batch gradient when counts differ
    naive = tiny_model()
    for m in micro:
        (naive(m["input_ids"], labels=m["labels"]).loss / 4).backward()
    d_naive = max((a - b).abs().max().item() for a, b in zip(grads(big), grads(naive)))
    assert d_naive > 1e-5, f"naive averaging unexpectedly matched ({d_naive:.3e})"


def test_loss_scaler_matches_gradscaler_on_scripted_overflows() -> None:
    overflow = [False, True, False, False, False, True, True, False, False, False, False, False, False]
    p_ref = torch.nn.Parameter(torch.ones(4))
    p_ours = torch.nn.Parameter(torch.ones(4))
    ref = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=3)
    ours = DynamicLossScaler(scale_value=1024.0, growth_interval=3)
    opt_ref = torch.optim.SGD([p_ref], lr=0.01)
    opt_ours = torch.optim.SGD([p_ours], lr=0.01)
    scales = []
    for i, bad in enumerate(overflow):
        ref.scale((p_ref * 2).sum()).backward()
        ours.scale((p_ours * 2).sum()).backward()
        if bad:
            p_ref.grad[0] = float("inf")
            p_ours.grad[0] = float("inf")
        ref.step(opt_ref)
        ref.update()
        found = ours.unscale_([p_ours])
        if not found:
            opt_ours.step()
        ours.update(found)
        assert found == bad
        assert ours.scale_value == ref.get_scale(), f"step {i}: {ours.scale_value} vs {ref.get_scale()}"
        assert torch.equal(p_ours.detach(), p_ref.detach()), f"step {i}: params differ"
        opt_ref.zero_grad()
        opt_ours.zero_grad()
        scales.append(ours.scale_value)
    # hand trace: halve on overflow, double after 3 clean steps in a row
    assert scales == [1024, 512, 512, 512, 1024, 512, 256, 256, 256, 512, 512, 512, 1024], scales


def test_pack_and_document_positions() -> None:
    eos = 0
    toks = pack_documents([[5, 6, 7], [8, 9], [3]], eos)
    assert toks.tolist() == [5, 6, 7, 0, 8, 9, 0, 3, 0]
    x = torch.tensor([toks[:8].tolist()])
    assert document_positions(x, eos).tolist() == [[0, 1, 2, 3, 0, 1, 2, 0]]
    m = document_mask(x, eos)[0, 0]
    assert m.shape == (8, 8) and bool(m[4, 3]) is False and bool(m[3, 0]) and bool(m[5, 4]) and not bool(m[4, 5])


def test_reset_positions_reach_the_model() -> None:
    model = tiny_model()
    toks = pack_documents([[5, 6, 7, 8, 9], [10, 11, 12]], 0)[:8]
    x = torch.tensor(toks[None].astype(np.int64))
    pos = document_positions(x, 0)
    with torch.no_grad():
        plain = model(x).logits
        reset = model(x, position_ids=pos).logits
    # the first document (positions unchanged) is identical; the second attends with shifted relative positions
    d_first = (plain[:, :6] - reset[:, :6]).abs().max().item()
    d_second = (plain[:, 6:] - reset[:, 6:]).abs().max().item()
    assert d_first < 1e-6, f"first document changed: max_abs_diff={d_first:.3e}"
    assert d_second > 1e-6, f"second document unchanged: max_abs_diff={d_second:.3e}"


def test_loader_deterministic_and_resumable() -> None:
    tokens = np.arange(1000, dtype=np.int32) % 97
    cfg = LoaderConfig(seq_len=16, batch_size=4, seed=3)
    a = PackedLoader(tokens, cfg)
    seq_a = [next(a)["input_ids"] for _ in range(40)]  # crosses epochs: 62 windows -> 15 batches per epoch
    b = PackedLoader(tokens, cfg)
    for _ in range(17):
        next(b)
    state = b.state_dict()
    c = PackedLoader(tokens, cfg)
    c.load_state_dict(state)
    seq_c = [next(c)["input_ids"] for _ in range(23)]
    assert all(torch.equal(p, q) for p, q in zip(seq_a[17:], seq_c))
    other_seed = next(iter(PackedLoader(tokens, LoaderConfig(seq_len=16, batch_size=4, seed=4))))
    assert not torch.equal(seq_a[0], other_seed["input_ids"])
    # within an epoch every window appears once
    starts = {int(row[0]) for batch in seq_a[:15] for row in batch}
    assert len([r for batch in seq_a[:15] for r in batch]) == 60 and len(starts) > 1
    with pytest.raises(ValueError, match="batch_size"):
        PackedLoader(tokens[:20], cfg)


def test_eval_windows_score_every_token_once() -> None:
    tokens = np.arange(50) % 13
    scored = sum(int((b["labels"][:, 1:] != -100).sum()) for b in eval_windows(tokens, seq_len=8, batch_size=3))
    assert scored == len(tokens) - 1


def test_bits_per_byte_and_evaluate() -> None:
    assert math.isclose(bits_per_byte(math.log(2), 10, 10), 1.0)
    assert math.isclose(bits_per_byte(2.0, 100, 400), 2.0 * 100 / (400 * math.log(2)))
    model = tiny_model()
    tokens = np.random.default_rng(0).integers(0, 50, 300)
    res = evaluate(model, eval_windows(tokens, 32, 4), n_bytes=600)
    # reference: plain per-window means weighted by the window's scored tokens
    nll, n = 0.0, 0
    with torch.no_grad():
        for b in eval_windows(tokens, 32, 4):
            k = int(b["labels"][:, 1:].numel())
            nll += model(b["input_ids"], labels=b["labels"]).loss.item() * k
            n += k
    assert n == res.n_tokens == 299
    assert abs(res.loss - nll / n) < 1e-6
    assert abs(res.loss - math.log(50)) < 0.2  # an untrained model is near uniform
    assert math.isclose(res.bpb, res.loss * 299 / (600 * math.log(2)))


def test_disjoint_windows_evaluate_equals_hand_computation() -> None:
    """Each window scored from its own start; the mean is over every scored token (the number chapter 2 quotes)."""
    model = tiny_model().train()
    tokens = torch.randint(0, 50, (70,), generator=torch.Generator().manual_seed(3))
    batches = list(disjoint_windows(tokens, 16, 3, max_windows=4))  # windows [0,16) .. [48,64); 64..69 dropped
    assert [b["input_ids"].shape for b in batches] == [(3, 16), (1, 16)]
    assert torch.equal(torch.cat([b["input_ids"] for b in batches]), tokens[:64].view(4, 16))
    res = evaluate(model, iter(batches))
    assert model.training  # evaluate ran in eval mode and gave the mode back
    with torch.no_grad():
        x = tokens[:64].view(4, 16)  # (B, T)
        logp = model.eval()(x).logits.log_softmax(-1)  # (B, T, V)
        nll = -logp[:, :-1].gather(-1, x[:, 1:, None]).squeeze(-1)  # (B, T-1): token t+1 from the window's prefix
    assert res.n_tokens == 4 * 15
    assert abs(res.loss - nll.mean().item()) < 1e-6, f"evaluate {res.loss} vs hand {nll.mean().item()}"
    # the batch size only changes the summation order: the same number to float rounding
    all_at_once = evaluate(model, disjoint_windows(tokens.numpy(), 16, 8, max_windows=4)).loss
    assert abs(all_at_once - res.loss) < 1e-6
    assert evaluate(model, disjoint_windows(tokens, 16)).n_tokens == 4 * 15  # 70 // 16 = 4 windows
    with pytest.raises(ValueError, match="shorter than one window"):
        disjoint_windows(tokens[:10], 16)
    with pytest.raises(ValueError, match="1-D"):
        disjoint_windows(tokens.view(7, 10), 4)


def test_evaluate_restores_mode_when_the_model_raises() -> None:
    model = tiny_model().train()
    bad = {"input_ids": torch.full((1, 4), 99), "labels": torch.full((1, 4), 99)}  # token ids past the vocabulary
    with pytest.raises(IndexError):
        evaluate(model, [bad])
    assert model.training


def test_random_windows_are_contiguous_and_seeded() -> None:
    batch = next(random_windows(torch.arange(100), batch_size=3, seq_len=10, seed=1))
    assert batch.shape == (3, 10) and bool(((batch[:, 1:] - batch[:, :-1]) == 1).all())  # contiguous windows
    again = next(random_windows(np.arange(100), batch_size=3, seq_len=10, seed=1))
    other = next(random_windows(torch.arange(100), batch_size=3, seq_len=10, seed=2))
    assert torch.equal(batch, again) and not torch.equal(batch, other)
    with pytest.raises(ValueError, match="seq_len"):
        next(random_windows(torch.arange(5), batch_size=1, seq_len=10))


def test_train_on_batches_learns_and_guards() -> None:
    # A repeating sequence is learnable in a few dozen steps: loss must drop well below log(V).
    tokens = torch.arange(16).repeat(64)
    torch.manual_seed(0)
    model = DecoderLM(ModelConfig(vocab_size=128, d_model=32, n_layers=1, n_heads=2, max_seq_len=32))
    losses = train_on_batches(model, random_windows(tokens, batch_size=8, seq_len=16, seed=0), steps=40, lr=1e-2)
    assert len(losses) == 40 and losses[-1] < 0.5 * losses[0], f"first {losses[0]:.3f} last {losses[-1]:.3f}"
    assert not model.training  # documented: left in eval mode
    assert evaluate(model, disjoint_windows(tokens, 16, max_windows=4)).loss < 0.5 * math.log(128)
    with pytest.raises(ValueError, match="steps"):
        train_on_batches(model, iter([]), steps=0, lr=1e-3)
    with pytest.raises(FloatingPointError, match="lower the learning rate"):
        batches = random_windows(torch.arange(100), batch_size=2, seq_len=8)
        train_on_batches(model, batches, steps=5, lr=1e9, grad_clip=0)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_step_tracks_fp32(precision: str) -> None:
    """Autocast paths run (CPU autocast here; bf16 on GPU in practice) and stay close to the fp32 step."""
    x = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(0))
    losses = {}
    for prec in ("fp32", precision):
        model = tiny_model()
        opt = AdamW(param_groups(model, 0.1), lr=1e-3)
        scaler = DynamicLossScaler(scale_value=2.0**10) if prec == "fp16" else None
        out = train_step(model, opt, [{"input_ids": x, "labels": x}], precision=prec, scaler=scaler)  # type: ignore[arg-type]
        losses[prec] = out["loss"]
        assert out["skipped"] == 0.0 and math.isfinite(out["grad_norm"])
    assert abs(losses[precision] - losses["fp32"]) < 0.05, losses


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_bf16_training_on_gpu() -> None:
    model = tiny_model().cuda()
    opt = AdamW(param_groups(model, 0.1), lr=3e-3)
    x = torch.randint(0, 50, (4, 32), generator=torch.Generator().manual_seed(0))
    losses = [train_step(model, opt, [{"input_ids": x, "labels": x}], precision="bf16")["loss"] for _ in range(20)]
    assert losses[-1] < losses[0] - 0.5, losses


def test_micro_batch_without_scored_tokens_adds_nothing() -> None:
    x = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(2))
    empty = {"input_ids": x[:1], "labels": torch.full_like(x[:1], -100)}  # e.g. a padded row
    scored = {"input_ids": x[1:], "labels": x[1:].clone()}
    with_empty, alone = tiny_model(), tiny_model()
    loss_with_empty, n = accumulate_gradients(with_empty, [empty, scored])
    loss_alone, _ = accumulate_gradients(alone, [scored])
    assert n == 15 and math.isfinite(loss_with_empty), loss_with_empty
    assert abs(loss_with_empty - loss_alone) < 1e-6, (loss_with_empty, loss_alone)
    d = max((a - b).abs().max().item() for a, b in zip(grads(with_empty), grads(alone)))
    assert d < 1e-6, f"grad max_abs_diff={d:.3e}"
