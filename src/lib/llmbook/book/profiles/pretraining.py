"""Config of the pretraining chapter: the base model's shape, the run length, the resume test, the scaling sweep."""

from __future__ import annotations

from dataclasses import dataclass

from llmbook.book.profiles.base import Profile, TorchChapterConfig, per_profile


@dataclass(kw_only=True)
class PretrainingConfig(TorchChapterConfig):
    # pretraining_data profile whose cleaned, tokenized corpus we train on
    data_profile: Profile = per_profile(smoke="smoke", cpu="cpu", gpu="gpu")
    val_fraction: float = 0.1  # trailing documents held out for validation loss and bits per byte
    # the base model (LLaMA-style decoder)
    d_model: int = per_profile(smoke=64, cpu=96, gpu=768)  # C
    n_layers: int = per_profile(smoke=2, cpu=3, gpu=12)  # L
    n_heads: int = per_profile(smoke=4, cpu=4, gpu=12)  # H
    seq_len: int = per_profile(smoke=64, cpu=128, gpu=1024)  # T, training context
    # the run
    batch_size: int = per_profile(smoke=8, cpu=8, gpu=32)  # B, sequences per optimizer step
    steps: int = per_profile(smoke=60, cpu=300, gpu=5000)  # optimizer steps of the base model
    warmup_steps: int = per_profile(smoke=6, cpu=30, gpu=500)  # linear LR warm-up, then cosine to min_lr_ratio
    min_lr_ratio: float = 0.1  # final LR / peak LR (LLaMA: 0.1)
    lr: float = per_profile(smoke=0.003, cpu=0.002, gpu=0.0006)  # peak AdamW learning rate
    weight_decay: float = 0.1  # decoupled decay on matrices
    eval_every: int = per_profile(smoke=20, cpu=50, gpu=250)  # steps between validation evaluations
    eval_tokens: int = per_profile(smoke=4096, cpu=16384, gpu=1_048_576)  # validation tokens scored at each evaluation
    # "fp32" on CPU (bf16 is ~15x slower there), "bf16" on GPU
    precision: str = per_profile(smoke="fp32", cpu="fp32", gpu="bf16")
    compile: bool = per_profile(smoke=False, cpu=False, gpu=True)  # torch.compile the model (GPU only)
    # n of the n x n matmul that measures the CPU's peak FLOP/s
    peak_matmul_n: int = per_profile(smoke=512, cpu=1024, gpu=4096)
    # data parallelism
    # steps of the 1-process vs N-process comparison (0 = skip it)
    dist_steps: int = per_profile(smoke=6, cpu=20, gpu=50)
    # the comparison's model: small on GPU hosts, whose check may run on CPUs
    dist_d_model: int = per_profile(smoke=64, cpu=96, gpu=192)
    dist_n_layers: int = per_profile(smoke=2, cpu=3, gpu=2)
    dist_seq_len: int = per_profile(smoke=64, cpu=128, gpu=128)
    # engines launched: "ddp", "zero1", "zero2", "zero3"
    dist_engines: tuple[str, ...] = per_profile(
        smoke=("ddp",), cpu=("ddp", "zero2", "zero3"), gpu=("ddp", "zero2", "zero3")
    )
    dist_nproc: int = 2  # processes per launched run (on a multi-GPU host: the GPU count)
    # resume test
    # steps before and after the checkpoint in the resume demonstration
    resume_steps: int = per_profile(smoke=6, cpu=10, gpu=100)
    # decoding
    sample_tokens: int = per_profile(smoke=24, cpu=48, gpu=96)  # new tokens per decoded sample
    # scaling sweep
    # widths of the sweep models (2 layers, head dim 8 or 16)
    sweep_d_models: tuple[int, ...] = per_profile(
        smoke=(16, 24, 32, 48, 64), cpu=(16, 32, 48, 64, 96), gpu=(64, 128, 192, 256, 384)
    )
    sweep_n_layers: int = 2  # L of every sweep model
    # token budgets D of the sweep
    sweep_tokens: tuple[int, ...] = per_profile(
        smoke=(8192, 24576), cpu=(16_384, 49_152, 131_072), gpu=(20_000_000, 60_000_000, 200_000_000)
    )
    sweep_seq_len: int = per_profile(smoke=64, cpu=64, gpu=256)  # T of the sweep runs
    sweep_batch_size: int = 8  # B of the sweep runs
    sweep_lr: float = 3e-3  # peak LR of the sweep runs
    # width of the larger run predicted before it is trained
    heldout_d_model: int = per_profile(smoke=96, cpu=160, gpu=512)
    # intra-op threads; None = torch's default (this chapter's cpu models are big enough to use both cores)
    torch_threads: int | None = per_profile(smoke=1, cpu=None, gpu=None)

    def validate(self) -> None:
        super().validate()
        self.check(0 < self.val_fraction < 0.5, "val_fraction", "must be in (0, 0.5)")
        self.check_head_split("d_model", self.n_heads)
        self.check(self.n_layers >= 1, "n_layers", "must be at least 1")
        self.check(self.seq_len >= 8, "seq_len", "must be at least 8")
        self.check(self.batch_size >= 1, "batch_size", "must be at least 1")
        self.check(self.steps >= 10, "steps", "must be at least 10")
        self.check(0 <= self.warmup_steps < self.steps, "warmup_steps", "must be in [0, steps)")
        self.check(0 <= self.min_lr_ratio <= 1, "min_lr_ratio", "must be in [0, 1]")
        self.check(0 < self.lr < 1, "lr", "must be in (0, 1)")
        self.check(self.weight_decay >= 0, "weight_decay", "must be non-negative")
        self.check(1 <= self.eval_every <= self.steps, "eval_every", "must be in [1, steps]")
        self.check(self.eval_tokens >= self.seq_len, "eval_tokens", "must cover at least one window (>= seq_len)")
        self.check(self.precision in ("fp32", "bf16", "fp16"), "precision", "must be one of ('fp32', 'bf16', 'fp16')")
        self.check(self.peak_matmul_n >= 64, "peak_matmul_n", "must be at least 64")
        self.check(1 <= self.resume_steps and 2 * self.resume_steps <= self.steps, "resume_steps",
                   "must be in [1, steps / 2]")
        self.check(self.dist_steps >= 0, "dist_steps", "must be >= 0 (0 skips the comparison)")
        self.check_head_split("dist_d_model", self.n_heads)
        self.check(self.dist_n_layers >= 1 and self.dist_seq_len >= 8, "dist_n_layers",
                   "dist_n_layers must be >= 1 and dist_seq_len >= 8")
        self.check(set(self.dist_engines) <= {"ddp", "zero1", "zero2", "zero3"}, "dist_engines",
                   "each must be one of ('ddp', 'zero1', 'zero2', 'zero3')")
        self.check(self.dist_nproc >= 2 and self.batch_size % self.dist_nproc == 0, "dist_nproc",
                   f"must be >= 2 and divide batch_size={self.batch_size}")
        self.check(self.sample_tokens >= 1, "sample_tokens", "must be at least 1")
        self.check(len(self.sweep_d_models) * len(self.sweep_tokens) >= 5, "sweep_d_models",
                   "sweep_d_models x sweep_tokens must give at least 5 runs (the law has 5 parameters)")
        self.check(all(d % 8 == 0 for d in self.sweep_d_models), "sweep_d_models",
                   "every width must be a multiple of 8")
        self.check(len(set(self.sweep_tokens)) >= 2, "sweep_tokens", "needs two or more distinct budgets")
        self.check(self.sweep_n_layers >= 1, "sweep_n_layers", "must be at least 1")
        self.check(self.sweep_seq_len >= 8 and self.sweep_batch_size >= 1, "sweep_seq_len",
                   "sweep_seq_len must be >= 8 and sweep_batch_size >= 1")
        self.check(0 < self.sweep_lr < 1, "sweep_lr", "must be in (0, 1)")
        self.check(self.heldout_d_model % 8 == 0 and self.heldout_d_model > max(self.sweep_d_models), "heldout_d_model",
                   "must be a multiple of 8 larger than every sweep width")
