"""Byte-level BPE from GPT-2-style files (`vocab.json` + `merges.txt`) or from in-memory vocab and merges.

GPT-2 (Radford et al. 2019) ships its tokenizer as two files, which HF `tokenizers`, `transformers`
and many course assignments read:

* `vocab.json`: {token: id}, each token's bytes written in the printable `bytes_to_unicode`
  alphabet (byte 0x20 -> "Ġ"), so the file is valid JSON text whatever the bytes are;
* `merges.txt`: an optional first line starting with "#version", then one merge per line, the
  two tokens in the same alphabet separated by one space, in rank order.

:func:`from_vocab_merges` takes the same content in memory, as CS336's `Tokenizer(vocab, merges,
special_tokens)`: `vocab` {id: bytes}, `merges` [(bytes, bytes)], special token strings.

Our encoder is rank-based (tiktoken): the id of a merged token is its priority, so the ids of the
tokens the merges make must grow in merge order (true of every BPE trainer's output: GPT-2, HF,
CS336 and ours). Vocabulary entries that are neither bytes, nor made by a merge, nor special
(GPT-2's `<|endoftext|>` when it is not passed as special) are kept for decoding only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from .bpe import CHAR_TO_BYTE, ByteBPETokenizer, bytes_to_visible, visible_to_bytes
from .pretokenize import GPT2_PATTERN

PathLike = str | os.PathLike


def _where(source: str | None, k: int) -> str:
    """How an error names merge k: `merges.txt:LINE` for a file, `merges[k]` in memory."""
    return source if source is not None else f"merges[{k}]"


def from_vocab_merges(
    vocab: Mapping[int, bytes],
    merges: Sequence[tuple[bytes, bytes]],
    special_tokens: Sequence[str] | None = None,
    pattern: str = GPT2_PATTERN,
    *,
    merge_sources: Sequence[str] | None = None,
) -> ByteBPETokenizer:
    """A :class:`ByteBPETokenizer` from {id: token bytes}, merges as byte pairs in rank order, and special tokens.

    A special token missing from `vocab` gets the next free id (as CS336's tokenizer appends it).
    Every single byte must be in `vocab`; each merge's two parts must be bytes or earlier merges'
    results, and its result must be in `vocab` with an id above the previous merge's result.
    `merge_sources` (one label per merge, e.g. "merges.txt:5") names the culprit in errors.
    """
    if merge_sources is not None and len(merge_sources) != len(merges):
        raise ValueError(f"merge_sources must have one label per merge ({len(merges)}), got {len(merge_sources)}")
    by_bytes: dict[bytes, int] = {}
    for i, b in vocab.items():
        if not isinstance(i, int) or isinstance(i, bool) or i < 0 or not isinstance(b, bytes):
            raise ValueError(f"vocab must map non-negative int ids to bytes, got {i!r}: {b!r}")
        if b in by_bytes:
            raise ValueError(f"vocab gives the token {b!r} two ids: {by_bytes[b]} and {i}")
        by_bytes[b] = i
    specials: dict[str, int] = {}
    next_id = max(vocab, default=-1) + 1
    for s in special_tokens or ():
        if not isinstance(s, str) or not s:
            raise ValueError(f"special_tokens must be non-empty strings, got {s!r}")
        b = s.encode("utf-8")
        if b in by_bytes:
            specials[s] = by_bytes.pop(b)
        elif s not in specials:
            specials[s], next_id = next_id, next_id + 1
    missing = [x for x in range(256) if bytes([x]) not in by_bytes]
    if missing:
        raise ValueError(f"vocab must hold all 256 single bytes; it lacks {len(missing)}, e.g. {missing[:8]}")
    ranks = {bytes([x]): by_bytes[bytes([x])] for x in range(256)}
    id_merges: list[tuple[int, int]] = []
    last_id, last_where = -1, ""
    for k, pair in enumerate(merges):
        where = _where(merge_sources[k] if merge_sources is not None else None, k)
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and all(isinstance(p, bytes) for p in pair)):
            raise ValueError(f"{where}: a merge is a pair of bytes, got {pair!r}")
        a, b = pair
        for part in (a, b):
            if part not in ranks:
                what = "is not in the vocabulary" if part not in by_bytes else "is made by no earlier merge"
                raise ValueError(f"{where}: merge token {bytes_to_visible(part)!r} ({part!r}) {what}")
        new = a + b
        if new in ranks:
            continue  # another split of a token already made: rank-based encoding needs it once
        if new not in by_bytes:
            raise ValueError(f"{where}: the merged token {bytes_to_visible(new)!r} ({new!r}) is not in the vocabulary")
        if by_bytes[new] <= last_id:
            raise ValueError(
                f"{where}: ids must grow in merge order; {bytes_to_visible(new)!r} has id {by_bytes[new]}, "
                f"not above {last_id} made at {last_where}"
            )
        last_id, last_where = by_bytes[new], where
        ranks[new] = by_bytes[new]
        id_merges.append((ranks[a], ranks[b]))
    extra = {i: b for b, i in by_bytes.items() if b not in ranks}
    return ByteBPETokenizer(ranks, specials, pattern, id_merges, extra_tokens=extra)


def read_vocab_json(path: PathLike) -> dict[int, bytes]:
    """{id: token bytes} from a GPT-2 `vocab.json` ({token in the printable byte alphabet: id})."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not a vocab.json: not UTF-8 ({e})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: not a vocab.json: invalid JSON ({e.msg})") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{path} is not a vocab.json: a JSON {type(doc).__name__}, not an object")
    vocab: dict[int, bytes] = {}
    for token, i in doc.items():
        if not isinstance(i, int) or isinstance(i, bool) or i < 0:
            raise ValueError(f"{path}: token {token!r} has the id {i!r}; ids are non-negative ints")
        bad = sorted({c for c in token if c not in CHAR_TO_BYTE})
        if bad or not token:
            raise ValueError(f"{path}: token {token!r} has characters outside the GPT-2 byte alphabet: {bad}")
        if i in vocab:
            raise ValueError(f"{path}: id {i} is given to two tokens, {bytes_to_visible(vocab[i])!r} and {token!r}")
        vocab[i] = visible_to_bytes(token)
    return vocab


