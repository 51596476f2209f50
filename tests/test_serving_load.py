from __future__ import annotations

import asyncio
import json
import math
import threading
import time

import numpy as np
import pytest
import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from llmbook.serving.baselines import generate_batch, serve_one_at_a_time, serve_static_batches
from llmbook.serving.load import (
    RequestRecord,
    WorkloadRequest,
    load_sync,
    make_workload,
    run_load,
    summarize,
)

PROMPTS = ["the cat sat", "a dog ran far away today", "hello", "one two three four"]

# --- make_workload ---------------------------------------------------------------------------------------------


def test_workload_is_seeded_and_deterministic():
    a = make_workload(PROMPTS, n=50, rate=4.0, output_tokens=(8, 256), seed=3)
    b = make_workload(PROMPTS, n=50, rate=4.0, output_tokens=(8, 256), seed=3)
    c = make_workload(PROMPTS, n=50, rate=4.0, output_tokens=(8, 256), seed=4)
    assert a == b
    assert a != c
    # Independent streams: another rate moves the arrivals only.
    d = make_workload(PROMPTS, n=50, rate=9.0, output_tokens=(8, 256), seed=3)
    assert [r.prompt for r in d] == [r.prompt for r in a] and [r.max_tokens for r in d] == [r.max_tokens for r in a]
    assert [r.arrival for r in d] != [r.arrival for r in a]


def test_workload_poisson_gaps_lengths_and_prompts():
    rate = 5.0
    work = make_workload(PROMPTS, n=2000, rate=rate, output_tokens=(16, 512), seed=0)
    arrivals = np.array([r.arrival for r in work])
    gaps = np.diff(arrivals)
    assert arrivals[0] == 0 and (gaps >= 0).all()
    # Exponential gaps: mean 1/rate with standard error (1/rate)/sqrt(1999) ≈ 0.0045; the bound is ~4.5 of those.
    assert abs(gaps.mean() - 1 / rate) < 0.02
    assert abs(gaps.std() - 1 / rate) < 0.03  # an exponential's std equals its mean (not a uniform or fixed gap)
    lengths = np.array([r.max_tokens for r in work])
    assert lengths.min() >= 16 and lengths.max() <= 512
    assert lengths.dtype.kind == "i"
    # Skewed to the right: the mean lies above the median, near the geometric mean sqrt(16 * 512) ≈ 90.5.
    assert lengths.mean() > np.median(lengths)
    assert 75 < np.median(lengths) < 110
    assert {r.prompt for r in work} == set(PROMPTS)


def test_workload_infinite_rate_and_custom_sampler():
    work = make_workload(PROMPTS, n=10, rate=math.inf, output_tokens=lambda rng: int(rng.integers(3, 5)), seed=1)
    assert [r.arrival for r in work] == [0.0] * 10
    assert {r.max_tokens for r in work} <= {3, 4}
    fixed = make_workload(["p"], n=3, rate=math.inf, output_tokens=(7, 7))
    assert [r.max_tokens for r in fixed] == [7, 7, 7]


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"prompts": []}, "prompts"),
    ({"prompts": ["ok", ""]}, "prompts"),
    ({"n": 0}, "n=0"),
    ({"n": 2.5}, "n=2.5"),
    ({"rate": 0.0}, "rate=0.0"),
    ({"rate": -1.0}, "rate=-1.0"),
    ({"rate": math.nan}, "rate=nan"),
    ({"output_tokens": (0, 4)}, "output_tokens"),
    ({"output_tokens": (5, 4)}, "output_tokens"),
    ({"output_tokens": (1.5, 4)}, "output_tokens"),
    ({"output_tokens": (4,)}, "output_tokens"),
    ({"output_tokens": lambda rng: 0}, "sampler returned 0"),
])
def test_workload_rejects_bad_input(kwargs, match):
    args = {"prompts": PROMPTS, "n": 5, "rate": 1.0, "output_tokens": (1, 8)} | kwargs
    with pytest.raises(ValueError, match=match):
        make_workload(args.pop("prompts"), **args)


