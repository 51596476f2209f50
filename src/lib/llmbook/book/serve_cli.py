"""`llmbook serve`: an OpenAI-compatible HTTP server for a model, on llmbook.serving's engine.

    llmbook serve [MODEL] [--host 127.0.0.1] [--port 8000] [--threads N] [--kv-cache-mb 512]
                  [--block-size 16] [--max-num-seqs 32] [--max-waiting 64] [--served-model-name NAME]

MODEL is a Hugging Face id or a local directory (default: SmolLM2-135M-Instruct from the artifact cache).
The server answers /v1/completions, /v1/chat/completions, /v1/models, /health and /metrics; Ctrl-C refuses
new requests, lets those in flight finish (30 s at most), and exits.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from llmbook.chain.pretrained import SMOLLM2, load_pretrained
from llmbook.serving.async_engine import AsyncEngine
from llmbook.serving.engine import Engine, EngineConfig
from llmbook.serving.server import Server

DRAIN_SECONDS = 30.0  # how long Ctrl-C lets requests in flight run on


def _at_least(low: int | float, kind: type = int):
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a{'n integer' if kind is int else ' number'}") from None
        if not value >= low:
            raise argparse.ArgumentTypeError(f"{text} must be >= {low}")
        return value

    return parse


def _port(text: str) -> int:
    value = _at_least(0)(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"{text} is not a port (0-65535; 0 = any free port)")
    return int(value)


def add_serve_command(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser("serve", help="an OpenAI-compatible HTTP server for a model",
                                description=__doc__.splitlines()[0])
    serve.add_argument("model", nargs="?", default=None, metavar="MODEL",
                       help=f"Hugging Face id or local directory (default: {SMOLLM2})")
    serve.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0: every interface)")
    serve.add_argument("--port", type=_port, default=8000, help="TCP port (0: any free port)")
    serve.add_argument("--threads", type=_at_least(1), default=None, help="torch CPU threads (default: torch's)")
    serve.add_argument("--kv-cache-mb", type=_at_least(1e-3, float), default=512.0, help="KV-cache pool size in MiB")
    serve.add_argument("--block-size", type=_at_least(1), default=16, help="token slots per KV block")
    serve.add_argument("--max-num-seqs", type=_at_least(1), default=32, help="sequences per batch at most")
    serve.add_argument("--max-waiting", type=_at_least(0), default=64,
                       help="queued requests at most; more are refused with HTTP 429")
    serve.add_argument("--served-model-name", default=None, help="the name clients ask for (default: MODEL)")
    serve.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    model, tokenizer = load_pretrained(args.model)
    engine = Engine(model, tokenizer, EngineConfig(kv_cache_mb=args.kv_cache_mb, block_size=args.block_size,
                                                   max_num_seqs=args.max_num_seqs))
    name = args.served_model_name or args.model or SMOLLM2
    server = Server(AsyncEngine(engine, max_waiting=args.max_waiting), model_name=name, drain_timeout=DRAIN_SECONDS,
                    log_level="info")
    url = server.start(args.host, args.port)
    stats = engine.stats()
    print(f"serving {name} at {url}/v1 (max_model_len {engine.max_model_len}, {stats.blocks_total} KV blocks of "
          f"{args.block_size} tokens, {torch.get_num_threads()} threads); Ctrl-C stops", flush=True)
    try:
        _wait_for_interrupt(server)
    finally:
        server.stop()
    return 0


def _wait_for_interrupt(server: Server) -> None:
    """Until Ctrl-C, or until uvicorn stops by itself."""
    try:
        while server.running:
            time.sleep(0.5)
    except KeyboardInterrupt:
        print(f"draining the requests in flight (up to {DRAIN_SECONDS:.0f} s)...", file=sys.stderr, flush=True)
