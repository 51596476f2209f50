"""Iteration-level scheduling: which sequences run in the next forward pass, and how many tokens each.

Continuous batching (Orca, Yu et al. OSDI 2022) re-forms the batch at every step: a finished
sequence leaves at once and a waiting one joins without waiting for the batch to drain. Each step
has a token budget (``max_num_batched_tokens``), spent in this order, as in vLLM's scheduler:

1. running sequences, oldest first: one token for a decode, the next prefill chunk otherwise;
   when the pool has no block left for one of them, the *newest* running sequence is preempted
   (its blocks are freed; it goes back to the head of the queue and is recomputed later);
2. waiting sequences, first come first served, each taking the cached prefix of its prompt
   (prefix caching) and a chunk of the rest, while the budget, ``max_num_seqs`` and free blocks allow.
   The queue is never skipped: a request that does not fit waits, and those behind it wait too.

Chunked prefill (Agrawal et al. 2023, Sarathi, arXiv:2308.16369) is step 1-2 with a prompt longer
than the budget left: it runs over several steps, batched with other sequences' decodes.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from llmbook.serving.kv_cache import BlockAllocator, block_hash, prefix_hashes
from llmbook.serving.params import SamplingParams


@dataclass(kw_only=True, eq=False)
class Sequence:
    """One sample of one request: its tokens, where they are cached, and how far they are computed."""

    seq_id: int
    request_id: str
    index: int  # which of the request's n samples
    tokens: list[int]  # prompt, then generated tokens
    prompt_len: int
    params: SamplingParams
    arrival: float
    generator: torch.Generator | None = None  # per-sequence sampling stream (None for greedy)
    block_table: list[int] = field(default_factory=list)
    block_hashes: list[int] = field(default_factory=list)  # hashes of the full blocks registered so far
    num_computed: int = 0  # tokens whose keys/values are in the cache
    text: str = ""  # completion text sent so far
    finish_reason: str | None = None

    @property
    def generated(self) -> list[int]:
        return self.tokens[self.prompt_len:]

    @property
    def num_uncomputed(self) -> int:
        return len(self.tokens) - self.num_computed


@dataclass(kw_only=True)
class Scheduled:
    """One step's work: ``(sequence, number of new tokens to run)`` pairs, and who was preempted."""

    work: list[tuple[Sequence, int]] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(n for _, n in self.work)


class Scheduler:
    def __init__(self, allocator: BlockAllocator, copy_block: Callable[[int, int], None], *, block_size: int,
                 max_num_seqs: int, max_num_batched_tokens: int) -> None:
        self.allocator = allocator
        self.copy_block = copy_block  # (src, dst): copies one block's keys and values in every layer
        self.block_size = block_size
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0
        self.prefix_hit_tokens = 0  # prompt tokens taken from the prefix cache instead of computed

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> Scheduled:
        out = Scheduled()
        budget = self.max_num_batched_tokens
        scheduled: set[int] = set()
        for seq in list(self.running):
            if budget == 0:
                break
            if seq not in self.running:  # preempted to make room for an older sequence this step
                continue
            n = min(seq.num_uncomputed, budget)
            while not self._reserve(seq, n):
                victim = next(s for s in reversed(self.running) if s.seq_id not in scheduled)
                self._preempt(victim)
                out.preempted.append(victim)
                if victim is seq:
                    break
            if seq in self.running:
                self._register_full_blocks(seq, seq.num_computed + n)
                out.work.append((seq, n))
                scheduled.add(seq.seq_id)
                budget -= n
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs and not out.preempted:
            seq = self.waiting[0]
            self._take_cached_prefix(seq)
            n = min(seq.num_uncomputed, budget)
            if not self._reserve(seq, n):
                self._release(seq)  # a waiting sequence holds no blocks (else two could starve each other)
                break  # FCFS: nobody overtakes the head of the queue
            self.prefix_hit_tokens += seq.num_computed
            self.waiting.popleft()
            self.running.append(seq)
            self._register_full_blocks(seq, seq.num_computed + n)
            out.work.append((seq, n))
            budget -= n
        return out

    def _take_cached_prefix(self, seq: Sequence) -> None:
        """Share the prompt's cached full blocks; keep at least one token to compute (its logits)."""
        hashes = prefix_hashes(seq.tokens, self.block_size)
        blocks = self.allocator.lookup(hashes)[:(len(seq.tokens) - 1) // self.block_size]
        seq.block_table = [self.allocator.share(b) for b in blocks]
        seq.block_hashes = hashes[:len(blocks)]
        seq.num_computed = len(blocks) * self.block_size

    def _reserve(self, seq: Sequence, n: int) -> bool:
        """Blocks for ``n`` more tokens of ``seq`` (copying a shared, partly filled last block first)."""
        needed = math.ceil((seq.num_computed + n) / self.block_size) - len(seq.block_table)
        last_shared = (seq.num_computed % self.block_size != 0
                       and self.allocator.ref_counts[seq.block_table[seq.num_computed // self.block_size]] > 1)
        if needed + last_shared > self.allocator.num_free:
            return False
        if last_shared:
            self.copy_on_write(seq, seq.num_computed // self.block_size)
        seq.block_table += [self.allocator.allocate() for _ in range(needed)]
        return True

    def copy_on_write(self, seq: Sequence, position: int) -> None:
        old = seq.block_table[position]
        new = self.allocator.allocate()
        self.copy_block(old, new)
        self.allocator.release(old)
        seq.block_table[position] = new

    def fork(self, parent: Sequence, child: Sequence) -> None:
        """``child`` continues from ``parent``'s tokens and shares all its blocks (copy-on-write)."""
        child.block_table = [self.allocator.share(b) for b in parent.block_table]
        child.block_hashes = list(parent.block_hashes)
        child.num_computed = parent.num_computed
        self.running.append(child)

    def _register_full_blocks(self, seq: Sequence, num_tokens: int) -> None:
        """Name the blocks that this step fills, so other prompts can reuse them: even a sequence
        scheduled in the same step may, because each layer writes every new key before any attention."""
        for position in range(len(seq.block_hashes), num_tokens // self.block_size):
            tokens = seq.tokens[position * self.block_size:(position + 1) * self.block_size]
            h = block_hash(seq.block_hashes[-1] if seq.block_hashes else None, tokens)
            seq.block_hashes.append(h)
            self.allocator.register(seq.block_table[position], h)

    def _release(self, seq: Sequence) -> None:
        for block in seq.block_table:
            self.allocator.release(block)
        seq.block_table, seq.block_hashes, seq.num_computed = [], [], 0

    def _preempt(self, seq: Sequence) -> None:
        """Recompute policy: drop the cache, keep the tokens (prompt + generated) as the new prompt."""
        self.running.remove(seq)
        self._release(seq)
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    def finish(self, seq: Sequence) -> None:
        """Free a finished or aborted sequence's blocks, wherever it is."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self._release(seq)
