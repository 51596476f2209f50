"""In-process Hugging Face baselines on the same workload as the engine: what serving looks like without one.

Both replay a :func:`llmbook.serving.load.make_workload` workload in real time: a request becomes visible
at its arrival (``time.perf_counter`` from the run's start) and its latencies count from there, so the
queueing the baselines cause shows up in TTFT exactly as a server's queue would. They fill the same
:class:`~llmbook.serving.load.RequestRecord` that :func:`llmbook.serving.load.summarize` reads.

- :func:`serve_one_at_a_time`: ``model.generate`` per request, in arrival order. Each decoding step is a
  batch of one, so the GPU idles on memory bandwidth while the queue grows.
- :func:`serve_static_batches`: the requests that have arrived (up to ``batch_size``) are left-padded
  into one ``generate`` that runs until its *longest* request is done. Short requests finish early but
  their rows keep decoding; new arrivals wait for the whole batch. Continuous batching (Yu et al. 2022,
  Orca, OSDI; vLLM, arXiv:2309.06180) removes both wastes, and the chapter measures the difference.

Times come from a streamer: ``generate`` hands it the prompt once, then each step's new tokens, and
the stamp of step ``k`` is when token ``k`` of every row in the batch came out. Decoding is greedy with
``min_new_tokens = max_new_tokens`` (the ``ignore_eos`` of the HTTP runs), so every request produces
exactly ``max_tokens`` tokens.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence

import torch
from torch import nn
from transformers.generation.streamers import BaseStreamer

from llmbook.model.modes import eval_mode
from llmbook.progress import ProgressBar
from llmbook.serving.load import RequestRecord, WorkloadRequest


class StampStreamer(BaseStreamer):
    """Records, for each decoding step, the time its tokens came out (seconds since ``start``)."""

    def __init__(self, start: float):
        self.start = start  # the run's perf_counter origin
        self.stamps: list[float] = []  # stamps[k] = when token k (0-based) of every row was produced
        self._prompt_seen = False  # generate's first put is the prompt, not a new token

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        self.stamps.append(time.perf_counter() - self.start)

    def end(self) -> None:
        pass


def _pad_id(tokenizer) -> int:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("tokenizer: needs a pad_token or an eos_token (used as the pad) to batch prompts")
    return int(pad)


def _check(workload: Sequence[WorkloadRequest]) -> list[int]:
    """Indices of ``workload`` in arrival order (ties keep the workload's order)."""
    if not workload:
        raise ValueError("workload: must hold at least one request")
    for request in workload:
        if request.max_tokens < 1:
            raise ValueError(f"max_tokens={request.max_tokens!r}: every request must ask for >= 1 token")
    return sorted(range(len(workload)), key=lambda i: workload[i].arrival)


def _sleep_until(start: float, at: float) -> None:
    time.sleep(max(0.0, start + at - time.perf_counter()))


def generate_batch(model: nn.Module, prompt_ids: Sequence[Sequence[int]], *, max_new_tokens: int, pad_id: int,
                   start: float) -> tuple[list[list[int]], list[float]]:
    """One greedy ``generate`` over left-padded prompts: ``(new ids per row, stamp per step)``.

    Left padding puts every row's last prompt token in the same column, where the first new token is
    read; the attention mask hides the pads (and generate derives positions from it).
    """
    device = next(model.parameters()).device
    width = max(len(ids) for ids in prompt_ids)
    input_ids = torch.full((len(prompt_ids), width), pad_id, dtype=torch.long)  # (B, T)
    attention_mask = torch.zeros_like(input_ids)
    for row, ids in enumerate(prompt_ids):
        input_ids[row, width - len(ids):] = torch.tensor(list(ids), dtype=torch.long)
        attention_mask[row, width - len(ids):] = 1
    streamer = StampStreamer(start)
    out = model.generate(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), do_sample=False,
                         max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens, pad_token_id=pad_id,
                         streamer=streamer)
    return out[:, width:].tolist(), streamer.stamps


def _record(request: WorkloadRequest, sent: float, prompt_len: int, new_ids: list[int], stamps: list[float]
            ) -> RequestRecord:
    """The request's own share of a generate: its first ``max_tokens`` tokens and the stamp of the last one."""
    ids = new_ids[: request.max_tokens]
    return RequestRecord(arrival=request.arrival, sent=sent, first_token=stamps[0], finished=stamps[len(ids) - 1],
                         prompt_tokens=prompt_len, output_tokens=len(ids), token_ids=ids)


def serve_one_at_a_time(model: nn.Module, tokenizer, workload: Sequence[WorkloadRequest], *, progress: bool = False
                        ) -> tuple[list[RequestRecord], float]:
    """Serve ``workload`` with one ``generate`` per request in arrival order; ``(records in workload order, duration)``.

    A request starts at ``max(its arrival, the previous request's end)``; ``duration`` ends with the last token.
    """
    order = _check(workload)
    pad_id = _pad_id(tokenizer)
    records: list[RequestRecord | None] = [None] * len(workload)
    start = time.perf_counter()
    with eval_mode(model), torch.no_grad(), ProgressBar(total=len(workload), desc="one at a time",
                                                        disable=not progress) as bar:
        for i in order:
            request = workload[i]
            _sleep_until(start, request.arrival)
            sent = time.perf_counter() - start
            ids = tokenizer(request.prompt)["input_ids"]
            new, stamps = generate_batch(model, [ids], max_new_tokens=request.max_tokens, pad_id=pad_id, start=start)
            records[i] = _record(request, sent, len(ids), new[0], stamps)
            bar.update(1)
    return records, time.perf_counter() - start


def serve_static_batches(model: nn.Module, tokenizer, workload: Sequence[WorkloadRequest], *, batch_size: int,
                         progress: bool = False) -> tuple[list[RequestRecord], float]:
    """Serve ``workload`` in static batches; ``(records in workload order, duration)``.

    The rule: when the model is free, take every request that has arrived, up to ``batch_size`` in arrival
    order; if none has, sleep until the next arrival (then take all that have arrived by then). The batch
    runs one ``generate`` with ``max_new_tokens`` = the batch's largest ``max_tokens``. A request's first
    token is the batch's first step, and it finishes at the step of its own last token, though the batch
    (and the next requests) go on until the longest row is done.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}: must be an integer >= 1")
    pending = deque(_check(workload))
    pad_id = _pad_id(tokenizer)
    records: list[RequestRecord | None] = [None] * len(workload)
    start = time.perf_counter()
    with eval_mode(model), torch.no_grad(), ProgressBar(total=len(workload), desc=f"static batches of {batch_size}",
                                                        disable=not progress) as bar:
        while pending:
            _sleep_until(start, workload[pending[0]].arrival)
            now = time.perf_counter() - start
            batch = []
            # The head has arrived (we slept until it); "not batch" spares it a float-rounding miss.
            while pending and len(batch) < batch_size and (not batch or workload[pending[0]].arrival <= now):
                batch.append(pending.popleft())
            sent = time.perf_counter() - start
            prompt_ids = [tokenizer(workload[i].prompt)["input_ids"] for i in batch]
            longest = max(workload[i].max_tokens for i in batch)
            new, stamps = generate_batch(model, prompt_ids, max_new_tokens=longest, pad_id=pad_id, start=start)
            for row, i in enumerate(batch):
                records[i] = _record(workload[i], sent, len(prompt_ids[row]), new[row], stamps)
            bar.update(len(batch))
    return records, time.perf_counter() - start
