"""The serving engine: requests in, tokens out, one scheduled forward pass per ``step()``.

    engine = Engine(model, tokenizer, EngineConfig(kv_cache_mb=512))
    engine.add_request("a", "Tell me a joke", SamplingParams(max_tokens=32, temperature=0))
    while engine.has_unfinished():
        for output in engine.step():
            print(output.request_id, output.delta, output.finish_reason)

or ``engine.generate(prompts, params)`` for offline batches. Each step the scheduler picks the work
(:mod:`llmbook.serving.scheduler`), the runner computes it over the paged cache
(:mod:`llmbook.serving.model_runner`), and every sequence whose tokens are all computed samples
its next token with its own parameters (the decoding chapter's filters) and seed, so a request
gets the same tokens whatever it is batched with.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field
from typing import Any

import torch

from llmbook.decoding import process_logits
from llmbook.progress import ProgressBar
from llmbook.serving.kv_cache import BlockAllocator
from llmbook.serving.model_runner import Chunk, PagedModelRunner
from llmbook.serving.params import RequestOutput, SamplingParams
from llmbook.serving.scheduler import Scheduler, Sequence


@dataclass(kw_only=True)
class EngineConfig:
    block_size: int = 16  # token slots per KV block (vLLM's default)
    num_blocks: int | None = None  # KV pool size in blocks; None = as many as kv_cache_mb holds
    kv_cache_mb: float = 512.0  # KV pool (MiB) when num_blocks is None; SmolLM2-135M fp32: 0.7 MiB per 16 tokens
    max_num_seqs: int = 32  # sequences in one batch at most
    max_num_batched_tokens: int = 256  # tokens per forward pass at most: bounds a step's latency (chunked prefill)
    max_model_len: int | None = None  # prompt + completion tokens at most; None = the model's limit (and the pool's)
    prefix_caching: bool = True  # reuse the cached blocks of a shared prompt prefix
    trace: bool = False  # keep a record of every step (for timelines)

    def validate(self) -> None:
        for name in ("block_size", "max_num_seqs", "max_num_batched_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_blocks is not None and self.num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {self.num_blocks}")
        if self.kv_cache_mb <= 0:
            raise ValueError(f"kv_cache_mb must be > 0, got {self.kv_cache_mb}")


@dataclass(kw_only=True)
class StepRecord:
    """What one step ran (kept when ``EngineConfig.trace``)."""

    step: int
    start: float  # seconds since the engine was created
    seconds: float
    work: list[tuple[str, int, int, str]]  # (request id, sample index, tokens, "prefill" or "decode")
    preempted: list[str]
    blocks_used: int
    slots_allocated: int  # KV slots in the blocks the running sequences hold (after the step)
    slots_filled: int  # of which hold a token
    slots_contiguous: int  # what per-request contiguous caches would reserve: prompt + max_tokens each
    cached_tokens: list[int] = field(default_factory=list)  # KV entries of each running sequence (any block size)


@dataclass(kw_only=True)
class EngineStats:
    waiting: int
    running: int
    blocks_used: int
    blocks_total: int
    preemptions: int
    prefix_hit_tokens: int  # prompt tokens served from the prefix cache
    computed_tokens: int  # tokens run through the model
    steps: int


@dataclass(kw_only=True)
class Sample:
    token_ids: list[int]
    text: str
    finish_reason: str | None


@dataclass(kw_only=True)
class Generation:
    """A finished request from :meth:`Engine.generate`: its ``n`` samples."""

    request_id: str
    prompt_token_ids: list[int]
    samples: list[Sample] = field(default_factory=list)


def eos_token_ids(model: Any, tokenizer: Any) -> set[int]:
    """End-of-sequence ids from the tokenizer and the model's generation config (which may list several)."""
    ids: set[int] = set()
    for value in (getattr(tokenizer, "eos_token_id", None),
                  getattr(getattr(model, "generation_config", None), "eos_token_id", None)):
        if isinstance(value, int):
            ids.add(value)
        elif value is not None:
            ids.update(value)
    return ids


