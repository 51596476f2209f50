"""Load generation for a serving engine: an open-loop workload, a streaming client, and the report.

A serving benchmark replays a *workload*: requests arrive as a Poisson process at ``rate`` requests
per second (exponential gaps of mean ``1/rate``), each with a prompt and a fixed output length, and
the client sends every request at its arrival time whether or not the earlier ones have finished
(an open loop, as vLLM's ``benchmark_serving``; Kwon et al. 2023, arXiv:2309.06180). Output lengths
are skewed like chat traffic (many short answers, a long tail): lognormal, clipped to a range.

Every request leaves a :class:`RequestRecord` with times in seconds from the run's start, and
:func:`summarize` turns the records into the numbers the chapter tables show:

    TTFT = first_token - arrival                  time to first token (queueing included)
    TPOT = (finished - first_token) / (n_out - 1)  time per output token after the first
    E2E  = finished - arrival                      end-to-end latency
    throughput = sum(n_out) / duration             output tokens per second

Latencies count from the *arrival*, not from the send, so a request that waited (in a client
semaphore, in the server's queue, or behind an in-process baseline's earlier requests) shows the
wait: that is the latency a user sees. ``sent - arrival`` keeps the client-side part visible.

:func:`run_load` drives any OpenAI-compatible server (ours or vLLM's) through ``/v1/completions``
with ``stream: true``; :mod:`llmbook.serving.baselines` fills the same records in process.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np

LengthSampler = Callable[[np.random.Generator], int]


@dataclass(kw_only=True, frozen=True)
class WorkloadRequest:
    prompt: str
    max_tokens: int  # output length the request asks for (sent with ignore_eos, so it is also what it gets)
    arrival: float  # seconds from the run's start at which the request may be sent


def lognormal_lengths(low: int, high: int) -> LengthSampler:
    """Output lengths lognormal with median ``sqrt(low * high)`` and ``sigma = ln(high / low) / 4``, clipped.

    ±2 sigma spans ``[low, high]``, so about 5% of draws land on the clip points; the mean lies above the
    median (a right tail), as in chat logs such as ShareGPT.
    """
    mu = 0.5 * (math.log(low) + math.log(high))
    sigma = max((math.log(high) - math.log(low)) / 4, 1e-12)

    def sample(rng: np.random.Generator) -> int:
        return int(np.clip(round(rng.lognormal(mu, sigma)), low, high))

    return sample


def make_workload(prompts: Sequence[str], *, n: int, rate: float, output_tokens: tuple[int, int] | LengthSampler,
                  seed: int = 0) -> list[WorkloadRequest]:
    """``n`` requests: Poisson arrivals at ``rate`` req/s (``math.inf``: all at t=0), prompts drawn from the pool.

    The first request arrives at 0 and each gap is ``Exponential(1/rate)``. ``output_tokens`` is either a
    ``(min, max)`` range for :func:`lognormal_lengths` or a function of a numpy ``Generator`` returning a
    length. Arrivals, prompts and lengths use independent streams of ``seed``, so changing one setting
    (say, the rate) leaves the other two draws as they were.
    """
    if not prompts or not all(isinstance(p, str) and p for p in prompts):
        raise ValueError("prompts: must be a non-empty sequence of non-empty strings")
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n={n!r}: must be an integer >= 1")
    if not rate > 0:  # also catches NaN
        raise ValueError(f"rate={rate!r}: must be > 0 requests per second (math.inf = all at once)")
    if callable(output_tokens):
        sampler = output_tokens
    else:
        pair = tuple(output_tokens) if isinstance(output_tokens, tuple | list) else ()
        if not (len(pair) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in pair)
                and 1 <= pair[0] <= pair[1]):
            raise ValueError(f"output_tokens={output_tokens!r}: must be a (min, max) pair of integers with "
                             "1 <= min <= max, or a function of a numpy Generator")
        sampler = lognormal_lengths(*pair)

    arrival_rng, prompt_rng, length_rng = np.random.default_rng(seed).spawn(3)
    if math.isinf(rate):
        arrivals = np.zeros(n)
    else:
        gaps = arrival_rng.exponential(1.0 / rate, size=n - 1)
        arrivals = np.concatenate([[0.0], np.cumsum(gaps)])
    picks = prompt_rng.integers(len(prompts), size=n)
    requests = []
    for arrival, pick in zip(arrivals, picks, strict=True):
        length = sampler(length_rng)
        if not isinstance(length, int | np.integer) or length < 1:
            raise ValueError(f"output_tokens: the sampler returned {length!r}; lengths must be integers >= 1")
        requests.append(WorkloadRequest(prompt=prompts[int(pick)], max_tokens=int(length), arrival=float(arrival)))
    return requests


@dataclass(kw_only=True)
class RequestRecord:
    """What happened to one request; times in seconds from the run's start (``None`` = never happened)."""

    arrival: float  # when the workload let it in
    sent: float  # when it left the client (or, in process, when generation started)
    first_token: float | None  # first non-empty piece of text
    finished: float | None  # last token (or the error)
    prompt_tokens: int  # as the server counted them (0 when it did not say)
    output_tokens: int
    error: str | None = None  # "HTTP 429: ..." and the like; the request counts as failed
    token_ids: list[int] | None = None  # generated ids, where known (the in-process baselines)

    @property
    def ok(self) -> bool:
        return self.error is None and self.first_token is not None and self.finished is not None