# --- summarize ---------------------------------------------------------------------------------------------------


def _record(arrival, first, finished, tokens, error=None):
    return RequestRecord(arrival=arrival, sent=arrival, first_token=first, finished=finished, prompt_tokens=5,
                         output_tokens=tokens, error=error)


def test_summarize_by_hand():
    records = [
        _record(0.0, 0.5, 2.5, 5),  # ttft 0.5, tpot 2.0/4 = 0.5, e2e 2.5
        _record(1.0, 1.2, 2.2, 11),  # ttft 0.2, tpot 1.0/10 = 0.1, e2e 1.2
        _record(2.0, 3.0, 3.0, 1),  # ttft 1.0, no tpot (one token), e2e 1.0
        _record(2.5, None, 2.6, 0, error="HTTP 429: busy"),
    ]
    report = summarize(records, 4.0)
    assert (report.requests, report.errors, report.output_tokens) == (4, 1, 17)
    assert report.output_throughput == 17 / 4 and report.request_throughput == 3 / 4
    # numpy's linear percentile on sorted [0.2, 0.5, 1.0]: p50 = 0.5, p99 = 0.5 + 0.98 * (1.0 - 0.5) = 0.99.
    assert report.ttft_p50 == pytest.approx(0.5) and report.ttft_p99 == pytest.approx(0.99)
    # TPOT over [0.1, 0.5]: p50 = 0.3, p99 = 0.1 + 0.99 * 0.4 = 0.496.
    assert report.tpot_p50 == pytest.approx(0.3) and report.tpot_p99 == pytest.approx(0.496)
    # E2E over [1.0, 1.2, 2.5]: p50 = 1.2, p99 = 1.2 + 0.98 * 1.3 = 2.474.
    assert report.e2e_p50 == pytest.approx(1.2) and report.e2e_p99 == pytest.approx(2.474)
    row = report.row()
    assert row["requests"] == 4 and row["errors"] == 1 and row["output tok/s"] == 4.2
    assert row["TTFT p99 (ms)"] == 990.0 and row["TPOT p50 (ms)"] == 300.0 and row["E2E p50 (ms)"] == 1200.0


def test_summarize_all_failed_and_bad_duration():
    report = summarize([_record(0.0, None, 0.1, 0, error="HTTP 400: bad")], 1.0)
    assert report.errors == 1 and report.output_throughput == 0 and math.isnan(report.ttft_p50)
    with pytest.raises(ValueError, match="duration=0"):
        summarize([], 0)


# --- run_load against a local streaming server --------------------------------------------------------------------

SEEN: list[dict] = []  # request bodies the fake server received


def _fake_app() -> FastAPI:
    app = FastAPI()

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await request.json()
        SEEN.append(body)
        if body["model"] == "busy":
            return JSONResponse({"error": {"message": "too many requests", "type": "rate_limit"}}, status_code=429)
        if body["max_tokens"] > 50:
            return JSONResponse({"detail": "max_tokens too large"}, status_code=400)
        n = body["max_tokens"]
        # Tokens come two per chunk ("ab"), so chunk count != token count unless the usage chunk is missing.
        chunks = (n + 1) // 2

        async def stream():
            yield "data: " + json.dumps({"choices": [{"index": 0, "text": ""}]}) + "\n\n"  # a role-only first chunk
            for _ in range(chunks):
                await asyncio.sleep(0.01)
                yield "data: " + json.dumps({"choices": [{"index": 0, "text": "ab"}]}) + "\n\n"
            if body["model"] != "no-usage":
                usage = {"prompt_tokens": len(body["prompt"].split()), "completion_tokens": n, "total_tokens": 0}
                yield "data: " + json.dumps({"choices": [], "usage": usage}) + "\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream")

    return app