def read_merges_txt(path: PathLike) -> tuple[list[tuple[bytes, bytes]], list[str]]:
    """(merges as byte pairs, "file:line" of each) from a GPT-2 `merges.txt`; blank lines are skipped."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not a merges.txt: not UTF-8 ({e})") from None
    merges, sources = [], []
    for n, line in enumerate(lines, start=1):
        line = line.rstrip("\r")
        if not line or (n == 1 and line.startswith("#version")):
            continue
        parts = line.split(" ")
        if len(parts) != 2 or not all(parts):
            raise ValueError(f"{path}:{n}: a merge line is two tokens separated by one space, got {line!r}")
        bad = sorted({c for c in line if c != " " and c not in CHAR_TO_BYTE})
        if bad:
            raise ValueError(f"{path}:{n}: characters outside the GPT-2 byte alphabet {bad} in {line!r}")
        merges.append((visible_to_bytes(parts[0]), visible_to_bytes(parts[1])))
        sources.append(f"{path}:{n}")
    return merges, sources


def load_gpt2_files(
    vocab_path: PathLike,
    merges_path: PathLike,
    special_tokens: Sequence[str] | None = None,
    pattern: str = GPT2_PATTERN,
) -> ByteBPETokenizer:
    """A :class:`ByteBPETokenizer` from GPT-2 `vocab.json` and `merges.txt` (errors name the file and line)."""
    vocab = read_vocab_json(vocab_path)
    merges, sources = read_merges_txt(merges_path)
    try:
        return from_vocab_merges(vocab, merges, special_tokens, pattern, merge_sources=sources)
    except ValueError as e:
        if str(e).startswith(str(Path(merges_path))):
            raise
        raise ValueError(f"{vocab_path}: {e}") from None


def write_gpt2_files(
    tok: ByteBPETokenizer, directory: PathLike, vocab_name: str = "vocab.json", merges_name: str = "merges.txt"
) -> tuple[Path, Path]:
    """Write `tok` as GPT-2 `vocab.json` + `merges.txt` in `directory`; returns both paths.

    Special tokens go into `vocab.json` by their text (pass them as `special_tokens` on loading).
    Merges are written in rank order (recovered from the ranks when `tok` has none, as for
    published tiktoken vocabularies).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab = {bytes_to_visible(b): i for i, b in sorted(tok.vocab.items())}
    vocab_path, merges_path = directory / vocab_name, directory / merges_name
    vocab_path.write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = [f"{bytes_to_visible(a)} {bytes_to_visible(b)}" for a, b in tok.byte_merges]
    merges_path.write_text("#version: 0.2\n" + "\n".join(lines) + "\n", encoding="utf-8")
    return vocab_path, merges_path
