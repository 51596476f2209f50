"""Config of the post-training chapter: SFT, the DPO family, reward models, GRPO and reward hacking."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from llmbook.book.profiles.base import Profile, TorchChapterConfig, per_profile

# llmbook.alignment.preference.METHODS, spelled here so that reading a config never imports torch
# (tests/test_alignment_training.py checks the two agree)
PREFERENCE_METHODS = ("dpo", "cdpo", "ipo", "simpo", "orpo", "kto")


@dataclass(kw_only=True)
class PostTrainingConfig(TorchChapterConfig):
    # Hugging Face id or directory of a chat model; None = SmolLM2-135M-Instruct from its registry package
    model: str | None = per_profile(smoke=None, cpu=None, gpu="HuggingFaceTB/SmolLM2-360M-Instruct")
    layers: int | None = per_profile(smoke=2, cpu=None, gpu=None)  # first N decoder blocks only (smoke: cheap)
    precision: Literal["fp32", "bf16"] = per_profile(smoke="fp32", cpu="fp32", gpu="bf16")
    torch_threads: int | None = per_profile(smoke=1, cpu=None, gpu=None)
    # the book's own base model (chapter 4) taught a chat format from scratch
    base_profile: Profile = per_profile(smoke="smoke", cpu="cpu", gpu="gpu")  # chapter 4's profile
    base_sft_steps: int = per_profile(smoke=30, cpu=300, gpu=2000)
    base_batch_size: int = per_profile(smoke=4, cpu=16, gpu=64)
    base_lr: float = 1e-3
    # the task (word problems with checkable answers) and its splits
    n_train: int = per_profile(smoke=8, cpu=96, gpu=4000)
    n_dev: int = per_profile(smoke=8, cpu=32, gpu=500)
    n_test: int = per_profile(smoke=4, cpu=96, gpu=1000)
    max_new_tokens: int = per_profile(smoke=8, cpu=40, gpu=64)  # answer budget when sampling and evaluating
    kl_prompts: int = per_profile(smoke=4, cpu=24, gpu=200)  # dev prompts sampled to estimate KL to the SFT model
    max_len: int = 192  # prompt + answer tokens of a training sequence; longer ones are refused
    batch_size: int = per_profile(smoke=4, cpu=8, gpu=32)
    # SFT on worked solutions
    sft_steps: int = per_profile(smoke=2, cpu=40, gpu=500)
    sft_lr: float = 5e-5
    # preference data: G samples per training prompt from the SFT model, correct vs wrong
    samples_per_prompt: int = per_profile(smoke=2, cpu=4, gpu=8)
    # the DPO family
    methods: tuple[str, ...] = PREFERENCE_METHODS
    pref_steps: int = per_profile(smoke=1, cpu=16, gpu=300)
    pref_lr: float = 5e-6
    beta: float = 0.1  # KL strength of DPO-family losses (the study map's beta)
    simpo_beta: float = 2.0  # SimPO rescales length-averaged log-probs: its beta is ~20x DPO's
    ipo_beta: float = 0.5  # IPO's target margin is 1/(2 beta) on summed log-probs
    trl_steps: int = per_profile(smoke=2, cpu=6, gpu=30)  # steps of the ours-vs-trl DPO run
    # reward model
    rm_steps: int = per_profile(smoke=2, cpu=30, gpu=400)
    rm_lr: float = 2e-5
    # RLHF: PPO against the reward model, with a value model
    ppo_steps: int = per_profile(smoke=2, cpu=12, gpu=200)
    ppo_prompts: int = per_profile(smoke=2, cpu=8, gpu=64)  # prompts (one answer each) per step
    ppo_lr: float = 2e-6
    ppo_value_lr: float = 1e-5
    ppo_beta: float = 0.1  # KL penalty per token (the study map's beta)
    # GRPO
    grpo_steps: int = per_profile(smoke=2, cpu=16, gpu=200)
    grpo_prompts: int = per_profile(smoke=2, cpu=4, gpu=16)  # prompts per step
    group_size: int = per_profile(smoke=2, cpu=4, gpu=8)  # answers per prompt (G)
    grpo_lr: float = 2e-6
    grpo_beta: float = 0.04  # KL penalty to the reference (trl's default 0.0, DeepSeekMath's 0.04)
    # reward hacking: GRPO against the learned reward model
    hack_steps: int = per_profile(smoke=2, cpu=16, gpu=200)
    hack_lr: float = 1e-5

    def validate(self) -> None:
        super().validate()
        self.check(self.layers is None or self.layers >= 1, "layers", "must be None or >= 1")
        for key in ("base_sft_steps", "base_batch_size", "n_train", "n_dev", "n_test", "max_new_tokens", "batch_size",
                    "kl_prompts", "sft_steps", "pref_steps", "trl_steps", "rm_steps", "grpo_steps", "grpo_prompts",
                    "ppo_steps", "ppo_prompts", "hack_steps"):
            self.check(getattr(self, key) >= 1, key, "must be at least 1")
        self.check(self.n_train >= self.batch_size, "n_train", "must fill at least one batch")
        self.check(self.samples_per_prompt >= 2, "samples_per_prompt", "needs 2+ samples (a right and a wrong one)")
        self.check(self.group_size >= 2, "group_size", "GRPO compares 2+ answers per prompt")
        for key in ("grpo_prompts", "ppo_prompts"):
            self.check(getattr(self, key) <= self.n_train, key, "must be at most n_train")
        self.check(self.max_len >= 64, "max_len", "must be at least 64 (a prompt and its chat template take ~50)")
        unknown = sorted(set(self.methods) - set(PREFERENCE_METHODS))
        self.check(not unknown and "dpo" in self.methods, "methods",
                   f"DPO (the baseline of the win-rates) and any others of {list(PREFERENCE_METHODS)}")
        for key in ("base_lr", "sft_lr", "pref_lr", "rm_lr", "ppo_lr", "ppo_value_lr", "grpo_lr", "hack_lr"):
            self.check(0 < getattr(self, key) < 1, key, "must be in (0, 1)")
        for key in ("beta", "simpo_beta", "ipo_beta", "ppo_beta"):
            self.check(getattr(self, key) > 0, key, "must be positive")
        self.check(self.grpo_beta >= 0, "grpo_beta", "must be >= 0")
