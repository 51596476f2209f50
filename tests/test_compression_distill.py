"""Distillation losses vs trl's GKD and torch's kl_div; the training loop on a 2-block SmolLM2 teacher."""

from __future__ import annotations

import dataclasses
import math
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from llmbook.compression.distill import (
    DistillConfig,
    distillation_loss,
    forward_kl,
    generalized_jsd,
    hidden_mse,
    hidden_projection,
    reverse_kl,
    small_student,
    train_student,
    window_starts,
)
from llmbook.training.data import random_windows

TOL = 1e-6


def _diff(a: torch.Tensor, b: torch.Tensor | float) -> float:
    return float((torch.as_tensor(a) - torch.as_tensor(b)).detach().abs().max())


@pytest.fixture(scope="module")
def logits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Seeded (B, T, V) = (2, 5, 11) student and teacher logits and a (B, T) mask with 3 padded positions."""
    gen = torch.Generator().manual_seed(0)
    student = 2.0 * torch.randn(2, 5, 11, generator=gen)
    teacher = 2.0 * torch.randn(2, 5, 11, generator=gen)
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[0, 3:] = False
    mask[1, 4] = False
    return student, teacher, mask


@pytest.fixture(scope="module")
def trl_jsd():
    """trl's GKD loss (a dependency: a missing trl fails the test, it does not skip it)."""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # trl warns on every import of trl.experimental
    from trl.experimental.gkd import GKDTrainer

    return GKDTrainer.generalized_jsd_loss


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_generalized_jsd_matches_trl(logits, trl_jsd, beta, temperature):
    student, teacher, mask = logits
    labels = torch.where(mask, 1, -100)  # trl masks positions whose label is -100
    theirs = trl_jsd(student, teacher, labels=labels, beta=beta, temperature=temperature) * temperature**2
    ours = generalized_jsd(student, teacher, mask, beta=beta, temperature=temperature)
    assert _diff(ours, theirs) < TOL, f"beta={beta} tau={temperature}: max_abs_diff={_diff(ours, theirs)}"
    assert float(ours) > 1e-3  # different distributions: the divergence is not trivially zero


def test_jsd_endpoints_are_forward_and_reverse_kl(logits, trl_jsd):
    """trl's convention: beta=0 is KL(teacher || student), beta=1 is KL(student || teacher), and both are the
    limits of the mixture formula scaled by 1/beta and 1/(1 - beta)."""
    student, teacher, mask = logits[0].double(), logits[1].double(), logits[2]
    fkl, rkl = forward_kl(student, teacher, mask), reverse_kl(student, teacher, mask)
    assert _diff(generalized_jsd(student, teacher, mask, beta=0.0), fkl) < TOL
    assert _diff(generalized_jsd(student, teacher, mask, beta=1.0), rkl) < TOL
    assert abs(float(fkl - rkl)) > 1e-2, "test logits must tell the two directions apart"
    labels = torch.where(mask, 1, -100)
    assert _diff(trl_jsd(student, teacher, labels=labels, beta=0.0), fkl) < TOL
    assert _diff(trl_jsd(student, teacher, labels=labels, beta=1.0), rkl) < TOL
    eps = 1e-7  # the error of the limit is O(beta * chi^2 / KL): ~1e-4 here
    near0 = generalized_jsd(student, teacher, mask, beta=eps) / eps
    near1 = generalized_jsd(student, teacher, mask, beta=1 - eps) / eps
    assert abs(float(near0 / fkl) - 1) < 1e-3, f"JSD(beta)/beta -> forward KL: {float(near0)} vs {float(fkl)}"
    assert abs(float(near1 / rkl) - 1) < 1e-3, f"JSD(beta)/(1-beta) -> reverse KL: {float(near1)} vs {float(rkl)}"


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_kls_match_torch_kl_div(logits, temperature):
    student, teacher, mask = logits
    s, t = student[mask] / temperature, teacher[mask] / temperature  # scored rows (N, V)
    ref_fwd = F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="batchmean")
    ref_rev = F.kl_div(F.log_softmax(t, -1), F.log_softmax(s, -1), log_target=True, reduction="batchmean")
    fwd = forward_kl(student, teacher, mask, temperature=temperature)
    rev = reverse_kl(student, teacher, mask, temperature=temperature)
    assert _diff(fwd, ref_fwd * temperature**2) < TOL, f"forward max_abs_diff={_diff(fwd, ref_fwd * temperature**2)}"
    assert _diff(rev, ref_rev * temperature**2) < TOL, f"reverse max_abs_diff={_diff(rev, ref_rev * temperature**2)}"
    full = F.kl_div(
        F.log_softmax(student.flatten(0, 1), -1),
        F.log_softmax(teacher.flatten(0, 1), -1),
        log_target=True,
        reduction="batchmean",
    )  # no mask: mean over all B*T tokens
    assert _diff(forward_kl(student, teacher), full) < TOL


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd"])
def test_zero_at_teacher_and_finite_gradients(logits, kind):
    student, teacher, mask = logits
    same = distillation_loss(kind, teacher.clone(), teacher, mask, temperature=2.0, beta=0.3)
    assert abs(float(same)) < TOL, f"{kind}(teacher, teacher) = {float(same)}"
    s = student.clone().requires_grad_(True)
    distillation_loss(kind, s, teacher, mask, temperature=2.0, beta=0.3).backward()
    assert torch.isfinite(s.grad).all()
    assert float(s.grad[~mask].abs().max()) == 0.0, "masked positions must get no gradient"
    assert float(s.grad[mask].abs().max()) > 1e-4, "scored positions must get a gradient"
    s = teacher.clone().requires_grad_(True)
    distillation_loss(kind, s, teacher, mask, beta=0.3).backward()
    assert float(s.grad.abs().max()) < 1e-6, "the divergence is minimal at the teacher: zero gradient"


