"""The engine behind a server: one thread steps it, any number of asyncio tasks wait on their own requests.

    async_engine = AsyncEngine(Engine(model, tokenizer, EngineConfig()), max_waiting=64)
    async for output in async_engine.generate("req-1", "Tell me a joke", SamplingParams(max_tokens=32)):
        print(output.delta, end="")
    async_engine.shutdown(drain_timeout=30)

The :class:`~llmbook.serving.engine.Engine` is not thread-safe and its forward passes block, so it lives in
one background thread that runs ``engine.step()`` while there is work and sleeps on a condition variable
otherwise. The event loop never touches it: a submission or an abort goes into a lock-protected inbox that
the engine thread applies between two steps, and every output goes back to the request's own
``asyncio.Queue`` through ``loop.call_soon_threadsafe`` (the only safe way into a loop from another thread).
This is the shape of vLLM's ``AsyncLLMEngine`` (Kwon et al. 2023, arXiv:2309.06180) without its processes.

Admission control happens at the door: a request is refused with :class:`QueueFull` once ``max_waiting``
requests are queued and not yet scheduled (the server answers 429, and the client backs off) rather than
letting the queue, and every queued request's time to first token, grow without bound. A consumer that
stops listening (a client gone mid-stream) aborts its request, which frees its KV blocks at once.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from llmbook.serving.engine import Engine, EngineStats
from llmbook.serving.metrics import ServingMetrics
from llmbook.serving.params import RequestOutput, SamplingParams

log = logging.getLogger(__name__)


class QueueFull(RuntimeError):
    """``max_waiting`` requests are already queued: try again later (HTTP 429)."""


class ShuttingDown(RuntimeError):
    """The engine no longer accepts requests (HTTP 503)."""


@dataclass(kw_only=True, eq=False)
class _Request:
    """One request as both threads see it: the loop side (queue, future), the engine side (timestamps)."""

    request_id: str
    prompt: str | list[int]
    params: SamplingParams
    fit_max_tokens: bool  # max_tokens = the room left in max_model_len after the prompt
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[RequestOutput | BaseException]
    accepted: asyncio.Future[int]  # the prompt length, or the ValueError that refused the request
    arrival: float = field(default_factory=time.perf_counter)
    prompt_tokens: int = 0
    first_token: float | None = None
    last: dict[int, RequestOutput] = field(default_factory=dict)  # sample index -> its latest output
    last_time: dict[int, float] = field(default_factory=dict)
    reasons: dict[int, str] = field(default_factory=dict)  # sample index -> finish reason, once finished


def _settle(future: asyncio.Future[int], value: int | BaseException) -> None:
    if future.done():  # the waiter was cancelled (client gone before the request was accepted)
        return
    if isinstance(value, BaseException):
        future.set_exception(value)
    else:
        future.set_result(value)


class RequestStream:
    """The outputs of one accepted request, as they come. Closing it (or dropping it) before the request
    finishes aborts the request; the iteration ends once every one of its ``n`` samples has finished."""

    def __init__(self, owner: AsyncEngine, request: _Request) -> None:
        self._owner, self._queue = owner, request.queue
        self.request_id = request.request_id
        self.prompt_tokens = request.prompt_tokens
        self.n = request.params.n
        self._open = set(range(self.n))  # samples not yet finished
        self._done = False

    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self) -> RequestOutput:
        if self._done:
            raise StopAsyncIteration
        item = await self._queue.get()
        if isinstance(item, BaseException):  # the engine failed, or the request was refused on shutdown
            self._done = True
            raise item
        if item.finished:
            self._open.discard(item.index)
            self._done = not self._open
        return item

    @property
    def finished(self) -> bool:
        return self._done

    def close(self) -> None:
        """Abort the request if it is still running (a no-op once it has finished)."""
        if not self._done:
            self._done = True
            self._owner.abort(self.request_id)

    async def aclose(self) -> None:
        self.close()

    def __del__(self) -> None:
        if hasattr(self, "_done"):
            self.close()


class AsyncEngine:
    """``engine`` run by a background thread, fed from asyncio; ``max_waiting`` bounds the queue (0 refuses all)."""

    def __init__(self, engine: Engine, *, max_waiting: int = 64, metrics: ServingMetrics | None = None) -> None:
        if not isinstance(max_waiting, int) or max_waiting < 0:
            raise ValueError(f"max_waiting={max_waiting!r}: must be an integer >= 0")
        self.engine = engine
        self.max_waiting = max_waiting
        self.metrics = metrics or ServingMetrics()
        self._cond = threading.Condition()  # guards everything below; the engine thread sleeps on it
        self._inbox: list[tuple[str, Any]] = []  # ("add", _Request) or ("abort", request id), applied in order
        self._queued = 0  # accepted submissions not yet in the engine (the inbox's adds and the one being added)
        self._waiting = 0  # the engine's waiting queue after the last step
        self._live = 0  # requests inside the engine
        self._accepting = True
        self._stopping = False
        self._stats = engine.stats()
        self._totals = (self._stats.preemptions, self._stats.prefix_hit_tokens)
        self.metrics.blocks_total.set(self._stats.blocks_total)
        self._thread = threading.Thread(target=self._run, name="llmbook-engine", daemon=True)
        self._thread.start()

    # ----------------------------------------------------------------------------------- the asyncio side

    @property
    def tokenizer(self) -> Any:
        return self.engine.tokenizer

    @property
    def max_model_len(self) -> int:
        return self.engine.max_model_len

    @property
    def accepting(self) -> bool:
        with self._cond:
            return self._accepting

    @property
    def num_requests(self) -> int:
        """Requests accepted and not yet finished (queued for the engine or inside it)."""
        with self._cond:
            return self._queued + self._live

    def stats(self) -> EngineStats:
        """The engine's counters as of its last step (a copy: safe to read from any thread)."""
        with self._cond:
            return replace(self._stats)

    async def submit(self, request_id: str, prompt: str | Sequence[int], params: SamplingParams | None = None,
                     *, fit_max_tokens: bool = False) -> RequestStream:
        """Queue a request and wait until the engine has taken it; then iterate the returned stream.

        Raises ``ValueError`` (bad parameter, empty or over-long prompt, duplicate id), :class:`QueueFull`
        or :class:`ShuttingDown` before any output. ``fit_max_tokens`` replaces ``params.max_tokens`` by the
        room the prompt leaves in ``max_model_len`` (a chat request that sets no limit).
        """
        params = params or SamplingParams()
        if not fit_max_tokens:
            params.validate()  # the cheap checks fail here, without a trip through the engine thread
        loop = asyncio.get_running_loop()
        request = _Request(request_id=request_id, prompt=prompt if isinstance(prompt, str) else list(prompt),
                           params=params, fit_max_tokens=fit_max_tokens, loop=loop, queue=asyncio.Queue(),
                           accepted=loop.create_future())
        with self._cond:
            if not self._accepting:
                self.metrics.rejected.inc(reason="shutting_down")
                raise ShuttingDown("the server is shutting down and accepts no new requests")
            if self._queued + self._waiting >= self.max_waiting:
                self.metrics.rejected.inc(reason="queue_full")
                raise QueueFull(f"{self._queued + self._waiting} requests are waiting, the most this server queues "
                                f"(max_waiting={self.max_waiting}): retry later")
            self._inbox.append(("add", request))
            self._queued += 1
            self._cond.notify_all()
        try:
            request.prompt_tokens = await request.accepted
        except asyncio.CancelledError:  # the caller went away while the engine was taking the request
            self.abort(request_id)
            raise
        return RequestStream(self, request)

    async def generate(self, request_id: str, prompt: str | Sequence[int],
                       params: SamplingParams | None = None) -> AsyncIterator[RequestOutput]:
        """The request's outputs (one per sample per step); stopping early aborts it. Errors as :meth:`submit`."""
        stream = await self.submit(request_id, prompt, params)
        try:
            async for output in stream:
                yield output
        finally:
            stream.close()

    def abort(self, request_id: str) -> None:
        """Cancel a request from any thread; its KV blocks go back to the pool before the next step."""
        with self._cond:
            self._inbox.append(("abort", request_id))
            self._cond.notify_all()

    def shutdown(self, drain_timeout: float = 30.0) -> None:
        """Refuse new requests, let the accepted ones finish for up to ``drain_timeout`` seconds, abort the
        rest (their streams end with ``finish_reason="abort"``), and stop the engine thread."""
        deadline = time.monotonic() + max(0.0, drain_timeout)
        with self._cond:
            self._accepting = False
            while (self._queued or self._live) and self._thread.is_alive():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            self._stopping = True
            self._cond.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join()

    # ----------------------------------------------------------------------------------- the engine thread

    def _run(self) -> None:
        live: dict[str, _Request] = {}
        busy = False
        try:
            while True:
                with self._cond:
                    while not (self._inbox or self._stopping or busy):
                        self._cond.wait()
                    inbox, self._inbox = self._inbox, []
                    stopping = self._stopping
                for kind, item in inbox:
                    if kind == "abort":
                        self._abort(item, live)
                    elif stopping:
                        self._refuse(item, ShuttingDown("the server is shutting down and accepts no new requests"))
                    else:
                        self._add(item, live)
                if stopping:
                    break
                busy = self.engine.has_unfinished()
                if busy:
                    try:
                        outputs = self.engine.step()
                    except Exception as error:  # a bug or an out-of-memory: fail these requests, keep serving
                        log.exception("engine step failed")
                        self._fail(live, RuntimeError(f"the engine failed: {error}"))
                    else:
                        self._refresh()  # the gauges first, so they are current once a client has its tokens
                        self._deliver(outputs, live)
                    busy = self.engine.has_unfinished()
                self._refresh(live)
        except BaseException as error:
            log.exception("the engine thread stopped")
            self._fail(live, RuntimeError(f"the engine thread stopped: {error}"))
            raise
        finally:
            self._close(live)

    def _add(self, request: _Request, live: dict[str, _Request]) -> None:
        try:
            prompt = request.prompt
            if request.fit_max_tokens:
                ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"] if isinstance(prompt, str) \
                    else prompt
                room = self.max_model_len - len(ids)
                if ids and room < 1:
                    raise ValueError(f"the prompt has {len(ids)} tokens: no room left for a completion within this "
                                     f"engine's max_model_len of {self.max_model_len} tokens")
                request.params = replace(request.params, max_tokens=max(room, 1))
                prompt = list(ids)
            request.prompt_tokens = self.engine.add_request(request.request_id, prompt, request.params)
        except ValueError as error:
            self.metrics.rejected.inc(reason="invalid")
            self._refuse(request, error)
            return
        live[request.request_id] = request
        if not self._call(request, _settle, request.accepted, request.prompt_tokens):
            self._abort(request.request_id, live)
        with self._cond:
            self._queued -= 1
            self._waiting = self.engine.stats().waiting
            self._live = len(live)

    def _refuse(self, request: _Request, error: BaseException) -> None:
        self._call(request, _settle, request.accepted, error)
        with self._cond:
            self._queued -= 1

    def _abort(self, request_id: str, live: dict[str, _Request]) -> None:
        request = live.pop(request_id, None)
        if request is not None:
            self.engine.abort(request_id)
            self.metrics.requests.inc(finish_reason="abort")

    def _call(self, request: _Request, function: Any, *args: Any) -> bool:
        """Run ``function(*args)`` in the request's event loop; False when that loop is gone."""
        try:
            request.loop.call_soon_threadsafe(function, *args)
        except RuntimeError:  # the loop was closed: nobody is listening any more
            return False
        return True

    def _deliver(self, outputs: list[RequestOutput], live: dict[str, _Request]) -> None:
        now = time.perf_counter()
        for output in outputs:
            request = live.get(output.request_id)
            if request is None:
                continue
            self.metrics.generated.inc(len(output.new_token_ids))
            if request.first_token is None:
                request.first_token = now
                self.metrics.ttft.observe(now - request.arrival)
            if output.index in request.last_time:
                self.metrics.itl.observe(now - request.last_time[output.index])
            request.last_time[output.index] = now
            request.last[output.index] = output
            if output.finished:
                request.reasons[output.index] = output.finish_reason or "stop"
            done = len(request.reasons) == request.params.n
            if done:  # counted before the last output leaves: a client that then scrapes /metrics sees it
                del live[output.request_id]
                self.metrics.requests.inc(finish_reason=request.reasons[0])
            if not self._call(request, request.queue.put_nowait, output) and not done:
                self._abort(output.request_id, live)

    def _fail(self, live: dict[str, _Request], error: BaseException) -> None:
        for request_id, request in list(live.items()):
            self.engine.abort(request_id)
            self.metrics.requests.inc(finish_reason="abort")
            self._call(request, request.queue.put_nowait, error)
        live.clear()

    def _close(self, live: dict[str, _Request]) -> None:
        """On the way out: end every stream still open with ``finish_reason="abort"`` and wake the waiters."""
        for request_id, request in list(live.items()):
            self.engine.abort(request_id)
            self.metrics.requests.inc(finish_reason="abort")
            for index in range(request.params.n):
                if index in request.reasons:
                    continue
                last = request.last.get(index)
                self._call(request, request.queue.put_nowait, RequestOutput(
                    request_id=request_id, index=index, text=last.text if last else "", finished=True,
                    finish_reason="abort", prompt_tokens=request.prompt_tokens,
                    completion_tokens=last.completion_tokens if last else 0))
        live.clear()
        with self._cond:
            self._accepting, self._live, self._queued = False, 0, 0
            for kind, item in self._inbox:
                if kind == "add":
                    self._call(item, _settle, item.accepted, ShuttingDown("the engine has stopped"))
            self._inbox.clear()
            self._cond.notify_all()
        self._refresh({})

    def _refresh(self, live: dict[str, _Request] | None = None) -> None:
        """Gauges and the stats snapshot from the engine; with ``live``, also the count a drain waits on."""
        stats = self.engine.stats()
        m = self.metrics
        m.waiting.set(stats.waiting)
        m.running.set(stats.running)
        m.blocks_used.set(stats.blocks_used)
        m.blocks_total.set(stats.blocks_total)
        preemptions, hits = self._totals
        m.preemptions.inc(max(0, stats.preemptions - preemptions))
        m.prefix_hits.inc(max(0, stats.prefix_hit_tokens - hits))
        self._totals = (stats.preemptions, stats.prefix_hit_tokens)
        with self._cond:
            self._stats = stats
            self._waiting = stats.waiting
            if live is not None:
                self._live = len(live)
                self._cond.notify_all()  # a draining shutdown waits for _live to reach 0
