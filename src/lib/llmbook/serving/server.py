"""An OpenAI-compatible HTTP server over :class:`~llmbook.serving.async_engine.AsyncEngine` (FastAPI + uvicorn).

    server = Server(AsyncEngine(engine), model_name="smollm2")
    url = server.start(port=8000)          # uvicorn in a thread; returns "http://127.0.0.1:8000"
    client = openai.OpenAI(base_url=url + "/v1", api_key="none")
    client.completions.create(model="smollm2", prompt="Once upon", max_tokens=16, temperature=0)
    server.stop()                          # refuse new requests (503), drain, stop

Endpoints, as OpenAI's API (and vLLM's server) shape them:

    GET  /health               200 {"status": "ok"}; 503 while shutting down
    GET  /v1/models            the one served model
    POST /v1/completions       prompt (text or token ids) -> text_completion
    POST /v1/chat/completions  messages -> the tokenizer's chat template -> chat.completion
    GET  /metrics              Prometheus text (llmbook.serving.metrics)

``"stream": true`` answers with server-sent events, one ``data: {json}`` line per chunk and a final
``data: [DONE]``; ``stream_options.include_usage`` adds a last chunk with the token counts. Errors have
OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``: 400 for a bad parameter or an over-long
prompt, 404 for another model's name, 429 when the queue is full, 503 while shutting down. Request fields
this server does not know are ignored; the few that would change the answer if ignored (``logprobs``,
``echo``, penalties...) are refused with a 400. vLLM's extra sampling fields (``top_k``, ``min_p``,
``repetition_penalty``, ``ignore_eos``) are accepted, as the load generator sends them.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException

from llmbook.serving.async_engine import AsyncEngine, QueueFull, RequestStream, ShuttingDown
from llmbook.serving.metrics import CONTENT_TYPE
from llmbook.serving.params import RequestOutput, SamplingParams

ERROR_TYPES = {400: "invalid_request_error", 404: "invalid_request_error", 429: "rate_limit_error",
               500: "server_error", 503: "service_unavailable_error"}
# OpenAI fields that change the answer: refused unless left at their "off" value, rather than silently ignored.
UNSUPPORTED = ("echo", "logprobs", "top_logprobs", "suffix", "presence_penalty", "frequency_penalty", "logit_bias",
               "tools", "functions")


class APIError(Exception):
    """An HTTP error in OpenAI's shape."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def response(self) -> JSONResponse:
        error = {"message": self.message, "type": ERROR_TYPES.get(self.status, "invalid_request_error"),
                 "param": self.param, "code": self.code}
        return JSONResponse({"error": error}, status_code=self.status)


# --------------------------------------------------------------------------------------------- request bodies


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class _SamplingRequest(BaseModel):
    """The sampling fields both endpoints share; ``None`` means the default (some clients send explicit nulls)."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None  # vLLM's extension; -1 also means off
    min_p: float | None = None
    repetition_penalty: float | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int | None = None
    best_of: int | None = None
    ignore_eos: bool = False
    stream: bool = False
    stream_options: StreamOptions | None = None

    def sampling_params(self, max_tokens: int) -> SamplingParams:
        extra = self.model_extra or {}
        for name in UNSUPPORTED:
            if extra.get(name) not in (None, False, 0, "", [], {}):
                raise APIError(400, f"{name}={extra[name]!r}: not supported by this server", param=name)
        n = 1 if self.n is None else self.n
        if self.best_of not in (None, n):
            raise APIError(400, f"best_of={self.best_of!r}: not supported by this server (only best_of = n)",
                           param="best_of")
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        params = SamplingParams(
            max_tokens=max_tokens, temperature=_default(self.temperature, 1.0), top_p=_default(self.top_p, 1.0),
            top_k=0 if self.top_k in (None, -1) else self.top_k, min_p=_default(self.min_p, 0.0),
            repetition_penalty=_default(self.repetition_penalty, 1.0), stop=stop, seed=self.seed, n=n,
            ignore_eos=self.ignore_eos)
        try:
            params.validate()
        except ValueError as error:
            raise APIError(400, str(error), param=_param_of(str(error))) from None
        return params

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


class CompletionRequest(_SamplingRequest):
    prompt: str | list[int] | list[str] | list[list[int]]

    def single_prompt(self) -> str | list[int]:
        prompt = self.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str | list):
            if len(prompt) != 1:
                raise APIError(400, f"prompt: this server takes one prompt per request, got {len(prompt)}",
                               param="prompt")
            prompt = prompt[0]
        return prompt  # type: ignore[return-value]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        parts = []
        for part in self.content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise APIError(400, f"messages: only text content parts are supported, got {part.get('type')!r}",
                               param="messages")
            parts.append(part["text"])
        return "".join(parts)


class ChatRequest(_SamplingRequest):
    messages: list[ChatMessage]
    max_completion_tokens: int | None = None  # OpenAI's newer name for max_tokens


def _default(value: Any, default: Any) -> Any:
    return default if value is None else value


def _param_of(message: str) -> str | None:
    """The field a ``ValueError`` names (``"temperature=-1.0: must be ..."``), or ``prompt`` for a prompt error."""
    match = re.match(r"(\w+)=", message)
    if match:
        return match.group(1)
    return "prompt" if message.startswith("the prompt") else None


# --------------------------------------------------------------------------------------------- responses


def _sse(payload: dict[str, Any] | str) -> str:
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return f"data: {data}\n\n"


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


async def _collect(stream: RequestStream) -> list[RequestOutput]:
    """Each sample's last output (its whole text, finish reason and token count)."""
    finals: dict[int, RequestOutput] = {}
    async for output in stream:
        if output.finished:
            finals[output.index] = output
    return [finals[i] for i in range(stream.n)]