def test_hidden_mse_matches_mse_loss():
    gen = torch.Generator().manual_seed(1)
    hs, ht = torch.randn(2, 5, 8, generator=gen), torch.randn(2, 5, 12, generator=gen)
    assert _diff(hidden_mse(hs, ht[..., :8]), F.mse_loss(hs, ht[..., :8])) < TOL
    torch.manual_seed(0)
    proj = hidden_projection(8, 12)
    assert isinstance(proj, nn.Linear) and isinstance(hidden_projection(8, 8), nn.Identity)
    loss = hidden_mse(hs, ht, proj)
    ref = F.mse_loss(proj(hs), ht)
    assert _diff(loss, ref) < TOL, f"max_abs_diff={_diff(loss, ref)}"
    loss.backward()
    assert proj.weight.grad is not None and float(proj.weight.grad.abs().max()) > 0
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    masked = hidden_mse(hs, ht, proj, mask)
    assert _diff(masked, F.mse_loss(proj(hs[mask]), ht[mask])) < TOL
    assert float(hidden_mse(ht, ht)) == 0.0
    with pytest.raises(ValueError, match="hidden_projection"):
        hidden_mse(hs, ht)


def test_bad_inputs_raise(logits):
    student, teacher, mask = logits
    with pytest.raises(ValueError, match="same shape"):
        forward_kl(student[..., :10], teacher)
    with pytest.raises(ValueError, match="temperature"):
        reverse_kl(student, teacher, temperature=0.0)
    with pytest.raises(ValueError, match="beta"):
        generalized_jsd(student, teacher, beta=1.5)
    with pytest.raises(ValueError, match="no tokens"):
        forward_kl(student, teacher, torch.zeros_like(mask))
    with pytest.raises(ValueError, match="mask"):
        forward_kl(student, teacher, mask[:, :3])
    with pytest.raises(ValueError, match="loss"):
        distillation_loss("kl", student, teacher)
    with pytest.raises(ValueError, match="alpha"):
        DistillConfig(alpha=1.5)
    with pytest.raises(ValueError, match="loss"):
        DistillConfig(loss="kl")  # type: ignore[arg-type]


def test_window_starts_are_random_windows_draws():
    tokens = torch.arange(1000)
    starts = window_starts(1000, steps=4, batch_size=3, seq_len=16, seed=7)
    windows = random_windows(tokens, batch_size=3, seq_len=16, seed=7)
    for row in starts:
        expected = next(windows)  # (B, T)
        assert torch.equal(tokens[row[:, None] + torch.arange(16)], expected)


# ----------------------------------------------------------------------------- training on a real teacher

STEPS, BATCH, SEQ = 15, 2, 32  # 64 tokens a step keeps the file fast: the 49k-way output layers dominate


@pytest.fixture(scope="module")
def teacher_and_tokens():
    from llmbook.chain.pretrained import load_pretrained
    from llmbook.data.corpora import corpus_text

    teacher, tok = load_pretrained(layers=2)
    ids = torch.tensor(tok(corpus_text("en", max_bytes=40_000))["input_ids"])
    split = int(0.9 * ids.numel())
    return teacher, ids[:split], ids[split:]


