"""Knowledge distillation on logits: forward KL, reverse KL and generalised JSD, and a small training loop.

A student ``q`` learns from a teacher ``p`` by matching its next-token distribution at every position,
both softened by a temperature ``tau`` (Hinton et al. 2015, arXiv:1503.02531)::

    p^tau = softmax(z_teacher / tau)        q^tau = softmax(z_student / tau)

    forward KL   tau^2 * KL(p^tau || q^tau) = tau^2 * sum_v p (log p - log q)     mean-seeking (Hinton)
    reverse KL   tau^2 * KL(q^tau || p^tau) = tau^2 * sum_v q (log q - log p)     mode-seeking (MiniLLM,
                                                                                  arXiv:2306.08543)
    JSD(beta)    tau^2 * [beta KL(p || m) + (1 - beta) KL(q || m)],  m = beta p + (1 - beta) q
                                                                                  (GKD, arXiv:2306.13649)

Each is summed over the vocabulary and averaged over the scored (unmasked) tokens. The ``tau^2``
factor is Hinton's: the gradient of the softened KL with respect to the logits scales as ``1 / tau^2``,
so multiplying by ``tau^2`` keeps the distillation term's size independent of ``tau`` when it is mixed
with the hard-label loss. ``trl``'s ``GKDTrainer.generalized_jsd_loss`` omits it (the two agree at
``tau = 1``). JSD's endpoints follow ``trl``'s convention: both terms of the mixture vanish as
``beta -> 0`` or ``1``, so ``beta = 0`` is *defined* as forward KL (``KL(teacher || student)``) and
``beta = 1`` as reverse KL (``KL(student || teacher)``) — the limits of ``JSD(beta) / beta`` and
``JSD(beta) / (1 - beta)``.

:func:`train_student` trains with ``alpha * distillation + (1 - alpha) * next-token CE``;
``alpha = 0`` is the from-scratch baseline (no teacher forward) and draws exactly the same batches.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from llmbook.model import eval_mode, from_hf_config, seeded_model, to_hf
from llmbook.progress import ProgressBar
from llmbook.training.data import disjoint_windows
from llmbook.training.loop import evaluate
from llmbook.training.optim import clip_grad_norm, param_groups
from llmbook.training.schedule import ScheduleConfig, set_lr

DistillLoss = Literal["forward_kl", "reverse_kl", "jsd"]
LOSSES = ("forward_kl", "reverse_kl", "jsd")


# ----------------------------------------------------------------------------- losses (pure functions)


def _check_logits(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> None:
    if student_logits.dim() != 3 or student_logits.shape != teacher_logits.shape:
        raise ValueError(
            "student_logits and teacher_logits must both be (B, T, V) with the same shape (same tokenizer), "
            f"got {tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}"
        )
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def _log_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``log softmax(z / tau)`` over V, in at least fp32 (bf16 logits lose the tails of the distribution)."""
    dtype = torch.promote_types(logits.dtype, torch.float32)
    return F.log_softmax(logits.to(dtype) / temperature, dim=-1)


