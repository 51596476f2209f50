"""The HTTP serving layer: a real uvicorn server on 127.0.0.1, called with the official ``openai`` client.

Every answer is checked against the engine run offline (``Engine.generate``) on the same tiny random
LLaMA, or against a value computed another way (the chat template tokenised by the tokenizer itself,
cumulative histogram buckets recounted by hand). Where a test needs requests to stay queued it holds the
engine thread before its next step (``Gate``), so nothing depends on timing.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time

import httpx
import openai
import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from llmbook.book import serve_cli
from llmbook.book.cli import main
from llmbook.chain.pretrained import smollm2_dir
from llmbook.serving.async_engine import AsyncEngine, ShuttingDown
from llmbook.serving.engine import Engine, EngineConfig
from llmbook.serving.load import load_sync, make_workload
from llmbook.serving.metrics import Counter, Histogram, Registry
from llmbook.serving.params import SamplingParams
from llmbook.serving.server import Server

NAME = "tiny-llama"
MAX_MODEL_LEN = 256  # 64 blocks of 4 tokens


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(smollm2_dir())


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         eos_token_id=2, bos_token_id=1, pad_token_id=2)
    return LlamaForCausalLM(config).eval()


def new_engine(model, tokenizer, **config) -> Engine:
    return Engine(model, tokenizer, EngineConfig(block_size=4, num_blocks=64, **config))


def reference(model, tokenizer, prompt, **params):
    """The engine run offline: the server's answers must equal it."""
    return new_engine(model, tokenizer).generate([prompt], SamplingParams(**params))[0].samples


@pytest.fixture(scope="module")
def served(model, tokenizer):
    """One server shared by the tests that leave it running (each stops its own otherwise)."""
    async_engine = AsyncEngine(new_engine(model, tokenizer))
    server = Server(async_engine, model_name=NAME)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def client(served):
    return openai.OpenAI(base_url=served.url + "/v1", api_key="none", max_retries=0)


@pytest.fixture
def start_server(model, tokenizer):
    """Start servers of its own for a test; all stopped afterwards, whatever happened."""
    servers: list[Server] = []
    gates: list[Gate] = []

    def start(*, max_waiting: int = 64, **config) -> tuple[Server, AsyncEngine, Gate]:
        engine = new_engine(model, tokenizer, **config)
        gate = Gate(engine)
        gates.append(gate)
        async_engine = AsyncEngine(engine, max_waiting=max_waiting)
        server = Server(async_engine, model_name=NAME)
        servers.append(server)
        server.start()
        return server, async_engine, gate

    try:
        yield start
    finally:
        for gate in gates:
            gate.open()
        for server in servers:
            server.stop()


class Gate:
    """While closed, the engine thread waits before its next step: what is queued stays queued."""

    def __init__(self, engine: Engine) -> None:
        self._open = threading.Event()
        self._open.set()
        self.steps = 0
        real = engine.step

        def step():
            assert self._open.wait(timeout=30), "the test never opened the gate"
            self.steps += 1
            return real()

        engine.step = step

    def close(self) -> None:
        self._open.clear()

    def open(self) -> None:
        self._open.set()


