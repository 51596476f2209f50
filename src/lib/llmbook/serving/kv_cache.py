"""Paged KV cache: fixed-size blocks, a block table per sequence, reference counts, prefix caching.

PagedAttention (Kwon et al. 2023, arXiv:2309.06180) stores each sequence's keys and values in
blocks of ``block_size`` token slots scattered over one preallocated pool, like pages of virtual
memory. A sequence's *block table* lists its blocks in order; token ``t`` lives in slot
``table[t // block_size] * block_size + t % block_size``. Waste is at most one partly filled block
per sequence, instead of a contiguous buffer reserved up to the maximum length.

Blocks are shared by reference count:

- **prefix caching**: a *full* block is named by a hash of its tokens and of the hash of the block
  before it (so equal hashes mean equal prefixes). A new sequence whose prompt starts with cached
  blocks takes them instead of computing them again; a block whose count falls to 0 stays findable
  until the allocator reuses it (least recently freed first), as in vLLM's automatic prefix caching.
- **copy-on-write**: parallel samples of one prompt start with the same blocks; only the partly
  filled last block is ever written again, so a sequence copies it before writing if it is shared.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch


class OutOfBlocks(RuntimeError):
    """No free block is left: the scheduler preempts a sequence and retries."""


def block_hash(parent: int | None, tokens: Sequence[int]) -> int:
    """Name of a full block: its tokens and everything before them (through the parent's name)."""
    return hash((parent, tuple(tokens)))


def prefix_hashes(tokens: Sequence[int], block_size: int) -> list[int]:
    """Hashes of the full blocks of ``tokens`` (a trailing partial block has none)."""
    hashes: list[int] = []
    for start in range(0, len(tokens) - block_size + 1, block_size):
        hashes.append(block_hash(hashes[-1] if hashes else None, tokens[start:start + block_size]))
    return hashes


class BlockAllocator:
    """Hands out block ids, counts references, and remembers full blocks by hash."""

    def __init__(self, num_blocks: int, *, prefix_caching: bool = True) -> None:
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        self.num_blocks = num_blocks
        self.prefix_caching = prefix_caching
        self.ref_counts = [0] * num_blocks
        self.free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))  # LRU order: reuse oldest first
        self.hash_of: dict[int, int] = {}  # block -> hash, for full blocks registered in the cache
        self.block_of: dict[int, int] = {}  # hash -> block

    @property
    def num_free(self) -> int:
        return len(self.free)

    @property
    def num_used(self) -> int:
        return self.num_blocks - len(self.free)

    def allocate(self) -> int:
        """A fresh block with count 1 (evicting the least recently freed cached block if needed)."""
        if not self.free:
            raise OutOfBlocks("no free KV block")
        block, _ = self.free.popitem(last=False)
        if block in self.hash_of:  # its cached contents are about to be overwritten
            del self.block_of[self.hash_of.pop(block)]
        self.ref_counts[block] = 1
        return block

    def share(self, block: int) -> int:
        """One more owner of ``block`` (a fork, or a prefix-cache hit on a block in use or freed)."""
        if self.ref_counts[block] == 0:
            del self.free[block]
        self.ref_counts[block] += 1
        return block

    def release(self, block: int) -> None:
        if self.ref_counts[block] <= 0:
            raise RuntimeError(f"block {block} released more often than it was taken")
        self.ref_counts[block] -= 1
        if self.ref_counts[block] == 0:
            self.free[block] = None  # newest at the end: evicted last
            if block not in self.hash_of:
                self.free.move_to_end(block, last=False)  # nothing cached in it: reuse it first

    def lookup(self, hashes: Sequence[int]) -> list[int]:
        """The cached blocks of the longest prefix of ``hashes`` (not yet shared: call ``share``)."""
        blocks: list[int] = []
        if self.prefix_caching:
            for h in hashes:
                if h not in self.block_of:
                    break
                blocks.append(self.block_of[h])
        return blocks

    def register(self, block: int, h: int) -> None:
        """Make a full block findable by its hash (first writer wins; a duplicate stays private)."""
        if self.prefix_caching and h not in self.block_of and block not in self.hash_of:
            self.block_of[h] = block
            self.hash_of[block] = h


@dataclass(kw_only=True)
class CacheShape:
    num_layers: int
    num_blocks: int
    block_size: int  # token slots per block (vLLM's default is 16)
    num_kv_heads: int
    head_dim: int
    dtype: torch.dtype = torch.float32

    @property
    def bytes_per_block(self) -> int:
        return 2 * self.num_layers * self.block_size * self.num_kv_heads * self.head_dim * self.dtype.itemsize


class PagedKVCache:
    """The block pool: per layer, keys and values of shape ``(num_blocks * block_size, H_kv, D)``."""

    def __init__(self, shape: CacheShape, device: torch.device | str = "cpu") -> None:
        self.shape = shape
        slots = shape.num_blocks * shape.block_size
        self.keys = [torch.zeros(slots, shape.num_kv_heads, shape.head_dim, dtype=shape.dtype, device=device)
                     for _ in range(shape.num_layers)]
        self.values = [torch.zeros_like(k) for k in self.keys]

    def write(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store new tokens' keys and values ``(N, H_kv, D)`` at ``slots (N,)``."""
        self.keys[layer][slots] = k
        self.values[layer][slots] = v

    def copy_block(self, src: int, dst: int) -> None:
        """Copy-on-write: duplicate one block in every layer."""
        bs = self.shape.block_size
        for pool in (*self.keys, *self.values):
            pool[dst * bs:(dst + 1) * bs] = pool[src * bs:(src + 1) * bs]


def slot_indices(block_table: Sequence[int], start: int, end: int, block_size: int) -> list[int]:
    """Cache slots of token positions ``start..end-1`` of a sequence with this block table."""
    return [block_table[t // block_size] * block_size + t % block_size for t in range(start, end)]


def block_waste(cached_tokens: Sequence[int], block_size: int) -> float:
    """Share of KV slots allocated but empty when a sequence of ``n`` cached tokens holds
    ``ceil(n / block_size)`` blocks of its own (no sharing): the paged cache's internal fragmentation,
    ``1 - sum(n) / sum(block_size * ceil(n / block_size))``. 0.0 for no tokens."""
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    cached_tokens = list(cached_tokens)  # read twice below
    if any(n < 0 for n in cached_tokens):
        raise ValueError("cached_tokens must be counts >= 0")
    allocated = sum(-(-n // block_size) * block_size for n in cached_tokens)
    return 1.0 - sum(cached_tokens) / allocated if allocated else 0.0
