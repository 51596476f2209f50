"""Packed-sequence batches over a tokenized corpus, deterministic by seed and resumable by position.

Pretraining packs documents end to end into one flat token array with EOS between them
(GPT-2/3 style; no padding is wasted) and cuts it into windows of ``T`` tokens::

    tokens = d_1 <eos> d_2 <eos> d_3 <eos> ...        windows: [0, T), [T, 2T), ...

An epoch is a permutation of the windows drawn from ``numpy.random.default_rng((seed, epoch))``,
so the order depends only on ``(seed, epoch)`` and the loader's whole state is
``(epoch, cursor)``: resuming from a checkpoint reproduces the batches of an uninterrupted run.

Two more samplers serve experiments that compare models on a raw token stream:
:func:`random_windows` (endless training batches at uniformly random offsets) and
:func:`disjoint_windows` (non-overlapping evaluation windows, each scored from its own start, so
the window length is the context length measured; :func:`eval_windows` instead scores every token
exactly once with the longest context a window gives).

Attention across a document boundary lets a token see an unrelated document. Two cheap
mitigations are offered: restart ``position_ids`` at each document (RoPE then sees each
document from position 0) and a block-diagonal *document mask* (Llama 3 trains with it;
Dubey et al. 2024, arXiv:2407.21783), built by :func:`document_mask`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch


def pack_documents(docs: Iterable[list[int]], eos_id: int, dtype: type = np.int32) -> np.ndarray:
    """Concatenate token lists with ``eos_id`` after each document into one flat array."""
    parts: list[np.ndarray] = []
    for doc in docs:
        parts.append(np.asarray(doc, dtype=dtype))
        parts.append(np.asarray([eos_id], dtype=dtype))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)


def tokenize_corpus(
    texts: Iterable[str], encode: Callable[[str], list[int]], eos_id: int
) -> tuple[np.ndarray, int]:
    """Encode each document and pack; returns ``(tokens, n_bytes)`` with the UTF-8 bytes encoded."""
    texts = list(texts)
    tokens = pack_documents((encode(t) for t in texts), eos_id)
    return tokens, sum(len(t.encode("utf-8")) for t in texts)


def document_positions(tokens: torch.Tensor, eos_id: int) -> torch.Tensor:
    """``position_ids (B, T)`` that restart at 0 after every EOS (the token after an EOS starts a document)."""
    b, t = tokens.shape
    idx = torch.arange(t, device=tokens.device).expand(b, t)  # (B, T)
    starts = torch.zeros_like(tokens, dtype=torch.bool)
    starts[:, 1:] = tokens[:, :-1] == eos_id
    starts[:, 0] = True
    start_idx = torch.where(starts, idx, torch.zeros_like(idx)).cummax(dim=1).values  # last start at or before t
    return idx - start_idx


def document_mask(tokens: torch.Tensor, eos_id: int) -> torch.Tensor:
    """Causal block-diagonal mask ``(B, 1, T, T)``: True where query i may attend to key j (same document, j <= i)."""
    b, t = tokens.shape
    starts = torch.zeros_like(tokens, dtype=torch.long)
    starts[:, 1:] = (tokens[:, :-1] == eos_id).long()
    doc = starts.cumsum(dim=1)  # (B, T) document index of each token
    same = doc[:, :, None] == doc[:, None, :]  # (B, T, T)
    causal = torch.ones(t, t, dtype=torch.bool, device=tokens.device).tril()
    return (same & causal)[:, None]  # (B, 1, T, T)


@dataclass(kw_only=True)
class LoaderConfig:
    """Batch shape and order of the packed loader."""

    seq_len: int = 256  # T, tokens per window
    batch_size: int = 8  # B, windows per batch
    seed: int = 0  # the window order depends only on (seed, epoch)
    reset_positions: bool = False  # return position_ids restarting at each document
    eos_id: int | None = None  # needed for reset_positions

    def __post_init__(self) -> None:
        if self.seq_len < 2 or self.batch_size < 1:
            raise ValueError(f"seq_len must be >= 2 and batch_size >= 1, got {self.seq_len}, {self.batch_size}")
        if self.reset_positions and self.eos_id is None:
            raise ValueError("reset_positions=True needs eos_id")


class PackedLoader:
    """Endless iterator of ``{"input_ids", "labels"[, "position_ids"]}`` batches of shape ``(B, T)``.

    ``labels`` equal ``input_ids`` (the model shifts them: HF convention). State: ``epoch`` and
    ``cursor`` (windows consumed in this epoch); :meth:`state_dict` / :meth:`load_state_dict`
    save and restore it. A batch never straddles two epochs' permutations out of order: when
    fewer than ``B`` windows remain, the epoch ends and the next permutation starts.
    """

    def __init__(self, tokens: np.ndarray, cfg: LoaderConfig) -> None:
        self.tokens, self.cfg = np.asarray(tokens), cfg
        self.n_windows = len(self.tokens) // cfg.seq_len
        if self.n_windows < cfg.batch_size:
            raise ValueError(
                f"tokens ({len(self.tokens)}) hold {self.n_windows} windows of seq_len={cfg.seq_len}, "
                f"fewer than batch_size={cfg.batch_size}"
            )
        self.epoch, self.cursor = 0, 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng((self.cfg.seed, epoch)).permutation(self.n_windows)

    @property
    def batches_per_epoch(self) -> int:
        return self.n_windows // self.cfg.batch_size

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "cursor": self.cursor, "seed": self.cfg.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state.get("seed", self.cfg.seed) != self.cfg.seed:
            raise ValueError(f"state seed {state['seed']} differs from the loader's seed {self.cfg.seed}")
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])
        self._order = self._permutation(self.epoch)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        b, t = self.cfg.batch_size, self.cfg.seq_len
        if self.cursor + b > self.n_windows:
            self.epoch, self.cursor = self.epoch + 1, 0
            self._order = self._permutation(self.epoch)
        starts = self._order[self.cursor : self.cursor + b] * t
        self.cursor += b
        rows = np.stack([self.tokens[s : s + t] for s in starts]).astype(np.int64)  # (B, T)
        x = torch.from_numpy(rows)
        batch = {"input_ids": x, "labels": x.clone()}
        if self.cfg.reset_positions:
            batch["position_ids"] = document_positions(x, self.cfg.eos_id)  # type: ignore[arg-type]
        return batch


def eval_windows(tokens: np.ndarray, seq_len: int, batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
    """Sequential windows that score every token but the first exactly once.

    Windows start every ``T - 1`` tokens and overlap by one token, so window k predicts
    tokens ``k(T-1)+1 .. k(T-1)+T-1``; the last window is shorter. Batches of ``B`` windows of equal length.
    """
    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2, got {seq_len}")
    tokens = np.asarray(tokens)
    starts = list(range(0, max(1, len(tokens) - 1), seq_len - 1))
    full = [s for s in starts if s + seq_len <= len(tokens)]
    tail = [s for s in starts if s + seq_len > len(tokens)]
    for i in range(0, len(full), batch_size):
        x = torch.from_numpy(np.stack([tokens[s : s + seq_len] for s in full[i : i + batch_size]]).astype(np.int64))
        yield {"input_ids": x, "labels": x.clone()}
    for s in tail:  # at most one: the remainder
        x = torch.from_numpy(tokens[s:].astype(np.int64))[None]  # (1, T')
        if x.shape[1] >= 2:
            yield {"input_ids": x, "labels": x.clone()}


def random_windows(
    tokens: np.ndarray | torch.Tensor, *, batch_size: int, seq_len: int, seed: int = 0
) -> Iterator[torch.Tensor]:
    """Endless ``(B, T)`` batches of windows starting at uniformly random offsets of ``tokens (N,)``."""
    tokens = torch.as_tensor(tokens)
    if tokens.dim() != 1:
        raise ValueError(f"tokens must be 1-D (N,), got shape {tuple(tokens.shape)}")
    if batch_size < 1 or seq_len < 2:
        raise ValueError(f"batch_size must be >= 1 and seq_len >= 2, got {batch_size}, {seq_len}")
    if tokens.numel() <= seq_len:
        raise ValueError(f"tokens ({tokens.numel()}) must be longer than seq_len ({seq_len})")
    gen = torch.Generator().manual_seed(seed)
    while True:
        starts = torch.randint(0, tokens.numel() - seq_len + 1, (batch_size,), generator=gen)
        yield torch.stack([tokens[s : s + seq_len] for s in starts.tolist()])  # (B, T)


def disjoint_windows(
    tokens: np.ndarray | torch.Tensor, seq_len: int, batch_size: int = 8, *, max_windows: int | None = None
) -> Iterator[dict[str, torch.Tensor]]:
    """``{"input_ids", "labels"}`` batches of the first ``n`` non-overlapping ``seq_len`` windows of ``tokens (N,)``.

    Window ``k`` is ``tokens[kT : (k+1)T]`` and scores its last ``T - 1`` tokens, each from the
    window's own start, so :func:`llmbook.training.loop.evaluate` over these batches is the mean
    loss at context lengths ``1 .. T - 1``: a longer ``seq_len`` measures the model on longer
    contexts. ``n = min(N // T, max_windows)``; the remainder shorter than one window is dropped.
    """
    tokens = torch.as_tensor(tokens)
    if tokens.dim() != 1:
        raise ValueError(f"tokens must be 1-D (N,), got shape {tuple(tokens.shape)}")
    if seq_len < 2 or batch_size < 1:
        raise ValueError(f"seq_len must be >= 2 and batch_size >= 1, got {seq_len}, {batch_size}")
    n = tokens.numel() // seq_len
    if max_windows is not None:
        n = min(n, max_windows)
    if n < 1:
        raise ValueError(f"tokens ({tokens.numel()}) shorter than one window of seq_len={seq_len}")
    windows = tokens[: n * seq_len].view(n, seq_len).long()  # (N,) -> (n, T)
    return ({"input_ids": x, "labels": x.clone()} for x in windows.split(batch_size))  # (B, T) each
