"""Packing: several short conversations in one training sequence, trained exactly as if they ran one by one.

Padding a batch of chat examples to its longest one wastes the compute spent on pad tokens; SFT data is mostly
short, so the waste is large. Packing concatenates conversations into sequences of at most ``max_len`` tokens
instead. Three things keep a packed sequence equivalent to its conversations run separately:

1. **Attention stays inside each document.** A block-diagonal causal mask: token ``i`` sees token ``j`` only if
   ``j <= i`` and both belong to the same conversation.
2. **Positions restart at 0** for each document, so rotary embeddings see the same positions as unpacked.
3. **No target crosses a boundary.** Position ``t`` is trained to predict label ``t + 1``, so the last token of
   one document would be trained to predict the first token of the next, a token nothing in it can foresee. Each
   document's first label is ``IGNORE``; unpacked, a first label is never a target anyway (nothing precedes it).

With all three, logits and the token-weighted mean loss equal those of the separate runs (the tests check both to
1e-5 on a small Llama). Transformers offers two ways to get (1). ``Packed.model_inputs`` passes an explicit 4-D
mask from ``packed_attention_mask`` together with the restarting ``position_ids``: a 4-D mask is used as given,
whatever the cache setting. The other way is ``position_ids`` alone: transformers infers the documents from where
positions restart, but only when there is no 2-D attention mask *and no cache*. A forward with the default
``use_cache=True`` (any hand-written one, in eval mode or train mode) builds a cache, skips that inference and lets
documents attend to each other without any error. trl passes ``use_cache=False``; this library uses the explicit
mask, which costs a (T, T) boolean per sequence and is correct either way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from llmbook.training.finetune import IGNORE, Encoded


@dataclass(frozen=True, kw_only=True)
class Packed:
    input_ids: torch.Tensor  # (T,) the documents' tokens, one after another
    labels: torch.Tensor  # (T,) their labels, IGNORE on each document's first token
    position_ids: torch.Tensor  # (T,) 0, 1, ... restarting at each document
    document_ids: torch.Tensor  # (T,) 0 for the first document's tokens, 1 for the second's, ...
    sources: tuple[int, ...]  # index of each document in the sequence given to `pack`

    @property
    def boundaries(self) -> list[int]:
        """Where each document starts, then the total length (``cu_seqlens`` in flash-attention terms)."""
        starts = (self.position_ids == 0).nonzero().flatten().tolist()
        return [*starts, len(self.input_ids)]

    def model_inputs(self, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """Keyword arguments for a causal LM forward with loss: a batch of one with the block-diagonal mask.

        ``dtype`` as in ``packed_attention_mask``: None (boolean) for sdpa, the model's float dtype for eager.
        """
        return {"input_ids": self.input_ids[None], "labels": self.labels[None],
                "position_ids": self.position_ids[None],
                "attention_mask": packed_attention_mask(self.position_ids, dtype=dtype)}


def pack(encoded: Sequence[Encoded], max_len: int) -> list[Packed]:
    """Greedy first-fit: each document, in order, joins the first sequence with room for it, else starts one.

    Documents are never split (a split reply would lose its context or its end). One longer than ``max_len``
    raises ValueError: drop or shorten it first (``encode_conversation(..., truncation="drop")``).
    """
    members: list[list[int]] = []
    room: list[int] = []
    for index, example in enumerate(encoded):
        length = len(example.input_ids)
        if not 0 < length <= max_len:
            raise ValueError(f"document {index} has {length} tokens: a packed one needs 1 to max_len={max_len}")
        for slot, free in enumerate(room):
            if length <= free:
                members[slot].append(index)
                room[slot] -= length
                break
        else:
            members.append([index])
            room.append(max_len - length)
    return [_concatenate(encoded, indices) for indices in members]


def _concatenate(encoded: Sequence[Encoded], indices: Sequence[int]) -> Packed:
    ids, labels, positions, documents = [], [], [], []
    for document, index in enumerate(indices):
        example = encoded[index]
        n = len(example.input_ids)
        ids += example.input_ids
        labels += [IGNORE, *example.labels[1:]]  # no target crosses into this document from the previous one
        positions += range(n)
        documents += [document] * n
    return Packed(input_ids=torch.tensor(ids), labels=torch.tensor(labels), position_ids=torch.tensor(positions),
                  document_ids=torch.tensor(documents), sources=tuple(indices))


def packed_attention_mask(position_ids: torch.Tensor, *, dtype: torch.dtype | None = None) -> torch.Tensor:
    """(B, 1, T, T) block-diagonal causal mask of packed sequences whose ``position_ids`` (T,) or (B, T) restart
    at 0 at each document: query ``i`` may attend to key ``j`` iff ``j <= i`` in the same document.

    ``dtype=None`` gives booleans (True = attend), which transformers' sdpa attention takes as they are. Eager
    attention *adds* the mask to its scores, so it needs ``dtype`` = the model's float dtype: 0 where attended,
    the dtype's minimum elsewhere (a boolean mask there would silently add 1 to the allowed scores).
    """
    positions = position_ids if position_ids.ndim == 2 else position_ids[None]
    documents = (positions == 0).cumsum(-1)  # (B, T)
    same = documents[:, :, None] == documents[:, None, :]  # (B, T, T)
    length = positions.shape[-1]
    causal = torch.ones(length, length, dtype=torch.bool, device=positions.device).tril()
    allowed = (same & causal)[:, None]
    if dtype is None:
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=positions.device).masked_fill(~allowed,
                                                                                         torch.finfo(dtype).min)