class Engine:
    def __init__(self, model: Any, tokenizer: Any, config: EngineConfig | None = None) -> None:
        self.config = config = config or EngineConfig()
        config.validate()
        self.tokenizer = tokenizer
        self.eos = eos_token_ids(model, tokenizer)
        num_blocks = config.num_blocks or self._blocks_for(model, config)
        self.runner = PagedModelRunner(model, num_blocks=num_blocks, block_size=config.block_size)
        self.allocator = BlockAllocator(num_blocks, prefix_caching=config.prefix_caching)
        self.scheduler = Scheduler(self.allocator, self.runner.cache.copy_block, block_size=config.block_size,
                                   max_num_seqs=config.max_num_seqs,
                                   max_num_batched_tokens=config.max_num_batched_tokens)
        model_limit = getattr(model.config, "max_position_embeddings", None) or num_blocks * config.block_size
        self.max_model_len = min(config.max_model_len or model_limit, model_limit, num_blocks * config.block_size)
        self.sequences: dict[str, list[Sequence]] = {}  # request id -> its samples (forks join at the first token)
        self.trace: list[StepRecord] = []
        self._ids = itertools.count()
        self._born = time.perf_counter()
        self._steps = 0
        self._computed = 0

    @staticmethod
    def _blocks_for(model: Any, config: EngineConfig) -> int:
        c = model.config
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        itemsize = next(model.parameters()).dtype.itemsize
        per_block = 2 * c.num_hidden_layers * config.block_size * c.num_key_value_heads * head_dim * itemsize
        return max(1, int(config.kv_cache_mb * 2**20 // per_block))

    # ----------------------------------------------------------------------------------- requests

    def add_request(self, request_id: str, prompt: str | Seq[int], params: SamplingParams | None = None) -> int:
        """Queue a request; returns its prompt length. Raises ``ValueError`` (nothing queued) for a bad
        parameter, an empty prompt, a duplicate id or a prompt too long for ``max_model_len``."""
        params = params or SamplingParams()
        params.validate()
        if request_id in self.sequences:
            raise ValueError(f"request id {request_id!r} is already in use")
        ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"] if isinstance(prompt, str) else list(prompt)
        if not ids:
            raise ValueError("the prompt is empty")
        if len(ids) + params.max_tokens > self.max_model_len:
            raise ValueError(f"the prompt has {len(ids)} tokens and max_tokens is {params.max_tokens}: more than "
                             f"this engine's max_model_len of {self.max_model_len} tokens")
        seq = self._new_sequence(request_id, 0, ids, params)
        self.sequences[request_id] = [seq]
        self.scheduler.add(seq)
        return len(ids)

    def _new_sequence(self, request_id: str, index: int, tokens: list[int], params: SamplingParams) -> Sequence:
        generator = None
        if not params.greedy:
            seed = params.seed + index if params.seed is not None else int(torch.randint(2**62, ()).item())
            generator = torch.Generator().manual_seed(seed)
        return Sequence(seq_id=next(self._ids), request_id=request_id, index=index, tokens=list(tokens),
                        prompt_len=len(tokens), params=params, arrival=time.perf_counter(), generator=generator)

    def abort(self, request_id: str) -> bool:
        """Cancel a request (a client went away): its blocks go back to the pool at once."""
        seqs = self.sequences.pop(request_id, None)
        for seq in seqs or []:
            self.scheduler.finish(seq)
        return seqs is not None

    def has_unfinished(self) -> bool:
        return self.scheduler.has_work()

    # ----------------------------------------------------------------------------------- one step

    def step(self) -> list[RequestOutput]:
        """Run one scheduled forward pass; return what each sequence produced."""
        began = time.perf_counter()
        plan = self.scheduler.schedule()
        chunks = [Chunk(token_ids=seq.tokens[seq.num_computed:seq.num_computed + n], start=seq.num_computed,
                        block_table=seq.block_table) for seq, n in plan.work]
        kinds = ["decode" if seq.num_computed >= seq.prompt_len and seq.num_uncomputed == 1 else "prefill"
                 for seq, _ in plan.work]
        logits = self.runner.forward(chunks)
        outputs: list[RequestOutput] = []
        for (seq, n), row in zip(plan.work, logits, strict=True):
            seq.num_computed += n
            self._computed += n
            if seq.num_uncomputed == 0:  # the chunk reached the end: a new token is due
                outputs += self._advance(seq, row)
        self._steps += 1
        if self.config.trace:
            allocated, filled = self.kv_usage()
            self.trace.append(StepRecord(
                step=self._steps, start=began - self._born, seconds=time.perf_counter() - began,
                work=[(s.request_id, s.index, n, kind) for (s, n), kind in zip(plan.work, kinds, strict=True)],
                preempted=[s.request_id for s in plan.preempted], blocks_used=self.allocator.num_used,
                slots_allocated=allocated, slots_filled=filled,
                slots_contiguous=sum(s.prompt_len + s.params.max_tokens for s in self.scheduler.running),
                cached_tokens=[s.num_computed for s in self.scheduler.running]))
        return outputs

    def _advance(self, seq: Sequence, logits: torch.Tensor) -> list[RequestOutput]:
        family = [seq]
        if seq.index == 0 and len(self.sequences.get(seq.request_id, ())) < seq.params.n:
            # parallel samples: fork after the prompt, sharing its blocks (each samples its own first token)
            for index in range(1, seq.params.n):
                child = self._new_sequence(seq.request_id, index, seq.tokens, seq.params)
                child.prompt_len = seq.prompt_len
                self.scheduler.fork(seq, child)
                self.sequences[seq.request_id].append(child)
                family.append(child)
        return [self._emit(s, self._sample(s, logits)) for s in family]

    def _sample(self, seq: Sequence, logits: torch.Tensor) -> int:
        if seq.params.greedy:
            return int(logits.argmax())
        context = torch.tensor([seq.tokens], device=logits.device)
        probs = process_logits(logits[None], context, seq.params.sampling_config()).softmax(-1)
        return int(torch.multinomial(probs.cpu(), 1, generator=seq.generator))

    def _emit(self, seq: Sequence, token: int) -> RequestOutput:
        seq.tokens.append(token)
        params, reason = seq.params, None
        text = self.tokenizer.decode(seq.generated, skip_special_tokens=True)
        if token in self.eos and not params.ignore_eos:
            reason = "stop"
        cut = min((i for i in (text.find(s) for s in params.stop) if i >= 0), default=-1)
        if cut >= 0:
            text, reason = text[:cut], "stop"
        if reason is None and len(seq.generated) >= params.max_tokens:
            reason = "length"
        if reason is None:
            text = _held_back(text, params.stop)
        delta = text[len(seq.text):]
        seq.text = text
        if reason is not None:
            seq.finish_reason = reason
            self._finish(seq)
        return RequestOutput(request_id=seq.request_id, index=seq.index, new_token_ids=[token], text=text,
                             delta=delta, finished=reason is not None, finish_reason=reason,
                             prompt_tokens=seq.prompt_len, completion_tokens=len(seq.generated))

    def _finish(self, seq: Sequence) -> None:
        self.scheduler.finish(seq)
        family = self.sequences.get(seq.request_id, [])
        if len(family) == seq.params.n and all(s.finish_reason for s in family):
            del self.sequences[seq.request_id]

    # ----------------------------------------------------------------------------------- helpers

    def stats(self) -> EngineStats:
        return EngineStats(waiting=len(self.scheduler.waiting), running=len(self.scheduler.running),
                           blocks_used=self.allocator.num_used, blocks_total=self.allocator.num_blocks,
                           preemptions=self.scheduler.num_preemptions,
                           prefix_hit_tokens=self.scheduler.prefix_hit_tokens, computed_tokens=self._computed,
                           steps=self._steps)

    def kv_usage(self) -> tuple[int, int]:
        """``(allocated slots, filled slots)`` over the blocks running sequences hold (shared blocks once)."""
        filled: dict[int, int] = {}
        bs = self.config.block_size
        for seq in self.scheduler.running:
            for position, block in enumerate(seq.block_table):
                used = min(bs, max(0, seq.num_computed - position * bs))
                filled[block] = max(filled.get(block, 0), used)
        return len(filled) * bs, sum(filled.values())

    def generate(self, prompts: Seq[str | Seq[int]], params: SamplingParams | Seq[SamplingParams] | None = None,
                 *, progress: bool = False) -> list[Generation]:
        """Run ``prompts`` to completion (all queued at once) and return them in order."""
        params_list = list(params) if isinstance(params, Seq) else [params or SamplingParams()] * len(prompts)
        if len(params_list) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(params_list)} SamplingParams")
        offset = next(self._ids)
        results: dict[str, Generation] = {}
        tokens: dict[tuple[str, int], list[int]] = {}
        for i, (prompt, p) in enumerate(zip(prompts, params_list, strict=True)):
            rid = f"gen-{offset}-{i}"
            self.add_request(rid, prompt, p)
            results[rid] = Generation(request_id=rid, prompt_token_ids=list(self.sequences[rid][0].tokens),
                                      samples=[None] * p.n)  # type: ignore[list-item]
        total = sum(p.max_tokens * p.n for p in params_list)
        with ProgressBar(total=total, disable=not progress, desc="generate", unit="tok") as bar:
            while self.has_unfinished():
                for out in self.step():
                    bar.update(len(out.new_token_ids))
                    tokens.setdefault((out.request_id, out.index), []).extend(out.new_token_ids)
                    if out.finished and out.request_id in results:
                        results[out.request_id].samples[out.index] = Sample(
                            token_ids=tokens[out.request_id, out.index], text=out.text,
                            finish_reason=out.finish_reason)
            bar.update(total - bar.n)
        return list(results.values())


def _held_back(text: str, stops: Seq[str]) -> str:
    """Text safe to stream: without a half-decoded character or the start of a possible stop string."""
    text = text.rstrip("\ufffd")
    partial = max((k for stop in stops for k in range(1, min(len(stop), len(text) + 1)) if text.endswith(stop[:k])),
                  default=0)
    return text[:len(text) - partial]