def _token_mean(per_token: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``per_token (B, T)`` over the positions where ``mask (B, T)`` is true (all when None)."""
    if mask is None:
        return per_token.mean()
    if mask.shape != per_token.shape:
        raise ValueError(f"mask must be (B, T) = {tuple(per_token.shape)}, got {tuple(mask.shape)}")
    mask = mask.to(torch.bool)
    n = int(mask.sum())
    if n == 0:
        raise ValueError("mask selects no tokens: at least one position must be scored")
    return per_token[mask].sum() / n


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """``KL(p || q) = sum_v p (log p - log q)`` per position: (B, T, V) -> (B, T)."""
    return (log_p.exp() * (log_p - log_q)).sum(dim=-1)


def forward_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    temperature: float = 1.0,
) -> torch.Tensor:
    """``tau^2 * KL(p_teacher^tau || p_student^tau)``, mean over unmasked tokens (Hinton, arXiv:1503.02531).

    ``student_logits``, ``teacher_logits``: (B, T, V); ``mask``: (B, T), true where a token is scored.
    Equals ``tau^2 * F.kl_div(log_softmax(s / tau), log_softmax(t / tau), log_target=True, reduction="batchmean")``
    on the scored rows flattened to (N, V).
    """
    _check_logits(student_logits, teacher_logits, temperature)
    log_q, log_p = _log_probs(student_logits, temperature), _log_probs(teacher_logits, temperature)
    return temperature**2 * _token_mean(_kl(log_p, log_q), mask)


def reverse_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    temperature: float = 1.0,
) -> torch.Tensor:
    """``tau^2 * KL(p_student^tau || p_teacher^tau)``, mean over unmasked tokens (MiniLLM, arXiv:2306.08543).

    Mode-seeking: the student is punished for mass where the teacher has little, not for missing some
    of the teacher's modes, which suits a small student that cannot cover them all.
    """
    _check_logits(student_logits, teacher_logits, temperature)
    log_q, log_p = _log_probs(student_logits, temperature), _log_probs(teacher_logits, temperature)
    return temperature**2 * _token_mean(_kl(log_q, log_p), mask)


def generalized_jsd(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    beta: float = 0.5,
    temperature: float = 1.0,
) -> torch.Tensor:
    """``tau^2 * [beta KL(p || m) + (1 - beta) KL(q || m)]``, ``m = beta p + (1 - beta) q`` (GKD, arXiv:2306.13649).

    ``p`` is the teacher, ``q`` the student. ``beta = 0`` returns :func:`forward_kl` and ``beta = 1``
    :func:`reverse_kl` (trl's convention, see the module docstring). Equals ``tau^2`` times
    ``trl``'s ``GKDTrainer.generalized_jsd_loss`` with ``labels`` = -100 where ``mask`` is false.
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1] (0 = forward KL, 1 = reverse KL), got {beta}")
    if beta == 0.0:
        return forward_kl(student_logits, teacher_logits, mask, temperature=temperature)
    if beta == 1.0:
        return reverse_kl(student_logits, teacher_logits, mask, temperature=temperature)
    _check_logits(student_logits, teacher_logits, temperature)
    log_q, log_p = _log_probs(student_logits, temperature), _log_probs(teacher_logits, temperature)
    # log m = log(beta p + (1 - beta) q), computed in log space: (2, B, T, V) -> (B, T, V)
    log_m = torch.logsumexp(torch.stack([log_p + math.log(beta), log_q + math.log1p(-beta)]), dim=0)
    per_token = beta * _kl(log_p, log_m) + (1.0 - beta) * _kl(log_q, log_m)  # (B, T)
    return temperature**2 * _token_mean(per_token, mask)


def distillation_loss(
    kind: DistillLoss,
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    temperature: float = 1.0,
    beta: float = 0.5,
) -> torch.Tensor:
    """The loss named ``kind`` ("forward_kl", "reverse_kl" or "jsd" with ``beta``)."""
    if kind == "forward_kl":
        return forward_kl(student_logits, teacher_logits, mask, temperature=temperature)
    if kind == "reverse_kl":
        return reverse_kl(student_logits, teacher_logits, mask, temperature=temperature)
    if kind == "jsd":
        return generalized_jsd(student_logits, teacher_logits, mask, beta=beta, temperature=temperature)
    raise ValueError(f"loss must be one of {LOSSES}, got {kind!r}")


def hidden_projection(student_width: int, teacher_width: int) -> nn.Module:
    """A learned map from the student's hidden width to the teacher's (identity when they are equal).

    ``nn.Linear(C_student, C_teacher, bias=False)``, trained jointly with the student
    (FitNets' regressor, Romero et al. 2015, arXiv:1412.6550).
    """
    if student_width < 1 or teacher_width < 1:
        raise ValueError(f"widths must be >= 1, got {student_width}, {teacher_width}")
    if student_width == teacher_width:
        return nn.Identity()
    return nn.Linear(student_width, teacher_width, bias=False)


def hidden_mse(
    student_hidden: torch.Tensor,
    teacher_hidden: torch.Tensor,
    projection: nn.Module | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """``mean_c (W h_student - h_teacher)^2``, mean over unmasked tokens (hidden-state matching, FitNets).

    ``student_hidden``: (B, T, C_s); ``teacher_hidden``: (B, T, C_t); ``projection`` maps C_s to C_t
    (:func:`hidden_projection`); it may be None only when the widths agree. Without a mask this is
    ``F.mse_loss(projection(student_hidden), teacher_hidden)``. Pass the teacher's states detached.
    """
    if student_hidden.dim() != 3 or teacher_hidden.dim() != 3 or student_hidden.shape[:2] != teacher_hidden.shape[:2]:
        raise ValueError(
            "student_hidden and teacher_hidden must be (B, T, C_s) and (B, T, C_t) with the same B, T, "
            f"got {tuple(student_hidden.shape)} and {tuple(teacher_hidden.shape)}"
        )
    if projection is None:
        if student_hidden.shape[-1] != teacher_hidden.shape[-1]:
            raise ValueError(
                f"widths differ ({student_hidden.shape[-1]} vs {teacher_hidden.shape[-1]}): pass "
                f"projection=hidden_projection({student_hidden.shape[-1]}, {teacher_hidden.shape[-1]})"
            )
        projection = nn.Identity()
    projected = projection(student_hidden)  # (B, T, C_s) -> (B, T, C_t)
    if projected.shape != teacher_hidden.shape:
        raise ValueError(f"projection gives {tuple(projected.shape)}, teacher_hidden is {tuple(teacher_hidden.shape)}")
    return _token_mean((projected - teacher_hidden).pow(2).mean(dim=-1), mask)


# ----------------------------------------------------------------------------- student and training loop


def small_student(
    teacher_config: Any, *, hidden: int = 128, layers: int = 2, heads: int = 4, kv_heads: int = 2, seed: int = 0
) -> nn.Module:
    """A small ``LlamaForCausalLM`` of the book's architecture sharing the teacher's vocabulary (same tokenizer).

    The book's :class:`~llmbook.model.ModelConfig` taken from ``teacher_config`` (a ``LlamaConfig``: vocab,
    RoPE, norm epsilon, tied embeddings, context length) with the width, depth and heads replaced; the
    MLP is ``8/3 hidden`` rounded up to 32. Weights from :func:`~llmbook.model.seeded_model` under
    ``seed``, converted with :func:`~llmbook.model.to_hf`; the caller's random state is left untouched.
    Returned in train mode.
    """
    if hidden < 1 or layers < 1 or heads < 1 or kv_heads < 1:
        raise ValueError(
            f"hidden, layers, heads and kv_heads must be >= 1, got {hidden}, {layers}, {heads}, {kv_heads}"
        )
    cfg = from_hf_config(
        teacher_config, d_model=hidden, n_layers=layers, n_heads=heads, n_kv_heads=kv_heads, head_dim=None, d_ff=None
    )  # raises if hidden % heads or heads % kv_heads is not 0
    with torch.random.fork_rng(devices=[]):
        student = to_hf(seeded_model(cfg, seed))
    return student.train()


def window_starts(n_tokens: int, *, steps: int, batch_size: int, seq_len: int, seed: int) -> torch.Tensor:
    """Offsets ``(steps, B)`` of the training windows: the draws of :func:`llmbook.training.data.random_windows`.

    Uniform in ``[0, N - T]`` from ``torch.Generator().manual_seed(seed)``, ``B`` per step, so a distilled
    run and its scratch baseline with the same seed see the same windows in the same order.
    """
    if n_tokens <= seq_len:
        raise ValueError(f"tokens ({n_tokens}) must be longer than seq_len ({seq_len})")
    gen = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randint(0, n_tokens - seq_len + 1, (batch_size,), generator=gen) for _ in range(steps)])


