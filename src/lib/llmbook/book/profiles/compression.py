"""Config of the compression chapter: which model, how much calibration and evaluation text, what is swept."""

from __future__ import annotations

from dataclasses import dataclass

from llmbook.book.profiles.base import TorchChapterConfig, per_profile


@dataclass(kw_only=True)
class CompressionChapterConfig(TorchChapterConfig):
    # Hugging Face id or directory of a LLaMA-style causal LM; None = SmolLM2-135M-Instruct from its registry package
    model: str | None = per_profile(smoke=None, cpu=None, gpu="HuggingFaceTB/SmolLM2-1.7B-Instruct")
    layers: int | None = per_profile(smoke=1, cpu=None, gpu=None)  # first N decoder blocks: a cheap smoke model
    torch_threads: int | None = per_profile(smoke=1, cpu=None, gpu=None)
    # calibration: GPTQ's paper uses 128 random 2048-token segments; a 135M model on 2 cores gets fewer, shorter
    # ones, still more tokens (2048) than the widest layer has inputs (1536), so every Hessian has full rank
    calibration_samples: int = per_profile(smoke=4, cpu=8, gpu=128)
    calibration_len: int = per_profile(smoke=64, cpu=256, gpu=2048)
    eval_tokens: int = per_profile(smoke=256, cpu=2048, gpu=65536)  # held-out tokens scored for perplexity
    eval_context: int = per_profile(smoke=64, cpu=512, gpu=2048)  # window of the perplexity evaluation
    choice_items: int = per_profile(smoke=4, cpu=16, gpu=1000)  # multiple-choice test items (continuations)
    # score the multiple-choice items for every frontier row, or only for the full-precision model (smoke: the
    # code path runs once; the scores of a one-block model are noise anyway)
    choices_every_row: bool = per_profile(smoke=False, cpu=True, gpu=True)
    # columns per quantisation group: SmolLM2-135M is 576 wide, which 128 does not divide (576 = 9 x 64)
    group_size: int = 64
    rtn_bits: tuple[int, ...] = (8, 4, 3)  # round-to-nearest bit widths on the frontier
    awq_grid: int = per_profile(smoke=4, cpu=10, gpu=20)  # AWQ's exponents alpha tried per scaling group
    smoothquant_alpha: float = 0.5  # SmoothQuant's migration strength
    int8_threshold: float = 6.0  # LLM.int8(): input columns with |x| above this stay in floating point
    sparsity: float = 0.5  # unstructured pruning target (2:4 is always 50 %)
    svd_keep: tuple[float, ...] = per_profile(smoke=(0.5,), cpu=(0.9, 0.7), gpu=(0.9, 0.7, 0.5))
    # optimizer steps of each student; on CPU every step also runs the teacher (~2 s for 256 tokens of SmolLM2)
    distill_steps: int = per_profile(smoke=4, cpu=80, gpu=2000)
    distill_batch: int = per_profile(smoke=2, cpu=4, gpu=32)
    distill_seq_len: int = per_profile(smoke=32, cpu=64, gpu=512)
    student_hidden: int = per_profile(smoke=64, cpu=128, gpu=512)  # the student's model width
    student_layers: int = per_profile(smoke=1, cpu=2, gpu=8)
    distill_temperature: float = 1.0  # tau > 1 softens both distributions (Hinton et al.)
    latency_repeats: int = per_profile(smoke=3, cpu=20, gpu=50)  # timed calls per int8/fp32 latency figure

    def validate(self) -> None:
        super().validate()
        self.check(self.layers is None or self.layers >= 1, "layers", "must be None or >= 1")
        for key in ("calibration_samples", "choice_items", "awq_grid", "distill_steps", "distill_batch",
                    "student_layers", "latency_repeats"):
            self.check(getattr(self, key) >= 1, key, "must be at least 1")
        self.check(self.calibration_len >= 16, "calibration_len", "must be at least 16 tokens")
        self.check(self.eval_context >= 16, "eval_context", "must be at least 16 tokens")
        self.check(self.eval_tokens >= self.eval_context, "eval_tokens", "must fill at least one eval_context window")
        self.check(self.group_size >= 1, "group_size", "must be a positive number of columns")
        self.check(len(self.rtn_bits) >= 1 and set(self.rtn_bits) <= {2, 3, 4, 8}, "rtn_bits",
                   "needs bit widths from 2, 3, 4, 8")
        self.check(0 <= self.smoothquant_alpha <= 1, "smoothquant_alpha", "must be in [0, 1]")
        self.check(self.int8_threshold > 0, "int8_threshold", "must be positive")
        self.check(0 < self.sparsity < 1, "sparsity", "must be in (0, 1)")
        self.check(len(self.svd_keep) >= 1 and all(0 < k < 1 for k in self.svd_keep), "svd_keep",
                   "needs fractions of parameters kept, each in (0, 1)")
        self.check(self.student_hidden >= 16 and self.student_hidden % 4 == 0, "student_hidden",
                   "must be a multiple of 4, at least 16")
        self.check(self.distill_seq_len >= 8, "distill_seq_len", "must be at least 8")
        self.check(self.distill_temperature > 0, "distill_temperature", "must be positive")
