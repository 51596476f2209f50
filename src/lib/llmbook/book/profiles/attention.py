"""Profile of the attention chapter: small-model sizes, training lengths, what is measured at which T."""

from __future__ import annotations

from dataclasses import dataclass

from llmbook.profiles import TorchChapterConfig, register

SMOKE = dict(
    train_mb=0.3,
    d_model=64,
    n_layers=2,
    n_heads=4,
    train_len=48,
    batch_size=12,
    steps=40,
    lr=3e-3,
    eval_multiples=(1, 2, 4, 8),
    eval_tokens=1536,
    finetune_steps=10,
    passkey_trials=8,
    ablation_steps=40,
    cost_lengths=(128, 256, 512),
    cost_repeats=2,
    torch_threads=1,
)
CPU = dict(
    train_mb=1.0,
    d_model=96,
    n_layers=3,
    n_heads=4,
    train_len=64,
    batch_size=16,
    steps=150,
    lr=3e-3,
    eval_multiples=(1, 2, 4, 8),
    eval_tokens=4096,
    finetune_steps=40,
    passkey_trials=24,
    ablation_steps=150,
    cost_lengths=(128, 256, 512, 1024, 2048, 4096),
    cost_repeats=3,
    torch_threads=1,
)
GPU = dict(
    train_mb=50.0,
    d_model=512,
    n_layers=8,
    n_heads=8,
    train_len=512,
    batch_size=32,
    steps=5000,
    lr=1e-3,
    eval_multiples=(1, 2, 4, 8, 16),
    eval_tokens=262144,
    finetune_steps=500,
    passkey_trials=100,
    ablation_steps=2000,
    cost_lengths=(512, 1024, 2048, 4096, 8192, 16384),
    cost_repeats=10,
    cost_batch=4,
    cost_heads=32,
    cost_head_dim=128,
    torch_threads=None,
)


@register("attention", presets={"smoke": SMOKE, "cpu": CPU, "gpu": GPU, "multi-gpu": GPU})
@dataclass(kw_only=True)
class AttentionChapterConfig(TorchChapterConfig):
    train_mb: float = CPU["train_mb"]  # MB of bundled English text the small models train on
    heldout_fraction: float = 0.1  # documents kept out of training, for every perplexity
    d_model: int = CPU["d_model"]  # C of the small models
    n_layers: int = CPU["n_layers"]  # L of the small models
    n_heads: int = CPU["n_heads"]  # H of the small models
    train_len: int = CPU["train_len"]  # training context; extrapolation is measured at multiples of it
    batch_size: int = CPU["batch_size"]  # sequences per training step
    steps: int = CPU["steps"]  # training steps of each positional-encoding model
    lr: float = CPU["lr"]  # peak AdamW learning rate (warm-up then cosine)
    eval_multiples: tuple[int, ...] = CPU["eval_multiples"]  # evaluate at these multiples of train_len
    eval_tokens: int = CPU["eval_tokens"]  # held-out tokens scored at every length
    rope_factor: float = 4.0  # context-extension factor s of PI / NTK / YaRN
    finetune_steps: int = CPU["finetune_steps"]  # short fine-tune at rope_factor * train_len
    passkey_fraction: float = 0.25  # share of training rows that are passkey prompts
    passkey_digits: int = 4  # digits of the hidden key
    passkey_trials: int = CPU["passkey_trials"]  # prompts per length in the retrieval test
    ablation_steps: int = CPU["ablation_steps"]  # steps of each norm / activation variant
    cost_lengths: tuple[int, ...] = CPU["cost_lengths"]  # T axis of the time / memory plot
    cost_batch: int = 1  # B of the attention-cost measurement
    cost_heads: int = 4  # H of the attention-cost measurement
    cost_head_dim: int = 64  # D of the attention-cost measurement
    cost_repeats: int = CPU["cost_repeats"]  # timed calls per point (fastest kept)
    eager_max_scores_gib: float = 4.0  # skip eager where its fp32 T x T scores alone would exceed this

    def validate(self) -> None:
        super().validate()
        self.check(self.train_mb > 0, "train_mb", "must be positive")
        self.check(0 < self.heldout_fraction < 0.5, "heldout_fraction", "must be in (0, 0.5)")
        self.check_head_split("d_model", self.n_heads)
        self.check(self.n_layers >= 1, "n_layers", "must be at least 1")
        self.check(self.train_len >= 40, "train_len", "must be at least 40 (a passkey prompt needs ~30 tokens)")
        self.check(self.batch_size >= 1, "batch_size", "must be at least 1")
        self.check(self.steps >= 10, "steps", "must be at least 10")
        self.check(0 < self.lr < 1, "lr", "must be in (0, 1)")
        self.check(len(self.eval_multiples) >= 2 and min(self.eval_multiples) >= 1, "eval_multiples",
                   "needs two or more multiples, each >= 1")
        self.check(self.eval_tokens >= self.train_len * max(self.eval_multiples), "eval_tokens",
                   "must cover at least one window at the longest evaluated length")
        self.check(self.rope_factor > 1, "rope_factor", "must be > 1 (it extends the context)")
        self.check(self.finetune_steps >= 1, "finetune_steps", "must be at least 1")
        self.check(0 <= self.passkey_fraction < 1, "passkey_fraction", "must be in [0, 1)")
        self.check(1 <= self.passkey_digits <= 10, "passkey_digits", "must be in 1..10")
        self.check(self.passkey_trials >= 1, "passkey_trials", "must be at least 1")
        self.check(self.ablation_steps >= 10, "ablation_steps", "must be at least 10")
        self.check(len(self.cost_lengths) >= 2 and min(self.cost_lengths) >= 16, "cost_lengths",
                   "needs two or more lengths, each >= 16")
        self.check(self.cost_repeats >= 1, "cost_repeats", "must be at least 1")
        self.check(self.eager_max_scores_gib > 0, "eager_max_scores_gib", "must be positive")