@dataclass(kw_only=True)
class LoadReport:
    """:func:`summarize`'s numbers: latencies in seconds, percentiles over the successful requests."""

    requests: int
    errors: int
    duration: float  # seconds from the run's start to the last request's end
    output_tokens: int  # over the successful requests
    output_throughput: float  # output tokens / s
    request_throughput: float  # successful requests / s
    ttft_p50: float
    ttft_p99: float
    tpot_p50: float  # NaN when no request had two tokens or more
    tpot_p99: float
    e2e_p50: float
    e2e_p99: float

    def row(self) -> dict[str, Any]:
        """One table row: rates rounded, latencies in milliseconds."""
        ms = {f"{name} {q} (ms)": round(1000 * getattr(self, f"{key}_{q}"), 1)
              for key, name in (("ttft", "TTFT"), ("tpot", "TPOT"), ("e2e", "E2E")) for q in ("p50", "p99")}
        return {"requests": self.requests, "errors": self.errors,
                "output tok/s": round(self.output_throughput, 1), "req/s": round(self.request_throughput, 2), **ms}


def _percentiles(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    p50, p99 = np.percentile(np.asarray(values, dtype=float), [50, 99])
    return float(p50), float(p99)


def summarize(records: Sequence[RequestRecord], duration: float) -> LoadReport:
    """Throughputs over ``duration`` and p50/p99 (numpy's linear percentile) of TTFT, TPOT and E2E.

    Failed requests count in ``errors`` and in nothing else. TPOT is defined for requests with at least two
    output tokens: ``(finished - first_token) / (output_tokens - 1)``.
    """
    if not duration > 0:
        raise ValueError(f"duration={duration!r}: must be > 0 seconds")
    good = [r for r in records if r.ok]
    ttft = [r.first_token - r.arrival for r in good]
    tpot = [(r.finished - r.first_token) / (r.output_tokens - 1) for r in good if r.output_tokens > 1]
    e2e = [r.finished - r.arrival for r in good]
    tokens = sum(r.output_tokens for r in good)
    (ttft50, ttft99), (tpot50, tpot99), (e2e50, e2e99) = _percentiles(ttft), _percentiles(tpot), _percentiles(e2e)
    return LoadReport(requests=len(records), errors=len(records) - len(good), duration=duration,
                      output_tokens=tokens, output_throughput=tokens / duration,
                      request_throughput=len(good) / duration, ttft_p50=ttft50, ttft_p99=ttft99,
                      tpot_p50=tpot50, tpot_p99=tpot99, e2e_p50=e2e50, e2e_p99=e2e99)


def completion_body(model: str, request: WorkloadRequest) -> dict[str, Any]:
    """The ``/v1/completions`` body: greedy, streamed, exactly ``max_tokens`` tokens (``ignore_eos``, a vLLM field)."""
    return {"model": model, "prompt": request.prompt, "max_tokens": request.max_tokens, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}, "ignore_eos": True}


def _error_message(status: int, body: bytes) -> str:
    """``HTTP <status>: <message>``, the message from OpenAI's ``{"error": {"message"}}`` or FastAPI's ``detail``."""
    text = body.decode("utf-8", "replace").strip()
    try:
        payload = json.loads(text)
    except ValueError:
        payload = None
    if isinstance(payload, dict):
        error = payload.get("error")
        if isinstance(error, dict) and "message" in error:
            text = str(error["message"])
        elif isinstance(error, str):
            text = error
        elif "detail" in payload:
            text = str(payload["detail"])
        elif "message" in payload:
            text = str(payload["message"])
    return f"HTTP {status}: {text[:500]}"


