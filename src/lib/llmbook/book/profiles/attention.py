"""Config of the attention chapter: small-model sizes, training lengths, what is measured at which T."""

from __future__ import annotations

from dataclasses import dataclass

from llmbook.book.profiles.base import Profile, TorchChapterConfig, per_profile


@dataclass(kw_only=True)
class AttentionChapterConfig(TorchChapterConfig):
    # the tokenization chapter's profile whose book tokenizer encodes the training text
    tokenizer_profile: Profile = per_profile(smoke="smoke", cpu="cpu", gpu="gpu")
    train_mb: float = per_profile(smoke=0.3, cpu=1.0, gpu=50.0)  # MB of bundled English text the small models train on
    heldout_fraction: float = 0.1  # documents kept out of training, for every perplexity
    d_model: int = per_profile(smoke=64, cpu=96, gpu=512)  # C of the small models
    n_layers: int = per_profile(smoke=2, cpu=3, gpu=8)  # L of the small models
    n_heads: int = per_profile(smoke=4, cpu=4, gpu=8)  # H of the small models
    # training context; extrapolation is measured at multiples of it
    train_len: int = per_profile(smoke=48, cpu=64, gpu=512)
    batch_size: int = per_profile(smoke=12, cpu=16, gpu=32)  # sequences per training step
    steps: int = per_profile(smoke=40, cpu=150, gpu=5000)  # training steps of each positional-encoding model
    lr: float = per_profile(smoke=3e-3, cpu=3e-3, gpu=1e-3)  # peak AdamW learning rate (warm-up then cosine)
    # evaluate at these multiples of train_len
    eval_multiples: tuple[int, ...] = per_profile(smoke=(1, 2, 4, 8), cpu=(1, 2, 4, 8), gpu=(1, 2, 4, 8, 16))
    eval_tokens: int = per_profile(smoke=1536, cpu=4096, gpu=262144)  # held-out tokens scored at every length
    rope_factor: float = 4.0  # context-extension factor s of PI / NTK / YaRN
    finetune_steps: int = per_profile(smoke=10, cpu=40, gpu=500)  # short fine-tune at rope_factor * train_len
    passkey_fraction: float = 0.25  # share of training rows that are passkey prompts
    passkey_digits: int = 4  # digits of the hidden key
    passkey_trials: int = per_profile(smoke=8, cpu=24, gpu=100)  # prompts per length in the retrieval test
    ablation_steps: int = per_profile(smoke=40, cpu=150, gpu=2000)  # steps of each norm / activation variant
    # T axis of the time / memory plot
    cost_lengths: tuple[int, ...] = per_profile(
        smoke=(128, 256, 512), cpu=(128, 256, 512, 1024, 2048, 4096), gpu=(512, 1024, 2048, 4096, 8192, 16384)
    )
    cost_batch: int = per_profile(smoke=1, cpu=1, gpu=4)  # B of the attention-cost measurement
    cost_heads: int = per_profile(smoke=4, cpu=4, gpu=32)  # H of the attention-cost measurement
    cost_head_dim: int = per_profile(smoke=64, cpu=64, gpu=128)  # D of the attention-cost measurement
    cost_repeats: int = per_profile(smoke=2, cpu=3, gpu=10)  # timed calls per point (fastest kept)
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