@pytest.fixture(scope="module")
def server_url():
    server = uvicorn.Server(uvicorn.Config(_fake_app(), host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the test server did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)
    assert not thread.is_alive()


def test_run_load_streams_records(server_url):
    SEEN.clear()
    work = [WorkloadRequest(prompt="one two three", max_tokens=6, arrival=0.0),
            WorkloadRequest(prompt="four five", max_tokens=3, arrival=0.02),
            WorkloadRequest(prompt="six", max_tokens=1, arrival=0.04)]
    records, duration = load_sync(server_url + "/v1/", "fake", work)  # a trailing /v1 is accepted
    assert all(r.error is None for r in records)
    assert [r.output_tokens for r in records] == [6, 3, 1]  # from usage, not the 3, 2, 1 chunks
    assert [r.prompt_tokens for r in records] == [3, 2, 1]
    for request, r in zip(work, records, strict=True):
        assert r.arrival == request.arrival <= r.sent < r.first_token < r.finished <= duration
    first = next(body for body in SEEN if body["prompt"] == "one two three")
    assert first == {"model": "fake", "prompt": "one two three", "max_tokens": 6, "temperature": 0, "stream": True,
                     "stream_options": {"include_usage": True}, "ignore_eos": True}
    report = summarize(records, duration)
    assert report.errors == 0 and report.output_tokens == 10 and report.ttft_p50 < report.e2e_p50


def test_run_load_counts_chunks_without_usage_and_caps_concurrency(server_url):
    work = [WorkloadRequest(prompt="x", max_tokens=5, arrival=0.0) for _ in range(3)]
    records, _ = load_sync(server_url, "no-usage", work, max_concurrency=1)
    assert [r.output_tokens for r in records] == [3, 3, 3]  # ceil(5 / 2) text chunks
    assert [r.prompt_tokens for r in records] == [0, 0, 0]
    # One at a time: each request is sent after the previous one finished.
    done = sorted(records, key=lambda r: r.sent)
    assert all(later.sent >= earlier.finished for earlier, later in zip(done, done[1:]))


def test_run_load_records_http_errors(server_url):
    busy, _ = load_sync(server_url, "busy", [WorkloadRequest(prompt="x", max_tokens=2, arrival=0.0)])
    assert busy[0].error == "HTTP 429: too many requests" and busy[0].output_tokens == 0
    assert busy[0].first_token is None
    big, _ = load_sync(server_url, "fake", [WorkloadRequest(prompt="x", max_tokens=99, arrival=0.0)])
    assert big[0].error == "HTTP 400: max_tokens too large"
    # A closed port: a connection error, recorded too.
    down, _ = load_sync("http://127.0.0.1:9", "fake", [WorkloadRequest(prompt="x", max_tokens=2, arrival=0.0)])
    assert down[0].error.startswith("ConnectError")
    assert summarize(busy + big + down, 1.0).errors == 3


def test_load_sync_inside_a_running_loop(server_url):
    async def notebook_cell():  # Jupyter runs cells inside an event loop: asyncio.run would refuse
        return load_sync(server_url, "fake", [WorkloadRequest(prompt="x y", max_tokens=4, arrival=0.0)])

    records, _ = asyncio.run(notebook_cell())
    assert records[0].output_tokens == 4 and records[0].error is None


def test_run_load_rejects_bad_input(server_url):
    work = [WorkloadRequest(prompt="x", max_tokens=2, arrival=0.0)]
    with pytest.raises(ValueError, match="max_concurrency=0"):
        asyncio.run(run_load(server_url, "fake", work, max_concurrency=0))
    with pytest.raises(ValueError, match="workload"):
        load_sync(server_url, "fake", [])


# --- in-process Hugging Face baselines -----------------------------------------------------------------------------

WORDS = ["<pad>", "<s>", "</s>", "<unk>", *sorted({w for p in PROMPTS for w in p.split()})]


@pytest.fixture(scope="module")
def tiny():
    vocab = {w: i for i, w in enumerate(WORDS)}
    backend = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>", unk_token="<unk>")
    assert tokenizer.pad_token is None  # the baselines pad with EOS
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         bos_token_id=1, eos_token_id=2, pad_token_id=None)
    model = LlamaForCausalLM(config).eval()
    return model, tokenizer