async def _disconnected(request: Request) -> None:
    """Returns when the client hangs up (the body was read already: the next ASGI message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _collect_unless_gone(request: Request, stream: RequestStream) -> list[RequestOutput] | None:
    """:func:`_collect`, abandoned (and the request aborted) if the client disconnects first."""
    collect = asyncio.ensure_future(_collect(stream))
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({collect, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not collect.done():
            collect.cancel()
            stream.close()
    return collect.result() if collect.done() and not collect.cancelled() else None


def _stream_error(error: BaseException) -> str:
    return _sse({"error": {"message": str(error), "type": ERROR_TYPES[500], "param": None, "code": None}})


# --------------------------------------------------------------------------------------------- the app


def create_app(async_engine: AsyncEngine, *, model_name: str) -> FastAPI:
    """The FastAPI application serving ``async_engine`` under the name ``model_name``."""
    app = FastAPI(title="llmbook serving", description="OpenAI-compatible completions over llmbook.serving")
    created = int(time.time())

    @app.exception_handler(APIError)
    async def api_error(request: Request, error: APIError) -> JSONResponse:
        return error.response()

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0] if error.errors() else {"loc": (), "msg": "invalid request body"}
        loc = [str(part) for part in first.get("loc", ()) if part != "body"]
        where = ".".join(loc)
        return APIError(400, f"{where}: {first['msg']}" if where else str(first["msg"]),
                        param=loc[0] if loc else None).response()

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        return APIError(error.status_code, str(error.detail)).response()

    def check_model(body: _SamplingRequest) -> None:
        if body.model is not None and body.model != model_name:
            raise APIError(404, f"The model '{body.model}' does not exist: this server serves '{model_name}'",
                           param="model", code="model_not_found")

    async def submit(request_id: str, prompt: str | list[int], params: SamplingParams, *,
                     fit_max_tokens: bool = False) -> RequestStream:
        try:
            return await async_engine.submit(request_id, prompt, params, fit_max_tokens=fit_max_tokens)
        except ValueError as error:
            raise APIError(400, str(error), param=_param_of(str(error))) from None
        except QueueFull as error:
            raise APIError(429, str(error), code="queue_full") from None
        except ShuttingDown as error:
            raise APIError(503, str(error), code="shutting_down") from None

    def event_stream(stream: RequestStream, chunks: AsyncIterator[str]) -> StreamingResponse:
        async def body() -> AsyncIterator[str]:
            try:
                try:
                    async for line in chunks:
                        yield line
                except RuntimeError as error:  # the engine failed (or stopped) after the 200 went out
                    yield _stream_error(error)
                yield _sse("[DONE]")
            finally:  # also on a disconnect (cancelled) or an abandoned iterator (closed): abort
                stream.close()

        return StreamingResponse(body(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.get("/health")
    async def health() -> dict[str, str]:
        if not async_engine.accepting:
            raise APIError(503, "the server is shutting down", code="shutting_down")
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created,
                                            "owned_by": "llmbook", "max_model_len": async_engine.max_model_len}]}

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(async_engine.metrics.render(), media_type=CONTENT_TYPE)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Response:
        check_model(body)
        params = body.sampling_params(_default(body.max_tokens, 16))  # OpenAI's default for completions
        request_id = f"cmpl-{uuid.uuid4().hex}"
        stream = await submit(request_id, body.single_prompt(), params)
        head = {"id": request_id, "object": "text_completion", "created": int(time.time()), "model": model_name}

        if body.stream:
            async def chunks() -> AsyncIterator[str]:
                tokens: dict[int, int] = {}
                async for out in stream:
                    tokens[out.index] = out.completion_tokens
                    if out.delta or out.finished:
                        yield _sse({**head, "choices": [{"index": out.index, "text": out.delta, "logprobs": None,
                                                         "finish_reason": out.finish_reason}]})
                if body.include_usage:
                    yield _sse({**head, "choices": [], "usage": _usage(stream.prompt_tokens, sum(tokens.values()))})

            return event_stream(stream, chunks())

        finals = await _collect_unless_gone(request, stream)
        if finals is None:
            return Response(status_code=499)  # nobody is listening; uvicorn drops it
        choices = [{"index": o.index, "text": o.text, "logprobs": None, "finish_reason": o.finish_reason}
                   for o in finals]
        return JSONResponse({**head, "choices": choices,
                             "usage": _usage(stream.prompt_tokens, sum(o.completion_tokens for o in finals))})

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request) -> Response:
        check_model(body)
        limit = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        params = body.sampling_params(_default(limit, 1))  # None: the room the prompt leaves (filled in below)
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        if not messages:
            raise APIError(400, "messages: at least one message is required", param="messages")
        try:  # the template only (tokenize=False): tokenizing is the engine thread's job
            prompt = async_engine.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except Exception as error:  # no template, roles out of order, ...: the template's own message
            raise APIError(400, f"messages: {error}", param="messages") from None
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        stream = await submit(request_id, prompt, params, fit_max_tokens=limit is None)
        head = {"id": request_id, "object": "chat.completion", "created": int(time.time()), "model": model_name}

        if body.stream:
            head["object"] = "chat.completion.chunk"

            def chunk(index: int, delta: dict[str, str], finish_reason: str | None = None) -> str:
                return _sse({**head, "choices": [{"index": index, "delta": delta, "logprobs": None,
                                                  "finish_reason": finish_reason}]})

            async def chunks() -> AsyncIterator[str]:
                for index in range(stream.n):  # OpenAI opens each choice with the role alone
                    yield chunk(index, {"role": "assistant", "content": ""})
                tokens: dict[int, int] = {}
                async for out in stream:
                    tokens[out.index] = out.completion_tokens
                    if out.delta:
                        yield chunk(out.index, {"content": out.delta})
                    if out.finished:
                        yield chunk(out.index, {}, out.finish_reason)
                if body.include_usage:
                    yield _sse({**head, "choices": [], "usage": _usage(stream.prompt_tokens, sum(tokens.values()))})

            return event_stream(stream, chunks())

        finals = await _collect_unless_gone(request, stream)
        if finals is None:
            return Response(status_code=499)
        choices = [{"index": o.index, "message": {"role": "assistant", "content": o.text}, "logprobs": None,
                    "finish_reason": o.finish_reason} for o in finals]
        return JSONResponse({**head, "choices": choices,
                             "usage": _usage(stream.prompt_tokens, sum(o.completion_tokens for o in finals))})

    return app


# --------------------------------------------------------------------------------------------- running it


class Server:
    """uvicorn serving :func:`create_app` in a background thread; ``stop()`` drains the engine, then exits.

    ``drain_timeout`` bounds how long requests in flight may run on after ``stop()`` (the rest are aborted).
    Stopping also shuts the engine down: a stopped server is not restarted.
    """

    def __init__(self, async_engine: AsyncEngine, *, model_name: str, drain_timeout: float = 30.0,
                 log_level: Literal["critical", "error", "warning", "info", "debug"] = "warning") -> None:
        self.async_engine = async_engine
        self.model_name = model_name
        self.drain_timeout = drain_timeout
        self.log_level = log_level
        self.app = create_app(async_engine, model_name=model_name)
        self.url: str | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, host: str = "127.0.0.1", port: int = 0, *, timeout: float = 30.0) -> str:
        """Serve on ``host:port`` (0: a free port) and return the base URL once the socket listens."""
        if self._server is not None:
            raise RuntimeError("this server was started already")
        config = uvicorn.Config(self.app, host=host, port=port, log_level=self.log_level, access_log=False,
                                timeout_graceful_shutdown=5)
        self._server = server = uvicorn.Server(config)
        self._thread = threading.Thread(target=server.run, name="llmbook-uvicorn", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self._stop_uvicorn()
                raise RuntimeError(f"the server did not start on {host}:{port} (port in use?)")
            time.sleep(0.01)
        bound = server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://{f'[{host}]' if ':' in host else host}:{bound}"
        return self.url

    def stop(self) -> None:
        """Refuse new requests (503), let those in flight finish (up to ``drain_timeout``), stop uvicorn."""
        self.async_engine.shutdown(self.drain_timeout)
        self._stop_uvicorn()

    def _stop_uvicorn(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=self.drain_timeout + 10)

    def __enter__(self) -> Server:
        if self._server is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
