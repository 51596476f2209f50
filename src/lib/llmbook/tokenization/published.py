"""Published OpenAI vocabularies (GPT-2 r50k, cl100k_base, o200k_base), loaded fully offline.

A `.tiktoken` file is one line per token: base64(token bytes), a space, its rank (= id). GPT-2's
file (MIT, from the openai-whisper sdist) is bundled in `data/vocabularies/`. cl100k/o200k are too
big to commit; `fetch_published_vocabularies` takes them from the npm package `tiktoken`
(js-tiktoken JSON, whose `bpe_ranks` string holds lines "<label> <first rank> tok tok ...") and
writes them next to GPT-2's file, where `data/vocabularies/.gitignore` keeps them out of git. All
three are then found in one place, and this module needs nothing but the data directory.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from llmbook.data.corpora import data_dir

from .bpe import ByteBPETokenizer
from .pretokenize import CL100K_PATTERN, GPT2_PATTERN, O200K_PATTERN

NPM_PACKAGE = "tiktoken@1.0.22"  # ships encoders/{cl100k,o200k}_base.json
FETCH_COMMAND = "python -c 'from llmbook.tokenization import fetch_published_vocabularies as f; f()'"

# name -> (file, pattern, special tokens, sha256 of the .tiktoken file as tiktoken pins it)
PUBLISHED: dict[str, tuple[str, str, dict[str, int], str]] = {
    "gpt2": (
        "gpt2.tiktoken",
        GPT2_PATTERN,
        {"<|endoftext|>": 50256},
        "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930",
    ),
    "cl100k_base": (
        "cl100k_base.tiktoken",
        CL100K_PATTERN,
        {
            "<|endoftext|>": 100257,
            "<|fim_prefix|>": 100258,
            "<|fim_middle|>": 100259,
            "<|fim_suffix|>": 100260,
            "<|endofprompt|>": 100276,
        },
        "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    ),
    "o200k_base": (
        "o200k_base.tiktoken",
        O200K_PATTERN,
        {"<|endoftext|>": 199999, "<|endofprompt|>": 200018},
        "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    ),
}


def bundled_vocabulary_dir() -> Path:
    """`vocabularies/` in the data directory: GPT-2's bundled ranks and the fetched cl100k/o200k files."""
    return data_dir() / "vocabularies"


def read_tiktoken_file(path: str | Path) -> dict[bytes, int]:
    """Parse a `.tiktoken` file into {token bytes: rank}."""
    ranks: dict[bytes, int] = {}
    for line in Path(path).read_bytes().splitlines():
        if line:
            tok, rank = line.split()
            ranks[base64.b64decode(tok)] = int(rank)
    return ranks


def write_tiktoken_file(ranks: dict[bytes, int], path: str | Path) -> None:
    """Write {token bytes: rank} as a `.tiktoken` file, sorted by rank."""
    lines = [base64.b64encode(t) + b" " + str(r).encode() for t, r in sorted(ranks.items(), key=lambda kv: kv[1])]
    Path(path).write_bytes(b"\n".join(lines) + b"\n")


def js_tiktoken_ranks(bpe_ranks: str) -> dict[bytes, int]:
    """Decode js-tiktoken's compressed `bpe_ranks`: lines "<label> <offset> b64 b64 ..."."""
    ranks: dict[bytes, int] = {}
    for line in bpe_ranks.split("\n"):
        if not line:
            continue
        _, offset, *tokens = line.split(" ")
        for i, tok in enumerate(tokens):
            ranks[base64.b64decode(tok)] = int(offset) + i
    return ranks


def fetch_published_vocabularies(dest: Path | None = None) -> dict[str, Path]:
    """Get cl100k_base / o200k_base from `npm pack tiktoken@1.0.22`, write `.tiktoken` files.

    Runs npm in a temporary directory (needs `npm` and access to the npm registry), converts the
    js-tiktoken JSON to `.tiktoken`, checks tiktoken's pinned sha256, and returns {name: path}.
    The files go to `dest`, by default `bundled_vocabulary_dir()`, where `load_published` looks.
    """
    dest = Path(dest) if dest is not None else bundled_vocabulary_dir()
    dest.mkdir(parents=True, exist_ok=True)
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("fetch_published_vocabularies needs `npm` on PATH (apt-get install npm)")
    out: dict[str, Path] = {}
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run(
            [npm, "pack", NPM_PACKAGE, "--silent"], cwd=tmp, capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"`npm pack {NPM_PACKAGE}` failed: {done.stderr.strip()}")
        tgz = next(Path(tmp).glob("tiktoken-*.tgz"))
        with tarfile.open(tgz) as tar:
            for name in ("cl100k_base", "o200k_base"):
                member = tar.extractfile(f"package/encoders/{name}.json")
                assert member is not None
                ranks = js_tiktoken_ranks(json.load(member)["bpe_ranks"])
                path = dest / PUBLISHED[name][0]
                write_tiktoken_file(ranks, path)
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                if digest != PUBLISHED[name][3]:
                    raise RuntimeError(f"{path}: sha256 {digest} differs from tiktoken's pinned hash")
                out[name] = path
    return out


def _find(name: str, directory: Path | None) -> Path:
    """The `.tiktoken` file of `name` in `directory` (default: `bundled_vocabulary_dir()`)."""
    if name not in PUBLISHED:
        raise ValueError(f"name must be one of {sorted(PUBLISHED)}, got {name!r}")
    path = (Path(directory) if directory is not None else bundled_vocabulary_dir()) / PUBLISHED[name][0]
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; fetch it with `llmbook assets` or {FETCH_COMMAND}")
    return path


def load_published_ranks(name: str, directory: Path | None = None) -> dict[bytes, int]:
    """{token bytes: rank} of a published vocabulary ("gpt2", "cl100k_base", "o200k_base")."""
    return read_tiktoken_file(_find(name, directory))


def load_published(name: str, directory: Path | None = None):
    """A `tiktoken.Encoding` for a published vocabulary, built offline from the local file."""
    import tiktoken

    ranks = load_published_ranks(name, directory)
    _, pattern, specials, _ = PUBLISHED[name]
    return tiktoken.Encoding(name=name, pat_str=pattern, mergeable_ranks=ranks, special_tokens=specials)


def load_published_bpe(name: str, directory: Path | None = None) -> ByteBPETokenizer:
    """Our from-scratch `ByteBPETokenizer` with a published vocabulary's ranks and pattern."""
    ranks = load_published_ranks(name, directory)
    _, pattern, specials, _ = PUBLISHED[name]
    return ByteBPETokenizer(ranks, specials, pattern)