@dataclass(kw_only=True)
class DistillConfig:
    """Steps, batch shape, optimizer and the distillation mix of :func:`train_student`."""

    steps: int = 300  # optimizer steps
    batch_size: int = 8  # B, windows per step
    seq_len: int = 128  # T, tokens per window
    lr: float = 2e-3  # peak AdamW LR; a tiny student from scratch tolerates a large one
    warmup_steps: int | None = None  # linear warmup before the cosine decay; None = 10% of steps
    min_lr_ratio: float = 0.1  # final LR as a fraction of the peak (LLaMA's cosine)
    weight_decay: float = 0.1  # on matrices only (param_groups)
    grad_clip: float | None = 1.0  # global-norm clip; None = off
    temperature: float = 1.0  # tau: > 1 softens both distributions and shows the teacher's "dark knowledge"
    alpha: float = 0.5  # weight of distillation; 1 - alpha goes to next-token CE; 0 = scratch baseline
    loss: DistillLoss = "forward_kl"  # "forward_kl" (Hinton), "reverse_kl" (MiniLLM) or "jsd" (GKD)
    beta: float = 0.5  # JSD's mixture weight (loss="jsd"): 0 = forward KL, 1 = reverse KL
    seed: int = 0  # the window order; the student's init is small_student's seed
    eval_every: int = 0  # evaluate on eval_tokens every this many steps (0 = only after the last step)
    eval_windows: int | None = 32  # held-out windows of seq_len scored per evaluation (None = all)

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.seq_len < 2:
            raise ValueError(
                f"need steps >= 1, batch_size >= 1, seq_len >= 2, got {self.steps}, {self.batch_size}, {self.seq_len}"
            )
        if self.lr <= 0 or self.temperature <= 0:
            raise ValueError(f"lr and temperature must be > 0, got {self.lr}, {self.temperature}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1] (0 = plain CE, 1 = distillation only), got {self.alpha}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if not 0.0 <= self.beta <= 1.0:
            raise ValueError(f"beta must be in [0, 1], got {self.beta}")
        if self.eval_every < 0 or (self.warmup_steps is not None and not 0 <= self.warmup_steps <= self.steps):
            raise ValueError(
                f"need eval_every >= 0 and 0 <= warmup_steps <= steps, got {self.eval_every}, {self.warmup_steps}"
            )

    def schedule(self) -> ScheduleConfig:
        """Linear warmup then cosine decay to ``min_lr_ratio`` over ``steps``."""
        warmup = max(1, self.steps // 10) if self.warmup_steps is None else self.warmup_steps
        return ScheduleConfig(
            kind="cosine", total_steps=self.steps, warmup_steps=warmup, min_lr_ratio=self.min_lr_ratio
        )


@dataclass
class DistillResult:
    """What a :func:`train_student` run did, step by step."""

    history: list[dict[str, float]]  # per step: step, lr, loss, ce, distill (NaN when alpha = 0), grad_norm, seconds
    evals: list[dict[str, float]] = field(default_factory=list)  # step, loss (nats/token), perplexity on eval_tokens
    starts: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 0, dtype=torch.long))  # (steps, B) offsets
    seconds: float = 0.0  # wall time of the whole run, evaluations included

    @property
    def final_eval(self) -> dict[str, float] | None:
        """The last evaluation (after the last step), or None without eval_tokens."""
        return self.evals[-1] if self.evals else None


