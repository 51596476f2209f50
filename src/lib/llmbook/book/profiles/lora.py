"""Config of the LoRA chapter: which model, how long each fine-tuning run is, what is swept."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from llmbook.book.profiles.base import TorchChapterConfig, per_profile

ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(kw_only=True)
class LoraChapterConfig(TorchChapterConfig):
    # Hugging Face id or directory of a causal LM; None = SmolLM2-135M-Instruct from its registry package
    model: str | None = per_profile(smoke=None, cpu=None, gpu="HuggingFaceTB/SmolLM2-1.7B-Instruct")
    # keep only the first N decoder blocks (None: all): a real but cheap model for the smoke run
    layers: int | None = per_profile(smoke=2, cpu=None, gpu=None)
    precision: Literal["fp32", "bf16"] = per_profile(smoke="fp32", cpu="fp32", gpu="bf16")  # CPU bf16 is slow
    torch_threads: int | None = per_profile(smoke=1, cpu=None, gpu=None)  # one process: use every core
    n_train: int = per_profile(smoke=16, cpu=400, gpu=5000)  # training examples per task
    n_dev: int = per_profile(smoke=8, cpu=48, gpu=300)  # for choosing the merge weights
    n_test: int = per_profile(smoke=8, cpu=96, gpu=1000)  # reported, never tuned on
    steps: int = per_profile(smoke=2, cpu=30, gpu=400)  # optimizer steps of every fine-tuning run
    batch_size: int = per_profile(smoke=4, cpu=8, gpu=32)
    max_len: int = 128  # tokens of a rendered example (prompt + answer); longer ones are refused
    passage_chars: int = 120  # characters of a novel-task passage
    lr: float = 1e-3  # AdamW learning rate of LoRA-family adapters (constant)
    full_lr: float = 3e-5  # full fine-tuning moves every weight: a much smaller step
    vera_lr: float = 1e-2  # VeRA trains only scaling vectors: the paper's rates are ~10x LoRA's
    loraplus_ratio: float = 16.0  # LoRA+: B's learning rate over A's
    rank: int = 8  # LoRA rank r of the method comparison
    alpha: float = 16.0  # LoRA alpha (s = alpha / r)
    vera_rank: int = per_profile(smoke=16, cpu=256, gpu=256)  # rank of VeRA's shared random matrices
    targets: tuple[str, ...] = ALL_LINEAR  # layers the adapters wrap in the method comparison
    sweep_steps: int = per_profile(smoke=2, cpu=15, gpu=400)  # steps of each rank / placement run
    sweep_ranks: tuple[int, ...] = per_profile(smoke=(1, 4), cpu=(1, 8, 64), gpu=(1, 2, 4, 8, 16, 32, 64))
    merge_weights: tuple[float, ...] = (0.5, 0.75, 1.0)  # task-arithmetic weights tried on dev
    ties_density: float = 0.5  # TIES keeps this share of each task vector

    def validate(self) -> None:
        super().validate()
        self.check(self.layers is None or self.layers >= 1, "layers", "must be None or >= 1")
        for key in ("n_train", "n_dev", "n_test", "steps", "sweep_steps", "batch_size", "rank"):
            self.check(getattr(self, key) >= 1, key, "must be at least 1")
        self.check(self.n_train >= self.batch_size, "n_train", "must fill at least one batch")
        self.check(self.max_len >= 32, "max_len", "must be at least 32 (the chat template alone takes ~20)")
        self.check(self.passage_chars >= 20, "passage_chars", "must be at least 20")
        for key in ("lr", "full_lr", "vera_lr"):
            self.check(0 < getattr(self, key) < 1, key, "must be in (0, 1)")
        self.check(self.loraplus_ratio >= 1, "loraplus_ratio", "must be >= 1 (B learns faster than A)")
        self.check(self.alpha > 0, "alpha", "must be positive")
        self.check(self.vera_rank >= 1, "vera_rank", "must be at least 1")
        self.check(len(self.targets) >= 1, "targets", "needs at least one module name")
        self.check(len(self.sweep_ranks) >= 2 and min(self.sweep_ranks) >= 1, "sweep_ranks",
                   "needs two or more ranks, each >= 1")
        self.check(len(self.merge_weights) >= 1 and min(self.merge_weights) > 0, "merge_weights",
                   "needs one or more positive weights")
        self.check(0 < self.ties_density <= 1, "ties_density", "must be in (0, 1]")
