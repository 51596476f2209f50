"""What a request asks for and what the engine hands back, shared by the engine, server and benchmarks.

``SamplingParams`` follows the OpenAI / vLLM request fields. ``temperature == 0`` means greedy;
the other filters go through :func:`llmbook.decoding.process_logits` in ``generate``'s order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llmbook.decoding import SamplingConfig

FINISH_REASONS = ("stop", "length", "abort")  # OpenAI's names; "abort" = cancelled or client gone


@dataclass(kw_only=True)
class SamplingParams:
    max_tokens: int = 16  # new tokens at most
    temperature: float = 1.0  # 0 = greedy (argmax)
    top_p: float = 1.0  # nucleus mass; 1 = off
    top_k: int = 0  # keep the k most likely; 0 = off
    min_p: float = 0.0  # probability floor relative to the top token; 0 = off
    repetition_penalty: float = 1.0  # CTRL's theta; 1 = off
    stop: tuple[str, ...] = ()  # the text ends before the first of these strings
    seed: int | None = None  # per-request generator: the same seed gives the same sample in any batch
    n: int = 1  # parallel samples of one prompt (they share its KV blocks: copy-on-write)
    ignore_eos: bool = False  # keep going past EOS (benchmarks that fix the output length)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field (the server turns it into a 400)."""
        checks = [
            (self.max_tokens >= 1, "max_tokens", "must be >= 1"),
            (self.temperature >= 0, "temperature", "must be >= 0 (0 = greedy)"),
            (0 < self.top_p <= 1, "top_p", "must be in (0, 1]"),
            (self.top_k >= 0, "top_k", "must be >= 0 (0 = off)"),
            (0 <= self.min_p <= 1, "min_p", "must be in [0, 1]"),
            (self.repetition_penalty > 0, "repetition_penalty", "must be > 0"),
            (1 <= self.n <= 16, "n", "must be between 1 and 16"),
            (all(isinstance(s, str) and s for s in self.stop), "stop", "must be non-empty strings"),
        ]
        for ok, name, why in checks:
            if not ok:
                raise ValueError(f"{name}={getattr(self, name)!r}: {why}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def sampling_config(self) -> SamplingConfig:
        """The decoding chapter's filter settings for a sampled (non-greedy) request."""
        return SamplingConfig(temperature=self.temperature, top_k=self.top_k or None,
                              top_p=self.top_p if self.top_p < 1 else None,
                              min_p=self.min_p or None, repetition_penalty=self.repetition_penalty)


@dataclass(kw_only=True)
class RequestOutput:
    """One step's news for one sample of one request (``index`` < n)."""

    request_id: str
    index: int = 0
    new_token_ids: list[int] = field(default_factory=list)  # tokens produced this step
    text: str = ""  # the whole completion so far (stop strings cut off)
    delta: str = ""  # text added this step (what a stream sends)
    finished: bool = False
    finish_reason: str | None = None  # one of FINISH_REASONS once finished
    prompt_tokens: int = 0
    completion_tokens: int = 0
