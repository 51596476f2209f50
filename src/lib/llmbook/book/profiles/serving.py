"""Config of the serving chapter: model, KV pool, scheduler limits, the load each measurement runs."""

from __future__ import annotations

import math
from dataclasses import dataclass

from llmbook.book.profiles.base import TorchChapterConfig, per_profile


@dataclass(kw_only=True)
class ServingChapterConfig(TorchChapterConfig):
    # HF id or folder; None = SmolLM2-135M-Instruct from its registry package
    model: str | None = per_profile(smoke=None, cpu=None, gpu="HuggingFaceTB/SmolLM2-1.7B-Instruct")
    layers: int | None = per_profile(smoke=4, cpu=None, gpu=None)  # first N blocks: a cheap smoke model
    # one thread: the server, the load generator and the baselines share two cores (see DESIGN.md)
    torch_threads: int | None = per_profile(smoke=1, cpu=1, gpu=None)
    # token slots per KV block. vLLM's default is 16; the CPU workloads' sequences are short (a few hundred
    # tokens), where half an empty block of 16 per sequence is over 4 % of the cache. Slots are gathered one
    # by one, so smaller blocks cost only longer block tables
    block_size: int = per_profile(smoke=8, cpu=8, gpu=16)
    kv_cache_mb: float = per_profile(smoke=16.0, cpu=512.0, gpu=8192.0)  # KV pool of the engine (MiB)
    max_num_seqs: int = per_profile(smoke=8, cpu=32, gpu=128)  # sequences per step at most
    max_num_batched_tokens: int = per_profile(smoke=64, cpu=256, gpu=2048)  # tokens per step at most
    equivalence_prompts: int = per_profile(smoke=3, cpu=8, gpu=16)  # prompts compared with transformers.generate
    equivalence_tokens: int = per_profile(smoke=8, cpu=32, gpu=64)  # greedy tokens each
    batch_sizes: tuple[int, ...] = per_profile(smoke=(1, 4), cpu=(1, 2, 4, 8, 16, 32), gpu=(1, 4, 16, 64, 128))
    decode_tokens: int = per_profile(smoke=4, cpu=16, gpu=64)  # decode steps timed per batch size
    load_requests: int = per_profile(smoke=4, cpu=24, gpu=200)  # requests per load run
    request_rates: tuple[float, ...] = per_profile(smoke=(math.inf,), cpu=(1.0, math.inf),
                                                   gpu=(2.0, 8.0, 32.0, math.inf))  # requests/s (inf: all at once)
    output_tokens: tuple[int, int] = per_profile(smoke=(4, 8), cpu=(16, 96), gpu=(32, 512))  # min, max per request
    static_batch_size: int = per_profile(smoke=2, cpu=8, gpu=32)  # HF static batching
    prefix_requests: int = per_profile(smoke=3, cpu=12, gpu=64)  # requests sharing one system prompt
    spec_prompts: int = per_profile(smoke=1, cpu=4, gpu=8)  # prompts decoded with speculative decoding
    spec_tokens: int = per_profile(smoke=8, cpu=64, gpu=128)  # new tokens each
    spec_k: int = 4  # tokens a draft proposes per round
    draft_layers: int = per_profile(smoke=2, cpu=8, gpu=6)  # layer-skip draft: the target's first N blocks

    def validate(self) -> None:
        super().validate()
        for key in ("block_size", "max_num_seqs", "max_num_batched_tokens", "equivalence_prompts",
                    "equivalence_tokens", "decode_tokens", "load_requests", "static_batch_size", "prefix_requests",
                    "spec_prompts", "spec_tokens", "spec_k", "draft_layers"):
            self.check(getattr(self, key) >= 1, key, "must be at least 1")
        self.check(self.layers is None or self.layers >= 1, "layers", "must be None or >= 1")
        self.check(self.kv_cache_mb > 0, "kv_cache_mb", "must be > 0")
        self.check(len(self.batch_sizes) >= 2 and min(self.batch_sizes) >= 1, "batch_sizes",
                   "needs two or more batch sizes >= 1")
        self.check(len(self.request_rates) >= 1 and min(self.request_rates) > 0, "request_rates",
                   "needs one or more rates > 0 (inf = all at once)")
        low, high = self.output_tokens
        self.check(1 <= low <= high, "output_tokens", "must be (min, max) with 1 <= min <= max")
        self.check(self.layers is None or self.draft_layers < self.layers, "draft_layers",
                   "must be fewer than the model's layers")