def _vocab_size(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    return getattr(config, "vocab_size", None)


def _evaluate(student: nn.Module, eval_tokens: torch.Tensor, cfg: DistillConfig, step: int) -> dict[str, float]:
    batches = disjoint_windows(eval_tokens, cfg.seq_len, cfg.batch_size, max_windows=cfg.eval_windows)
    result = evaluate(student, batches)
    return {"step": float(step), "loss": result.loss, "perplexity": result.perplexity}


def train_student(
    student: nn.Module,
    teacher: nn.Module | None,
    tokens: torch.Tensor,
    config: DistillConfig,
    *,
    eval_tokens: torch.Tensor | None = None,
    progress: bool = False,
) -> DistillResult:
    """Train ``student`` on windows of ``tokens (N,)`` with ``alpha * distill + (1 - alpha) * CE``.

    ``distill`` is ``config.loss`` between the student's and the teacher's logits at every position of
    the window; CE is the next-token cross-entropy on the window's own tokens. The teacher runs in eval
    mode under ``torch.no_grad`` and must share the student's vocabulary and device; with ``alpha = 0``
    it is never called (pass None). Optimizer: ``torch.optim.AdamW`` (betas 0.9, 0.95, decay on matrices
    only) with warmup + cosine (:mod:`llmbook.training.schedule`). Both models are called as
    ``model(input_ids=x).logits``. The student is left in eval mode.
    """
    tokens = torch.as_tensor(tokens)
    if tokens.dim() != 1 or tokens.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"tokens must be a 1-D integer tensor (N,), got {tokens.dtype} {tuple(tokens.shape)}")
    distilling = config.alpha > 0
    if distilling and teacher is None:
        raise ValueError(f"alpha={config.alpha} needs a teacher; pass alpha=0 for the scratch baseline")
    vocab = _vocab_size(student)
    if distilling and vocab is not None and _vocab_size(teacher) not in (None, vocab):
        raise ValueError(
            f"student vocab {vocab} != teacher vocab {_vocab_size(teacher)}: build the student with "
            "small_student(teacher.config) so both use the teacher's tokenizer"
        )
    if vocab is not None and int(tokens.max()) >= vocab:
        raise ValueError(f"token id {int(tokens.max())} is outside the student's vocabulary ({vocab})")
    if eval_tokens is not None:
        eval_tokens = torch.as_tensor(eval_tokens).long()

    device = next(student.parameters()).device
    tokens = tokens.long().to(device)
    starts = window_starts(
        tokens.numel(), steps=config.steps, batch_size=config.batch_size, seq_len=config.seq_len, seed=config.seed
    )
    offsets = torch.arange(config.seq_len, device=device)
    schedule = config.schedule()
    optimizer = torch.optim.AdamW(param_groups(student, config.weight_decay), lr=config.lr, betas=(0.9, 0.95))
    params = [p for group in optimizer.param_groups for p in group["params"]]

    result = DistillResult(history=[], starts=starts)
    t_run = time.perf_counter()
    bar = (
        ProgressBar(total=config.steps, desc="distill" if distilling else "scratch", unit="step") if progress else None
    )
    student.train()
    for step in range(config.steps):
        t0 = time.perf_counter()
        lr = set_lr(optimizer, schedule, step)
        x = tokens[starts[step].to(device)[:, None] + offsets]  # (B,) offsets -> (B, T) windows
        logits = student(input_ids=x).logits  # (B, T, V)
        ce = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), x[:, 1:].flatten())  # predict token t+1
        if distilling:
            with eval_mode(teacher), torch.no_grad():
                teacher_logits = teacher(input_ids=x).logits  # (B, T, V)
            distill = distillation_loss(
                config.loss, logits, teacher_logits, temperature=config.temperature, beta=config.beta
            )
            # alpha = 1 keeps CE out of the graph (it is still logged)
            loss = config.alpha * distill + ((1.0 - config.alpha) * ce if config.alpha < 1 else 0.0)
        else:
            distill, loss = None, ce
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"loss became {loss_value} at step {step + 1} (lr {lr:.3g}); lower config.lr")
        loss.backward()
        grad_norm = clip_grad_norm(params, config.grad_clip) if config.grad_clip else torch.nan
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        result.history.append(
            {
                "step": float(step + 1),
                "lr": lr,
                "loss": loss_value,
                "ce": ce.item(),
                "distill": distill.item() if distill is not None else math.nan,
                "grad_norm": float(grad_norm),
                "seconds": time.perf_counter() - t0,
            }
        )
        done = step + 1 == config.steps
        if eval_tokens is not None and (done or (config.eval_every and (step + 1) % config.eval_every == 0)):
            result.evals.append(_evaluate(student, eval_tokens, config, step + 1))
        if bar is not None:
            bar.set_postfix(loss=f"{loss_value:.3f}")
            bar.update(1)
    if bar is not None:
        bar.close()
    student.eval()
    result.seconds = time.perf_counter() - t_run
    return result
