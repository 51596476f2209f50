"""`llmbook rag`: index a user's files, search them, and answer questions from them.

    llmbook rag index PATH... --out DIR [--chunker recursive --chunk-size 1000 --vector-index exact]
    llmbook rag search DIR "query" [-k 10] [--mode hybrid|bm25|dense] [--json]
    llmbook rag ask DIR "question" [-k 4] [--min-cosine 0.3] [--model HF_ID_OR_DIR]

PATH is a file or a folder (text, Markdown, reST, HTML, JSONL with "id"/"text"). Files that cannot be
read are listed and skipped; nothing is indexed from a binary or empty file.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from llmbook.chain.pretrained import load_pretrained
from llmbook.rag.answer import REFUSAL, answer_questions
from llmbook.rag.chunking import CHUNKERS
from llmbook.rag.documents import load_documents
from llmbook.rag.index import MODES, VECTOR_INDEXES, Hit, Index, IndexConfig


def add_rag_commands(commands: argparse._SubParsersAction) -> None:
    rag = commands.add_parser("rag", help="index files, search them, answer questions from them")
    sub = rag.add_subparsers(required=True, metavar="ACTION")

    index = sub.add_parser("index", help="build a search index from files, folders or JSONL")
    index.add_argument("paths", nargs="+", type=Path)
    index.add_argument("--out", type=Path, required=True, help="folder the index is saved to")
    index.add_argument("--chunker", choices=CHUNKERS, default="recursive")
    index.add_argument("--chunk-size", type=int, default=1000, help="characters (words for --chunker tokens)")
    index.add_argument("--vector-index", choices=VECTOR_INDEXES, default="exact")
    index.add_argument("--embedder", default=None, help="sentence-embedding model (default: bundled all-MiniLM-L6-v2)")
    index.set_defaults(handler=_index)

    search = sub.add_parser("search", help="the best chunks for a query")
    search.add_argument("index", type=Path)
    search.add_argument("query")
    search.add_argument("-k", type=int, default=10)
    search.add_argument("--mode", choices=MODES, default=None, help="default: the index's (hybrid)")
    search.add_argument("--json", action="store_true", help="one JSON object per hit")
    search.set_defaults(handler=_search)

    ask = sub.add_parser("ask", help="a grounded answer with citations, or 'I don't know'")
    ask.add_argument("index", type=Path)
    ask.add_argument("question")
    ask.add_argument("-k", type=int, default=4, help="passages shown to the model")
    ask.add_argument("--min-cosine", type=float, default=0.3,
                     help="refuse when no passage is this similar to the question (embedder cosine)")
    ask.add_argument("--model", default=None, help="chat model (default: SmolLM2-135M-Instruct)")
    ask.set_defaults(handler=_ask)


def _index(args: argparse.Namespace) -> int:
    loaded = load_documents(args.paths)
    for where, why in loaded.skipped:
        print(f"skipped {where}: {why}", file=sys.stderr)
    if not loaded.documents:
        print("llmbook: error: nothing to index", file=sys.stderr)
        return 2
    config = IndexConfig(chunker=args.chunker, chunk_size=args.chunk_size, vector_index=args.vector_index,
                         embedder=args.embedder)
    index = Index.build(loaded.documents, config, progress=True)
    index.save(args.out)
    print(f"indexed {len(loaded.documents)} documents as {len(index)} chunks -> {args.out}"
          f" ({len(loaded.skipped)} skipped)")
    return 0


def _hit_row(hit: Hit) -> dict:
    return {"chunk_id": hit.chunk_id, "doc_id": hit.doc_id, "score": hit.score, "start": hit.start, "end": hit.end,
            "text": hit.text}


def _search(args: argparse.Namespace) -> int:
    hits = Index.load(args.index).search(args.query, args.k, mode=args.mode)
    for rank, hit in enumerate(hits, start=1):
        if args.json:
            print(json.dumps(_hit_row(hit), ensure_ascii=False))
        else:
            preview = " ".join(hit.text.split())[:100]
            print(f"{rank:>3}  {hit.score:.4f}  {hit.doc_id} [{hit.start}:{hit.end}]  {preview}")
    return 0


def _ask(args: argparse.Namespace) -> int:
    index = Index.load(args.index)
    hits = index.search(args.question, args.k)
    # RRF scores are rank-based; the refusal threshold is on the embedder's cosine, which has a meaning
    cosines = index.cosines(args.question, [h.chunk_id for h in hits])
    hits = sorted((index.hit(index.chunk(h.chunk_id), float(c)) for h, c in zip(hits, cosines, strict=True)),
                  key=lambda h: -h.score)
    if not hits or hits[0].score < args.min_cosine:  # refused before paying for a model load
        print(REFUSAL)
        return 0
    model, tokenizer = load_pretrained(args.model)
    answer = answer_questions([args.question], [hits], model, tokenizer)[0]
    print(answer.text)
    for chunk_id in answer.citations:
        n, hit = next((n, h) for n, h in enumerate(hits, start=1) if h.chunk_id == chunk_id)
        print(f"  [{n}] {hit.doc_id} [{hit.start}:{hit.end}]")
    return 0