async def _one_request(client: httpx.AsyncClient, model: str, request: WorkloadRequest, start: float,
                       semaphore: asyncio.Semaphore | None) -> RequestRecord:
    """Sleep until the arrival, send, and read the SSE stream (``data: {...}`` lines up to ``data: [DONE]``)."""
    await asyncio.sleep(max(0.0, start + request.arrival - time.perf_counter()))
    if semaphore is not None:
        await semaphore.acquire()
    try:
        sent = time.perf_counter() - start
        first = None
        chunks = 0
        usage: dict[str, Any] | None = None
        error = None
        try:
            async with client.stream("POST", "/v1/completions", json=completion_body(model, request)) as response:
                if response.status_code != 200:
                    error = _error_message(response.status_code, await response.aread())
                else:
                    async for line in response.aiter_lines():
                        line = line.strip()
                        if not line.startswith("data:"):
                            continue  # blank separators, ": keep-alive" comments, "event:" lines
                        data = line[len("data:"):].strip()
                        if data == "[DONE]":
                            break
                        chunk = json.loads(data)
                        if "error" in chunk:  # an error after the 200 (vLLM streams it as a chunk)
                            code = chunk["error"].get("code") if isinstance(chunk["error"], dict) else None
                            error = _error_message(code if isinstance(code, int) else 200, data.encode())
                            break
                        choices = chunk.get("choices") or []
                        if choices and choices[0].get("text"):
                            chunks += 1
                            if first is None:
                                first = time.perf_counter() - start
                        if chunk.get("usage"):
                            usage = chunk["usage"]
        except (httpx.HTTPError, ValueError) as exc:  # connection, timeout, malformed JSON
            error = f"{type(exc).__name__}: {exc}"
        finished = time.perf_counter() - start
        if error is None and first is None:
            error = "the stream ended without any text"
        output = int(usage["completion_tokens"]) if usage and "completion_tokens" in usage else chunks
        prompt = int(usage.get("prompt_tokens", 0)) if usage else 0
        return RequestRecord(arrival=request.arrival, sent=sent, first_token=first, finished=finished,
                             prompt_tokens=prompt, output_tokens=output if error is None else 0, error=error)
    finally:
        if semaphore is not None:
            semaphore.release()


async def run_load(base_url: str, model: str, workload: Sequence[WorkloadRequest], *,
                   max_concurrency: int | None = None, timeout: float = 600.0
                   ) -> tuple[list[RequestRecord], float]:
    """Replay ``workload`` against an OpenAI-compatible server; ``(records in workload order, duration)``.

    ``base_url`` is the server's root (``http://host:port``; a trailing ``/v1`` is accepted). Each request is
    sent at its arrival time; ``max_concurrency`` caps the requests in flight (``None``: no cap, a pure open
    loop). ``timeout`` bounds each connect and each wait between chunks, in seconds. HTTP errors are recorded,
    not raised. ``duration`` runs from the start to the last request's end.
    """
    if not workload:
        raise ValueError("workload: must hold at least one request")
    if max_concurrency is not None and max_concurrency < 1:
        raise ValueError(f"max_concurrency={max_concurrency!r}: must be >= 1 or None (no cap)")
    if not timeout > 0:
        raise ValueError(f"timeout={timeout!r}: must be > 0 seconds")
    root = base_url.rstrip("/")
    root = root.removesuffix("/v1")
    semaphore = asyncio.Semaphore(max_concurrency) if max_concurrency else None
    # No pool cap: httpx's default of 100 connections would queue requests inside the client, unseen.
    limits = httpx.Limits(max_connections=max_concurrency, max_keepalive_connections=max_concurrency)
    async with httpx.AsyncClient(base_url=root, timeout=timeout, limits=limits) as client:
        start = time.perf_counter()
        records = await asyncio.gather(*(_one_request(client, model, r, start, semaphore) for r in workload))
        duration = time.perf_counter() - start
    return list(records), duration


def load_sync(base_url: str, model: str, workload: Sequence[WorkloadRequest], *,
              max_concurrency: int | None = None, timeout: float = 600.0) -> tuple[list[RequestRecord], float]:
    """:func:`run_load` from synchronous code; inside a running event loop (Jupyter) it runs in a fresh thread."""
    coroutine = run_load(base_url, model, workload, max_concurrency=max_concurrency, timeout=timeout)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()
