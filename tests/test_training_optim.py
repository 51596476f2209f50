"""AdamW, LR schedules and clipping vs torch.optim / transformers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from llmbook.model import DecoderLM, ModelConfig
from llmbook.training import (
    AdamW,
    ScheduleConfig,
    clip_grad_norm,
    cosine_with_warmup,
    lr_multiplier,
    param_groups,
    wsd,
    wsd_phases,
)


def tiny_model(seed: int = 0) -> DecoderLM:
    torch.manual_seed(seed)
    return DecoderLM(ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, attention_bias=True))


def max_diff(a: nn.Module, b: nn.Module) -> float:
    return max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_adamw_matches_torch_step_for_step(weight_decay: float) -> None:
    ours_model, ref_model = tiny_model(), tiny_model()
    kw = dict(lr=3e-3, betas=(0.9, 0.95), eps=1e-8)
    ours = AdamW(param_groups(ours_model, weight_decay), **kw)
    ref = torch.optim.AdamW(param_groups(ref_model, weight_decay), **kw, foreach=False)
    groups = param_groups(ours_model, weight_decay)
    assert groups[1]["params"] and all(p.ndim == 1 for p in groups[1]["params"])  # norms + biases, no decay
    g = torch.Generator().manual_seed(1)
    for step in range(12):
        x = torch.randint(0, 64, (3, 10), generator=g)
        for model, opt in ((ours_model, ours), (ref_model, ref)):
            opt.zero_grad()
            model(x, labels=x).loss.backward()
            opt.step()
        diff = max_diff(ours_model, ref_model)
        assert diff < 1e-6, f"step {step}: max_abs_diff={diff:.3e}"
    assert max_diff(ours_model, tiny_model()) > 1e-3  # the parameters did move
    # state names match torch's, so either optimizer's state loads into the other
    s_ours, s_ref = ours.state_dict()["state"], ref.state_dict()["state"]
    assert s_ours.keys() == s_ref.keys()
    for i in s_ours:
        for k in ("step", "exp_avg", "exp_avg_sq"):
            d = (s_ours[i][k] - s_ref[i][k]).abs().max().item()
            assert d < 1e-6, f"state {i}.{k}: max_abs_diff={d:.3e}"


def test_adamw_weight_decay_is_decoupled() -> None:
    # zero gradient: Adam's update is 0, so the parameter only shrinks by (1 - lr * wd) per step
    p = nn.Parameter(torch.ones(3))
    opt = AdamW([p], lr=0.1, weight_decay=0.5)
    for _ in range(3):
        p.grad = torch.zeros(3)
        opt.step()
    expected = (1 - 0.1 * 0.5) ** 3
    assert torch.allclose(p.detach(), torch.full((3,), expected)), f"got {p.tolist()}, expected {expected}"


def test_adamw_rejects_bad_args() -> None:
    with pytest.raises(ValueError, match="betas"):
        AdamW([nn.Parameter(torch.ones(1))], betas=(1.0, 0.9))


def test_clip_grad_norm_matches_torch() -> None:
    torch.manual_seed(0)
    for max_norm in (0.05, 1.0, 1e3):  # clipped and not clipped
        a, b = tiny_model(), tiny_model()
        x = torch.randint(0, 64, (2, 12))
        a(x, labels=x).loss.backward()
        b(x, labels=x).loss.backward()
        n_ours = clip_grad_norm(a.parameters(), max_norm)
        n_ref = torch.nn.utils.clip_grad_norm_(b.parameters(), max_norm)
        assert abs(n_ours.item() - n_ref.item()) < 1e-6, f"norm {n_ours.item()} vs {n_ref.item()}"
        d = max((p.grad - q.grad).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))
        assert d < 1e-7, f"max_norm={max_norm}: max_abs_diff={d:.3e}"


def test_cosine_matches_transformers() -> None:
    from transformers import get_cosine_schedule_with_warmup, get_cosine_with_min_lr_schedule_with_warmup

    p = nn.Parameter(torch.zeros(1))
    for min_ratio in (0.0, 0.1):
        opt = torch.optim.SGD([p], lr=2.0)
        if min_ratio == 0.0:
            sched = get_cosine_schedule_with_warmup(opt, num_warmup_steps=10, num_training_steps=100)
        else:
            sched = get_cosine_with_min_lr_schedule_with_warmup(
                opt, num_warmup_steps=10, num_training_steps=100, min_lr_rate=min_ratio
            )
        cfg = ScheduleConfig(kind="cosine", total_steps=100, warmup_steps=10, min_lr_ratio=min_ratio)
        for step in range(101):
            ours = 2.0 * lr_multiplier(cfg, step)
            ref = opt.param_groups[0]["lr"]
            assert abs(ours - ref) < 1e-12, f"step {step}: {ours} vs {ref}"
            opt.step()
            sched.step()


def test_cosine_hand_values() -> None:
    f = lambda s: cosine_with_warmup(s, warmup_steps=4, total_steps=12, min_lr_ratio=0.0)  # noqa: E731
    assert [f(s) for s in (0, 2, 4)] == [0.0, 0.5, 1.0]
    assert math.isclose(f(8), 0.5) and math.isclose(f(12), 0.0, abs_tol=1e-15)


def test_wsd_hand_values_and_transformers() -> None:
    assert wsd_phases(100) == (10, 80, 10)
    cfg = ScheduleConfig(kind="wsd", total_steps=100, min_lr_ratio=0.0)
    hand = {0: 0.0, 5: 0.5, 10: 1.0, 50: 1.0, 89: 1.0, 90: 1.0, 95: 0.5, 99: 0.1, 100: 0.0}
    for step, want in hand.items():
        got = lr_multiplier(cfg, step)
        assert math.isclose(got, want, abs_tol=1e-12), f"step {step}: {got} vs {want}"
    # and equals transformers' WSD (linear decay, min_lr_ratio > 0)
    from transformers import get_wsd_schedule

    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = get_wsd_schedule(opt, num_warmup_steps=10, num_stable_steps=80, num_decay_steps=10, decay_type="linear",
                             min_lr_ratio=0.1)
    for step in range(100):
        ours = wsd(step, warmup_steps=10, stable_steps=80, decay_steps=10, min_lr_ratio=0.1)
        if step >= 10:  # transformers also lifts warmup to min_lr_ratio; ours warms up from 0
            assert math.isclose(ours, opt.param_groups[0]["lr"], abs_tol=1e-12), f"step {step}"
        opt.step()
        sched.step()


def test_schedule_rejects_bad_kind() -> None:
    with pytest.raises(ValueError, match="kind must be one of"):
        ScheduleConfig(kind="linear")  # type: ignore[arg-type]