def _reference_greedy(model, tokenizer, request):
    """Greedy decoding by hand, one full forward per token, EOS masked (min_new_tokens): the baselines' truth."""
    ids = torch.tensor([tokenizer(request.prompt)["input_ids"]])
    out = []
    with torch.no_grad():
        for _ in range(request.max_tokens):
            logits = model(ids).logits[0, -1]
            logits[tokenizer.eos_token_id] = -math.inf
            token = int(logits.argmax())
            out.append(token)
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    return out


def test_baselines_match_greedy_and_each_other(tiny):
    model, tokenizer = tiny
    work = [WorkloadRequest(prompt=PROMPTS[i], max_tokens=m, arrival=a)
            for i, m, a in [(1, 5, 0.0), (2, 3, 0.0), (0, 7, 0.01), (3, 4, 0.01)]]
    single, single_time = serve_one_at_a_time(model, tokenizer, work)
    batched, batched_time = serve_static_batches(model, tokenizer, work, batch_size=3, progress=True)
    for request, one, many in zip(work, single, batched, strict=True):
        for r in (one, many):
            assert r.error is None and r.output_tokens == request.max_tokens == len(r.token_ids)
            assert r.arrival == request.arrival and r.first_token >= r.arrival and r.first_token >= r.sent
            assert r.first_token <= r.finished
        assert one.prompt_tokens == many.prompt_tokens == len(request.prompt.split())  # WordLevel: no BOS
        assert many.token_ids == one.token_ids == _reference_greedy(model, tokenizer, request)
    # The first two arrive together and share the first batch: one first-token stamp, but each its own finish.
    assert batched[0].first_token == batched[1].first_token and batched[1].finished < batched[0].finished
    assert single[1].sent >= single[0].finished  # one at a time: the second waits for the first
    for records, duration in ((single, single_time), (batched, batched_time)):
        assert summarize(records, duration).output_tokens == 19 and max(r.finished for r in records) <= duration


def test_static_batches_rule(tiny):
    model, tokenizer = tiny
    # All arrive at once: batches of 2 in arrival order, each batch one generate (one first-token stamp).
    work = [WorkloadRequest(prompt="hello", max_tokens=2 + i, arrival=0.0) for i in range(5)]
    records, _ = serve_static_batches(model, tokenizer, work, batch_size=2)
    firsts = [r.first_token for r in records]
    assert firsts[0] == firsts[1] < firsts[2] == firsts[3] < firsts[4]
    assert records[2].sent >= records[1].finished


def test_generate_batch_left_pads(tiny):
    model, tokenizer = tiny
    a, b = tokenizer("hello")["input_ids"], tokenizer("a dog ran far")["input_ids"]
    with torch.no_grad():
        rows, stamps = generate_batch(model, [a, b], max_new_tokens=3, pad_id=2, start=time.perf_counter())
        alone, _ = generate_batch(model, [a], max_new_tokens=3, pad_id=2, start=time.perf_counter())
    assert len(stamps) == 3 and stamps == sorted(stamps)
    assert rows[0] == alone[0]  # the padded row decodes as it would alone


def test_baselines_reject_bad_input(tiny):
    model, tokenizer = tiny
    work = [WorkloadRequest(prompt="hello", max_tokens=2, arrival=0.0)]
    with pytest.raises(ValueError, match="batch_size=0"):
        serve_static_batches(model, tokenizer, work, batch_size=0)
    with pytest.raises(ValueError, match="workload"):
        serve_one_at_a_time(model, tokenizer, [])
    with pytest.raises(ValueError, match="max_tokens=0"):
        serve_one_at_a_time(model, tokenizer, [WorkloadRequest(prompt="hello", max_tokens=0, arrival=0.0)])