class _NoTeacher(nn.Module):
    def forward(self, *args, **kwargs):  # noqa: ANN002, ANN003
        raise AssertionError("the scratch baseline (alpha=0) must not call the teacher")


def _student(teacher: nn.Module) -> nn.Module:
    return small_student(teacher.config, hidden=64, layers=1, heads=4, kv_heads=2, seed=0)


def test_small_student_shares_vocab_and_is_seeded(teacher_and_tokens):
    teacher = teacher_and_tokens[0]
    state = torch.random.get_rng_state()
    a, b = _student(teacher), small_student(teacher.config, hidden=64, layers=1, heads=4, kv_heads=2, seed=1)
    assert torch.equal(torch.random.get_rng_state(), state), "small_student must not touch the global RNG"
    assert a.config.vocab_size == teacher.config.vocab_size and a.config.num_key_value_heads == 2
    assert a.config.hidden_size == 64 and a.config.num_hidden_layers == 1 and a.training
    assert torch.equal(a.model.embed_tokens.weight, _student(teacher).model.embed_tokens.weight)
    assert not torch.equal(a.model.embed_tokens.weight, b.model.embed_tokens.weight)
    with pytest.raises(ValueError, match="divisible"):
        small_student(teacher.config, hidden=66, heads=4)


def test_distillation_loss_falls_on_the_batches_of_the_scratch_run(teacher_and_tokens):
    teacher, train, held = teacher_and_tokens
    cfg = DistillConfig(
        steps=STEPS,
        batch_size=BATCH,
        seq_len=SEQ,
        lr=1e-2,
        alpha=0.5,
        temperature=2.0,
        loss="forward_kl",
        seed=3,
        eval_windows=4,
    )
    distilled = train_student(_student(teacher), teacher, train, cfg, eval_tokens=held)
    scratch_cfg = dataclasses.replace(cfg, alpha=0.0)
    scratch = train_student(_student(teacher), _NoTeacher(), train, scratch_cfg, eval_tokens=held)

    assert torch.equal(distilled.starts, scratch.starts), "both runs must draw the same windows in the same order"
    assert distilled.starts.shape == (STEPS, BATCH)
    first = sum(h["distill"] for h in distilled.history[:5]) / 5
    last = sum(h["distill"] for h in distilled.history[-5:]) / 5
    assert last < 0.8 * first, f"distillation loss should fall: first 5 steps {first:.3f}, last 5 {last:.3f}"
    assert all(math.isnan(h["distill"]) for h in scratch.history)
    for run in (distilled, scratch):
        final = run.final_eval
        assert final is not None and final["step"] == STEPS
        assert abs(final["perplexity"] - math.exp(final["loss"])) < 1e-6 * final["perplexity"]
        assert final["loss"] < math.log(teacher.config.vocab_size) - 1.0, "a trained student beats uniform"
        assert not run.history[-1]["lr"] > cfg.lr  # cosine schedule never exceeds the peak


def test_training_is_deterministic_under_the_seed(teacher_and_tokens):
    teacher, train, _ = teacher_and_tokens
    cfg = DistillConfig(steps=2, batch_size=BATCH, seq_len=SEQ, lr=1e-2, alpha=0.5, loss="jsd", beta=0.5, seed=5)
    a = train_student(_student(teacher), teacher, train, cfg)
    b = train_student(_student(teacher), teacher, train, cfg)
    assert torch.equal(a.starts, b.starts)
    assert [h["loss"] for h in a.history] == [h["loss"] for h in b.history]
    assert a.history[1]["loss"] != a.history[0]["loss"]  # it did train
    other = window_starts(train.numel(), steps=2, batch_size=BATCH, seq_len=SEQ, seed=6)
    assert not torch.equal(a.starts, other), "another seed draws other windows"
    only = train_student(_student(teacher), teacher, train, dataclasses.replace(cfg, steps=1, alpha=1.0))
    row = only.history[0]  # alpha = 1: pure distillation, CE only logged
    assert row["loss"] == row["distill"] and math.isfinite(row["ce"]) and row["ce"] != row["loss"]


def test_train_student_rejects_bad_setups(teacher_and_tokens):
    teacher, train, _ = teacher_and_tokens
    student = _student(teacher)
    with pytest.raises(ValueError, match="teacher"):
        train_student(student, None, train, DistillConfig(steps=1, alpha=0.5))
    with pytest.raises(ValueError, match="1-D"):
        train_student(student, teacher, train.view(1, -1), DistillConfig(steps=1))
    with pytest.raises(ValueError, match="longer than seq_len"):
        train_student(student, teacher, train[:10], DistillConfig(steps=1, seq_len=32))
