"""Profile of the pretraining chapter: the base model's shape, the run length, the resume test, the scaling sweep."""

from __future__ import annotations

from dataclasses import dataclass

from llmbook.profiles import PROFILES, TorchChapterConfig, register

SMOKE = {
    "data_profile": "smoke",
    "d_model": 64,
    "n_layers": 2,
    "n_heads": 4,
    "seq_len": 64,
    "batch_size": 8,
    "steps": 60,
    "warmup_steps": 6,
    "lr": 3e-3,
    "eval_every": 20,
    "eval_tokens": 4096,
    "resume_steps": 6,
    "sample_tokens": 24,
    "sweep_d_models": (16, 24, 32, 48, 64),
    "sweep_tokens": (8192, 24576),
    "heldout_d_model": 96,
    "peak_matmul_n": 512,
    "dist_d_model": 64,
    "dist_n_layers": 2,
    "dist_seq_len": 64,
    "dist_steps": 6,
    "dist_engines": ("ddp",),
    "torch_threads": 1,
}
CPU = {
    "data_profile": "cpu",
    "d_model": 96,
    "n_layers": 3,
    "n_heads": 4,
    "seq_len": 128,
    "batch_size": 8,
    "steps": 300,
    "warmup_steps": 30,
    "lr": 2e-3,
    "eval_every": 50,
    "eval_tokens": 16384,
    "resume_steps": 10,
    "sample_tokens": 48,
    "sweep_d_models": (16, 32, 48, 64, 96),
    "sweep_tokens": (16384, 49152, 131072),
    "heldout_d_model": 160,
    "peak_matmul_n": 1024,
    "dist_d_model": 96,
    "dist_n_layers": 3,
    "dist_seq_len": 128,
    "dist_steps": 20,
    "dist_engines": ("ddp", "zero2", "zero3"),
    "torch_threads": None,
}
GPU = {
    "data_profile": "gpu",
    "d_model": 768,
    "n_layers": 12,
    "n_heads": 12,
    "seq_len": 1024,
    "batch_size": 32,
    "steps": 5000,
    "warmup_steps": 500,
    "lr": 6e-4,
    "eval_every": 250,
    "eval_tokens": 1_048_576,
    "resume_steps": 100,
    "sample_tokens": 96,
    "sweep_d_models": (64, 128, 192, 256, 384),
    "sweep_tokens": (20_000_000, 60_000_000, 200_000_000),
    "heldout_d_model": 512,
    "sweep_seq_len": 256,
    "precision": "bf16",
    "compile": True,
    "peak_matmul_n": 4096,
    "dist_d_model": 192,
    "dist_n_layers": 2,
    "dist_seq_len": 128,
    "dist_steps": 50,
    "dist_engines": ("ddp", "zero2", "zero3"),
    "torch_threads": None,
}


@register("pretraining", presets={"smoke": SMOKE, "cpu": CPU, "gpu": GPU, "multi-gpu": GPU})
@dataclass(kw_only=True)
class PretrainingConfig(TorchChapterConfig):
    data_profile: str = CPU["data_profile"]  # pretraining_data profile whose cleaned, tokenized corpus we train on
    val_fraction: float = 0.1  # trailing documents held out for validation loss and bits per byte
    # the base model (LLaMA-style decoder)
    d_model: int = CPU["d_model"]  # C
    n_layers: int = CPU["n_layers"]  # L
    n_heads: int = CPU["n_heads"]  # H
    seq_len: int = CPU["seq_len"]  # T, training context
    # the run
    batch_size: int = CPU["batch_size"]  # B, sequences per optimizer step
    steps: int = CPU["steps"]  # optimizer steps of the base model
    warmup_steps: int = CPU["warmup_steps"]  # linear LR warm-up, then cosine to min_lr_ratio
    min_lr_ratio: float = 0.1  # final LR / peak LR (LLaMA: 0.1)
    lr: float = CPU["lr"]  # peak AdamW learning rate
    weight_decay: float = 0.1  # decoupled decay on matrices
    eval_every: int = CPU["eval_every"]  # steps between validation evaluations
    eval_tokens: int = CPU["eval_tokens"]  # validation tokens scored at each evaluation
    precision: str = "fp32"  # "fp32" on CPU (bf16 is ~15x slower there), "bf16" on GPU
    compile: bool = False  # torch.compile the model (GPU only)
    peak_matmul_n: int = CPU["peak_matmul_n"]  # n of the n x n matmul that measures the CPU's peak FLOP/s
    # data parallelism
    dist_steps: int = CPU["dist_steps"]  # steps of the 1-process vs N-process comparison (0 = skip it)
    dist_d_model: int = CPU["dist_d_model"]  # the comparison's model: small on GPU hosts, whose check may run on CPUs
    dist_n_layers: int = CPU["dist_n_layers"]
    dist_seq_len: int = CPU["dist_seq_len"]
    dist_engines: tuple[str, ...] = CPU["dist_engines"]  # engines launched: "ddp", "zero1", "zero2", "zero3"
    dist_nproc: int = 2  # processes per launched run (on a multi-GPU host: the GPU count)
    # resume test
    resume_steps: int = CPU["resume_steps"]  # steps before and after the checkpoint in the resume demonstration
    # decoding
    sample_tokens: int = CPU["sample_tokens"]  # new tokens per decoded sample
    # scaling sweep
    sweep_d_models: tuple[int, ...] = CPU["sweep_d_models"]  # widths of the sweep models (2 layers, head dim 8 or 16)
    sweep_n_layers: int = 2  # L of every sweep model
    sweep_tokens: tuple[int, ...] = CPU["sweep_tokens"]  # token budgets D of the sweep
    sweep_seq_len: int = 64  # T of the sweep runs
    sweep_batch_size: int = 8  # B of the sweep runs
    sweep_lr: float = 3e-3  # peak LR of the sweep runs
    heldout_d_model: int = CPU["heldout_d_model"]  # width of the larger run predicted before it is trained

    def validate(self) -> None:
        super().validate()
        self.check(self.data_profile in PROFILES, "data_profile", f"must be one of {PROFILES}")
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
        self.check(all(d % 8 == 0 for d in self.sweep_d_models), "sweep_d_models", "every width must be a multiple of 8")
        self.check(len(set(self.sweep_tokens)) >= 2, "sweep_tokens", "needs two or more distinct budgets")
        self.check(self.sweep_n_layers >= 1, "sweep_n_layers", "must be at least 1")
        self.check(self.sweep_seq_len >= 8 and self.sweep_batch_size >= 1, "sweep_seq_len",
                   "sweep_seq_len must be >= 8 and sweep_batch_size >= 1")
        self.check(0 < self.sweep_lr < 1, "sweep_lr", "must be in (0, 1)")
        self.check(self.heldout_d_model % 8 == 0 and self.heldout_d_model > max(self.sweep_d_models), "heldout_d_model",
                   "must be a multiple of 8 larger than every sweep width")