def wait_until(condition, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def sse_events(lines) -> list[dict | str]:
    """The ``data:`` payloads of a server-sent event stream, ``"[DONE]"`` kept as a string."""
    events = []
    for line in lines:
        if line.startswith("data: "):
            data = line[len("data: "):]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$")


def parse_metrics(text: str) -> tuple[dict[str, str], dict[tuple[str, tuple], float]]:
    """Prometheus text format by hand: ``(family -> type, (name, labels) -> value)``; every line must parse."""
    types: dict[str, str] = {}
    samples: dict[tuple[str, tuple], float] = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            types[name] = kind
            continue
        match = SAMPLE.match(line)
        assert match, f"not a Prometheus sample line: {line!r}"
        name, labels, value = match.groups()
        family = re.sub(r"_(bucket|sum|count)$", "", name) if name not in types else name
        assert family in types, f"{name} has no # TYPE line"
        samples[name, tuple(sorted(re.findall(r'(\w+)="([^"]*)"', labels or "")))] = float(value)
    return types, samples


def metric(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    response = httpx.get(url + "/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse_metrics(response.text)[1]


# ----------------------------------------------------------------------------------- completions


def test_completions_equal_the_offline_engine(client, model, tokenizer):
    prompt = "The quick brown fox jumps over"
    (want,) = reference(model, tokenizer, prompt, max_tokens=12, temperature=0)
    got = client.completions.create(model=NAME, prompt=prompt, max_tokens=12, temperature=0)
    assert got.object == "text_completion" and got.model == NAME
    assert [(c.index, c.text, c.finish_reason) for c in got.choices] == [(0, want.text, want.finish_reason)]
    prompt_len = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert (got.usage.prompt_tokens, got.usage.completion_tokens, got.usage.total_tokens) == \
        (prompt_len, len(want.token_ids), prompt_len + len(want.token_ids))

    # token ids as the prompt, vLLM's extra fields through extra_body, streamed with a usage chunk
    ids = list(range(100, 117))
    (want,) = reference(model, tokenizer, ids, max_tokens=10, temperature=0, ignore_eos=True, top_k=5)
    chunks = list(client.completions.create(model=NAME, prompt=ids, max_tokens=10, temperature=0, stream=True,
                                            stream_options={"include_usage": True},
                                            extra_body={"ignore_eos": True, "top_k": 5}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == want.text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.prompt_tokens == 17
    assert chunks[-1].usage.completion_tokens == 10


def test_n_samples_with_a_seed(client, model, tokenizer):
    prompt = "Once upon a time"
    want = reference(model, tokenizer, prompt, max_tokens=8, temperature=1.0, seed=7, n=2)
    got = client.completions.create(model=NAME, prompt=prompt, max_tokens=8, temperature=1.0, seed=7, n=2)
    assert sorted((c.index, c.text) for c in got.choices) == [(0, want[0].text), (1, want[1].text)]
    assert want[0].text != want[1].text  # two samples, not one twice
    assert got.usage.completion_tokens == sum(len(s.token_ids) for s in want)


def test_stop_strings_cut_the_text(client, model, tokenizer):
    prompt = "A list of colours:"
    (full,) = reference(model, tokenizer, prompt, max_tokens=16, temperature=0, ignore_eos=True)
    text = full.text
    # a 3-character stop string that first occurs inside the text (not at its start)
    k = next(k for k in range(3, len(text) - 3) if text.find(text[k:k + 3]) == k and text[k:k + 3].strip()
             and "\ufffd" not in text[k:k + 3])
    stop = text[k:k + 3]
    got = client.completions.create(model=NAME, prompt=prompt, max_tokens=16, temperature=0, stop=[stop, "@@@@"],
                                    extra_body={"ignore_eos": True})
    assert (got.choices[0].text, got.choices[0].finish_reason) == (text[:k], "stop")
    pieces = client.completions.create(model=NAME, prompt=prompt, max_tokens=16, temperature=0, stop=stop,
                                       stream=True, extra_body={"ignore_eos": True})
    assert "".join(c.choices[0].text for c in pieces) == text[:k]  # a half-seen stop string is held back


# ----------------------------------------------------------------------------------- chat


def test_chat_completions_stream_and_not(client, model, tokenizer):
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a colour."}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                        return_dict=True)["input_ids"]
    (want,) = reference(model, tokenizer, ids, max_tokens=10, temperature=0)
    got = client.chat.completions.create(model=NAME, messages=messages, max_tokens=10, temperature=0)
    assert got.object == "chat.completion" and got.choices[0].message.role == "assistant"
    assert (got.choices[0].message.content, got.choices[0].finish_reason) == (want.text, want.finish_reason)
    assert (got.usage.prompt_tokens, got.usage.completion_tokens) == (len(ids), len(want.token_ids))

    chunks = list(client.chat.completions.create(model=NAME, messages=messages, max_completion_tokens=10,
                                                 temperature=0, stream=True, stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == got.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == want.finish_reason
    assert chunks[-1].usage.total_tokens == got.usage.total_tokens

    # no max_tokens: the completion may fill what the prompt leaves of max_model_len, no more
    long = client.chat.completions.create(model=NAME, messages=messages, temperature=0)
    (want,) = reference(model, tokenizer, ids, max_tokens=MAX_MODEL_LEN - len(ids), temperature=0)
    assert (long.choices[0].message.content, long.choices[0].finish_reason) == (want.text, want.finish_reason)
    assert long.usage.total_tokens <= MAX_MODEL_LEN


# ----------------------------------------------------------------------------------- other endpoints


def test_models_health_and_metrics(client, served):
    assert [m.id for m in client.models.list().data] == [NAME]
    assert httpx.get(served.url + "/health").json() == {"status": "ok"}
    before = scrape(served.url)
    client.completions.create(model=NAME, prompt="Count: one two", max_tokens=5, temperature=0,
                              extra_body={"ignore_eos": True})
    types, after = parse_metrics(httpx.get(served.url + "/metrics").text)
    assert types["llmbook_time_to_first_token_seconds"] == "histogram"
    assert types["llmbook_requests_total"] == types["llmbook_generated_tokens_total"] == "counter"
    assert types["llmbook_kv_blocks_used"] == "gauge"
    for name in ("llmbook_requests_waiting", "llmbook_requests_running", "llmbook_preemptions_total",
                 "llmbook_prefix_cache_hit_tokens_total", "llmbook_inter_token_latency_seconds"):
        assert name in types
    ttft = "llmbook_time_to_first_token_seconds"
    assert metric(after, ttft + "_count") == metric(before, ttft + "_count") + 1
    assert metric(after, "llmbook_requests_total", finish_reason="length") == \
        metric(before, "llmbook_requests_total", finish_reason="length") + 1
    assert metric(after, "llmbook_generated_tokens_total") == metric(before, "llmbook_generated_tokens_total") + 5
    itl = "llmbook_inter_token_latency_seconds"
    assert metric(after, itl + "_count") == metric(before, itl + "_count") + 4  # 5 tokens, 4 gaps
    assert (metric(after, "llmbook_kv_blocks_total"), metric(after, "llmbook_kv_blocks_used")) == (64, 0)
    buckets = sorted((float(dict(labels)["le"]), value) for (name, labels), value in after.items()
                     if name == ttft + "_bucket")
    counts = [value for _, value in buckets]
    assert counts == sorted(counts) and buckets[-1] == (float("inf"), metric(after, ttft + "_count"))


def test_the_load_generator_is_served(served):
    workload = make_workload(["Hello there", "Tell me a story"], n=4, rate=float("inf"), output_tokens=(3, 6))
    records, duration = load_sync(served.url, NAME, workload, timeout=30)
    assert [r.error for r in records] == [None] * 4
    assert [r.output_tokens for r in records] == [w.max_tokens for w in workload]


# ----------------------------------------------------------------------------------- errors


def test_bad_requests_answer_400_and_404(client, served):
    with pytest.raises(openai.BadRequestError) as error:
        client.completions.create(model=NAME, prompt=list(range(100, 400)), max_tokens=4)
    assert error.value.status_code == 400 and error.value.body["param"] == "prompt"
    assert error.value.body["message"] == ("the prompt has 300 tokens and max_tokens is 4: more than this engine's "
                                           f"max_model_len of {MAX_MODEL_LEN} tokens")
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "hi"}], temperature=-0.5)
    assert error.value.body == {"message": "temperature=-0.5: must be >= 0 (0 = greedy)",
                                "type": "invalid_request_error", "param": "temperature", "code": None}
    with pytest.raises(openai.NotFoundError) as error:
        client.completions.create(model="gpt-4", prompt="hi")
    assert error.value.body["code"] == "model_not_found" and "gpt-4" in error.value.body["message"]

    post = lambda body: httpx.post(served.url + "/v1/completions", json={"model": NAME, **body})  # noqa: E731
    for body, param, message in [
        ({"prompt": "hi", "temperature": "hot"}, "temperature", "temperature: Input should be a valid number"),
        ({"prompt": "hi", "logprobs": 3}, "logprobs", "logprobs=3: not supported by this server"),
        ({"prompt": ["a", "b"]}, "prompt", "prompt: this server takes one prompt per request, got 2"),
        ({"prompt": ""}, "prompt", "the prompt is empty"),
        ({"prompt": "hi", "n": 17}, "n", "n=17: must be between 1 and 16"),
    ]:
        response = post(body)
        assert response.status_code == 400, body
        assert response.json()["error"]["param"] == param and response.json()["error"]["message"].startswith(message)
    assert httpx.get(served.url + "/v1/nothing").json()["error"]["message"] == "Not Found"


def test_a_full_queue_answers_429(start_server):
    server, async_engine, gate = start_server(max_waiting=2)
    gate.close()  # nothing is scheduled: accepted requests stay waiting
    body = {"model": NAME, "prompt": "Hello", "max_tokens": 3, "temperature": 0, "stream": True}

    async def scenario():
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            async def send():
                return await http.send(http.build_request("POST", "/v1/completions", json=body), stream=True)

            tasks = [asyncio.ensure_future(send()) for _ in range(5)]
            deadline = time.monotonic() + 20
            while sum(t.done() and t.result().status_code == 429 for t in tasks) < 3:
                assert time.monotonic() < deadline, "three requests should have been refused"
                await asyncio.sleep(0.005)
            gate.open()
            responses = await asyncio.gather(*tasks)
            bodies = [(r.status_code, (await r.aread()).decode()) for r in responses]
            for r in responses:
                await r.aclose()
            return bodies

    bodies = asyncio.run(scenario())
    assert sorted(status for status, _ in bodies) == [200, 200, 429, 429, 429]
    for status, text in bodies:
        if status == 429:
            error = json.loads(text)["error"]
            assert error["type"] == "rate_limit_error" and "max_waiting=2" in error["message"]
        else:
            events = sse_events(text.splitlines())
            assert events[-1] == "[DONE]" and events[-2]["choices"][0]["finish_reason"] == "length"
    assert metric(scrape(server.url), "llmbook_requests_rejected_total", reason="queue_full") == 3


# ----------------------------------------------------------------------------------- disconnects and shutdown


def test_a_client_gone_mid_stream_frees_its_blocks(start_server):
    server, async_engine, gate = start_server()
    body = {"model": NAME, "prompt": "word " * 20, "max_tokens": 200, "temperature": 0, "ignore_eos": True,
            "stream": True}
    with httpx.Client(base_url=server.url, timeout=30) as http:
        with http.stream("POST", "/v1/completions", json=body) as response:
            lines = response.iter_lines()  # held: an iterator dropped early closes the connection (httpcore)
            next(line for line in lines if line.startswith("data: ") and json.loads(line[6:])["choices"][0]["text"])
            gate.close()  # the request is running and far from done
            assert async_engine.stats().blocks_used > 0
    gate.open()  # the stream is closed: the server aborts the request
    wait_until(lambda: async_engine.stats().blocks_used == 0 and async_engine.num_requests == 0, "blocks freed")
    stats = async_engine.stats()
    assert (stats.running, stats.waiting, stats.blocks_total) == (0, 0, 64)
    samples = scrape(server.url)
    assert metric(samples, "llmbook_requests_total", finish_reason="abort") == 1
    assert metric(samples, "llmbook_requests_total", finish_reason="length") == 0
    assert metric(samples, "llmbook_generated_tokens_total") < 200

    # a client that gives up on a non-streamed answer (it cannot come while the gate is closed)
    gate.close()
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/v1/completions", json={**body, "stream": False}, timeout=0.5)
    gate.open()
    wait_until(lambda: async_engine.num_requests == 0 and async_engine.stats().blocks_used == 0, "blocks freed")
    assert metric(scrape(server.url), "llmbook_requests_total", finish_reason="abort") == 2


def test_shutdown_lets_the_request_in_flight_finish(start_server, model, tokenizer):
    server, async_engine, gate = start_server()
    prompt = "Once more:"
    (want,) = reference(model, tokenizer, prompt, max_tokens=30, temperature=0, ignore_eos=True)
    body = {"model": NAME, "prompt": prompt, "max_tokens": 30, "temperature": 0, "ignore_eos": True, "stream": True}
    stopper = threading.Thread(target=server.stop)
    with httpx.Client(base_url=server.url, timeout=30) as http:
        with http.stream("POST", "/v1/completions", json=body) as response:
            lines = response.iter_lines()
            first = next(line for line in lines if line.startswith("data: "))
            gate.close()
            stopper.start()
            wait_until(lambda: not async_engine.accepting, "the server to stop accepting")
            refused = http.post("/v1/completions", json={**body, "stream": False})
            assert refused.status_code == 503 and refused.json()["error"]["code"] == "shutting_down"
            assert http.get("/health").status_code == 503
            gate.open()
            events = sse_events([first, *lines])
    stopper.join(timeout=30)
    assert not stopper.is_alive() and not server.running
    assert events[-1] == "[DONE]" and events[-2]["choices"][0]["finish_reason"] == "length"
    assert "".join(e["choices"][0]["text"] for e in events[:-1]) == want.text


# ----------------------------------------------------------------------------------- the engine without HTTP


def test_async_engine_generate_abort_and_shutdown(model, tokenizer):
    engine = new_engine(model, tokenizer)
    gate = Gate(engine)
    async_engine = AsyncEngine(engine, max_waiting=4)
    (want,) = reference(model, tokenizer, [5, 6, 7], max_tokens=6, temperature=0)

    async def scenario():
        outputs = [o async for o in async_engine.generate("a", [5, 6, 7], SamplingParams(max_tokens=6, temperature=0))]
        assert [t for o in outputs for t in o.new_token_ids] == want.token_ids and outputs[-1].finished
        with pytest.raises(ValueError, match="the prompt is empty"):
            await anext(async_engine.generate("b", [], SamplingParams()))
        # a consumer that stops early aborts its request
        long = async_engine.generate("c", [5, 6, 7], SamplingParams(max_tokens=200, temperature=0, ignore_eos=True))
        await anext(long)
        await long.aclose()
        deadline = time.monotonic() + 20
        while async_engine.stats().blocks_used or async_engine.num_requests:
            assert time.monotonic() < deadline, "the aborted request kept its blocks"
            await asyncio.sleep(0.005)
        # shutdown without drain time: the request in flight ends with finish_reason "abort"
        stream = await async_engine.submit("d", [5, 6, 7], SamplingParams(max_tokens=200, ignore_eos=True))
        gate.close()
        stopper = threading.Thread(target=async_engine.shutdown, kwargs={"drain_timeout": 0})
        stopper.start()
        gate.open()
        last = [o async for o in stream][-1]
        stopper.join(timeout=30)
        assert (last.finished, last.finish_reason) == (True, "abort") and last.completion_tokens < 200
        with pytest.raises(ShuttingDown):
            await async_engine.submit("e", [5], SamplingParams())

    try:
        asyncio.run(scenario())
    finally:
        gate.open()
        async_engine.shutdown(drain_timeout=0)
    assert engine.allocator.num_free == 64
    with pytest.raises(ValueError, match="max_waiting=-1"):
        AsyncEngine(engine, max_waiting=-1)


def test_metric_types_by_hand():
    registry = Registry()
    counter = registry.register(Counter("c_total", "A counter.", ("kind",)))
    histogram = registry.register(Histogram("h_seconds", "A histogram.", (1, 2)))
    counter.inc(2, kind='say "hi"')
    for value in (0.5, 1.5, 3.0, 1.0):
        histogram.observe(value)
    assert registry.render() == (
        '# HELP c_total A counter.\n# TYPE c_total counter\nc_total{kind="say \\"hi\\""} 2\n'
        "# HELP h_seconds A histogram.\n# TYPE h_seconds histogram\n"
        'h_seconds_bucket{le="1"} 2\nh_seconds_bucket{le="2"} 3\nh_seconds_bucket{le="+Inf"} 4\n'
        "h_seconds_sum 6\nh_seconds_count 4\n")
    with pytest.raises(ValueError, match="only goes up"):
        counter.inc(-1, kind="x")
    with pytest.raises(ValueError, match="labels must be"):
        counter.inc(1)
    with pytest.raises(ValueError, match="strictly increasing"):
        Histogram("bad", "Bad.", (2, 1))
    with pytest.raises(ValueError, match="already registered"):
        registry.register(Counter("c_total", "Again."))


# ----------------------------------------------------------------------------------- the command line


def test_cli_serve(capsys, monkeypatch, model, tokenizer):
    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--help"])
    assert exit_.value.code == 0 and "--max-waiting" in capsys.readouterr().out
    for bad in (["--port", "http"], ["--block-size", "0"], ["--bogus"]):
        with pytest.raises(SystemExit) as exit_:
            main(["serve", *bad])
        assert exit_.value.code == 2
        assert bad[0] in capsys.readouterr().err

    # the whole command on the tiny model: it prints the URL, serves, and drains when interrupted
    answers = []

    def interrupt(server):
        answers.append(httpx.post(server.url + "/v1/completions",
                                  json={"model": "mini", "prompt": "Hi", "max_tokens": 3}).json())

    monkeypatch.setattr(serve_cli, "load_pretrained", lambda name: (model, tokenizer))
    monkeypatch.setattr(serve_cli, "_wait_for_interrupt", interrupt)
    threads = torch.get_num_threads()
    try:
        assert main(["serve", "--port", "0", "--threads", "1", "--block-size", "4", "--kv-cache-mb", "0.125",
                     "--served-model-name", "mini"]) == 0
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert re.search(r"serving mini at http://127\.0\.0\.1:\d+/v1 \(max_model_len 256, 64 KV blocks of 4 tokens",
                     out), out
    assert answers[0]["model"] == "mini" and answers[0]["usage"]["completion_tokens"] <= 3
