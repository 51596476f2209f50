"""Rerankers: score (query, passage) pairs jointly, after a cheap retriever has picked the candidates.

A bi-encoder embeds query and passage apart; a cross-encoder reads them together, ``[CLS] q [SEP] p [SEP]``,
so every layer can attend across the two (Nogueira & Cho 2019, "Passage Re-ranking with BERT",
arXiv:1901.04085). It is trained here from all-MiniLM-L6-v2 with a new one-logit head by binary
cross-entropy on labelled pairs (:func:`train_cross_encoder`, our own loop) and saved in the Hugging Face
format that ``sentence_transformers.CrossEncoder`` loads. A second reranker needs no training: ask a chat
LM "Does the passage answer the question?" and read the odds of "yes" against "no" at the next token
(:class:`LMRelevanceScorer`; the pointwise yes/no relevance of Nogueira et al. 2020, arXiv:2003.06713).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from llmbook.model.modes import eval_mode
from llmbook.progress import ProgressBar
from llmbook.rag.embeddings import minilm_path, quiet_loading


class RelevanceScorer(Protocol):
    def score(self, query: str, passages: Sequence[str]) -> np.ndarray: ...


def bce_with_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy of logits s against labels y in [0, 1]:

        -[y log sigmoid(s) + (1 - y) log(1 - sigmoid(s))] = softplus(s) - y s,

    the right-hand form never takes the log of a sigmoid that rounded to 0 or 1. (B,), (B,) -> ().
    """
    return (F.softplus(logits) - labels * logits).mean()


def linear_warmup_decay(step: int, warmup_steps: int, total_steps: int) -> float:
    """Learning-rate multiplier: 0 -> 1 linearly over ``warmup_steps``, then 1 -> 0 linearly at ``total_steps``.

    Warmup keeps the first updates, made with AdamW's still-noisy second moments and a random head, small.
    """
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


def pair_logits(model: Any, tokenizer: Any, queries: Sequence[str], passages: Sequence[str], *,
                max_length: int) -> torch.Tensor:
    """One relevance logit per (query, passage): the pair tokenised as ``[CLS] q [SEP] p [SEP]``, cut at
    ``max_length`` tokens from the longer of the two (sentence-transformers' "longest_first"). -> (B,)."""
    batch = tokenizer(list(queries), list(passages), padding=True, truncation="longest_first",
                      max_length=max_length, return_tensors="pt").to(model.device)
    return model(**batch).logits.squeeze(-1).float()  # (B, 1) -> (B,)


@dataclass(kw_only=True)
class CrossEncoderConfig:
    epochs: int = 1  # a few thousand pairs already move a pretrained encoder a long way; more overfits them
    batch_size: int = 16  # pairs per step: fits a CPU, and 16 pairs average out label noise
    lr: float = 2e-5  # the BERT fine-tuning range (2e-5..5e-5): larger wrecks the pretrained weights
    warmup_fraction: float = 0.1  # share of the steps spent ramping the rate up (the head starts random)
    max_length: int = 256  # tokens per pair; MiniLM was trained on 256, longer costs quadratically in attention
    seed: int = 0  # the new head's initialisation, dropout and the shuffling
    weight_decay: float = 0.01  # AdamW's decoupled decay (torch's default), applied to every parameter
    max_grad_norm: float = 1.0  # clip the global gradient norm: one bad batch must not undo the pretraining


class CrossEncoderReranker:
    """A sequence-classification model with one logit, used as ``score(query, passages) -> logits``."""

    def __init__(self, model: Any, tokenizer: Any, *, max_length: int = 256) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length

    @torch.inference_mode()
    def score(self, query: str, passages: Sequence[str], *, batch_size: int = 32) -> np.ndarray:
        """(len(passages),) float32 logits: higher is more relevant (sigmoid gives a probability)."""
        scores = np.zeros(len(passages), dtype=np.float32)
        with eval_mode(self.model):
            for start in range(0, len(passages), batch_size):
                chunk = list(passages[start:start + batch_size])
                logits = pair_logits(self.model, self.tokenizer, [query] * len(chunk), chunk,
                                     max_length=self.max_length)
                scores[start:start + len(chunk)] = logits.cpu().numpy()
        return scores

    def save(self, directory: str | Path) -> Path:
        """Weights (safetensors), config and tokenizer; the tokenizer's ``model_max_length`` records our
        ``max_length`` so that ``sentence_transformers.CrossEncoder(directory)`` truncates where we do."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        saved_length = self.tokenizer.model_max_length
        self.tokenizer.model_max_length = self.max_length
        try:
            with quiet_loading():
                self.model.save_pretrained(directory)
                self.tokenizer.save_pretrained(directory)
        finally:
            self.tokenizer.model_max_length = saved_length
        return directory

    @classmethod
    def load(cls, directory: str | Path, *, device: str = "cpu") -> CrossEncoderReranker:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        directory = Path(directory)
        if not (directory / "config.json").is_file():
            raise FileNotFoundError(f"{directory} holds no saved cross-encoder (config.json is missing)")
        with quiet_loading():
            tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
            model = AutoModelForSequenceClassification.from_pretrained(directory, local_files_only=True)
        return cls(model.to(device).eval(), tokenizer, max_length=tokenizer.model_max_length)


def train_cross_encoder(examples: Sequence[tuple[str, str, float]], config: CrossEncoderConfig | None = None, *,
                        base: str | Path | None = None, device: str = "cpu",
                        progress: bool = False) -> tuple[CrossEncoderReranker, list[float]]:
    """Fine-tune ``base`` (default all-MiniLM-L6-v2) with a new seeded one-logit head on (query, passage, label)
    triples, label 1.0 relevant and 0.0 not: shuffled batches, :func:`bce_with_logits`, AdamW (arXiv:1711.05101) with
    :func:`linear_warmup_decay`. Returns the reranker (in eval mode) and the loss of every step;
    ``epochs=0`` returns the untrained starting point (the baseline a test compares with)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    config = config or CrossEncoderConfig()
    if config.epochs < 0 or config.batch_size < 1:
        raise ValueError(f"epochs={config.epochs}, batch_size={config.batch_size}: need epochs >= 0, batch_size >= 1")
    if not examples:
        raise ValueError("no training examples")
    bad = [i for i, (_, _, label) in enumerate(examples) if not 0.0 <= label <= 1.0]
    if bad:
        raise ValueError(f"labels must lie in [0, 1]: examples {bad[:5]} do not")
    source = minilm_path() if base is None else base
    local = isinstance(source, Path) or Path(source).is_dir()
    torch.manual_seed(config.seed)  # the head is initialised inside from_pretrained
    with quiet_loading(errors_only=True):  # its report would only say that the head is new
        tokenizer = AutoTokenizer.from_pretrained(str(source), local_files_only=local)
        model = AutoModelForSequenceClassification.from_pretrained(str(source), num_labels=1, local_files_only=local)
    model.to(device).train()

    steps_per_epoch = math.ceil(len(examples) / config.batch_size)
    total_steps = config.epochs * steps_per_epoch
    warmup_steps = round(config.warmup_fraction * total_steps)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: linear_warmup_decay(step, warmup_steps, total_steps))
    shuffler = random.Random(config.seed)
    losses: list[float] = []
    with ProgressBar(total=total_steps, desc="cross-encoder", unit="step", disable=not progress) as bar:
        for _ in range(config.epochs):
            order = list(range(len(examples)))
            shuffler.shuffle(order)
            for start in range(0, len(order), config.batch_size):
                batch = [examples[i] for i in order[start:start + config.batch_size]]
                queries, passages, labels = zip(*batch, strict=True)
                logits = pair_logits(model, tokenizer, queries, passages, max_length=config.max_length)
                loss = bce_with_logits(logits, torch.tensor(labels, dtype=torch.float32, device=logits.device))
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                optimizer.step()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(loss.item())
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}")
    return CrossEncoderReranker(model.eval(), tokenizer, max_length=config.max_length), losses


DEFAULT_INSTRUCTION = "Does the passage answer the question? Answer yes or no."


def yes_no_relevance(last_logits: torch.Tensor, yes_id: int, no_id: int) -> torch.Tensor:
    """log P("yes") - log P("no") of the next token: (B, V) -> (B,). The softmax normaliser cancels, so this
    is also ``logit_yes - logit_no``: the log-odds of "yes" when the model answers with one of the two."""
    logps = torch.log_softmax(last_logits.float(), dim=-1)  # (B, V)
    return logps[:, yes_id] - logps[:, no_id]


class LMRelevanceScorer:
    """Relevance from any Hugging Face causal LM with a chat template, zero-shot (see :func:`yes_no_relevance`).

    Prompts are left-padded into batches with positions counted from each row's first real token, so a
    score does not depend on the batch it was computed in.
    """

    def __init__(self, model: Any, tokenizer: Any, *, instruction: str = DEFAULT_INSTRUCTION,
                 yes: str = "yes", no: str = "no") -> None:
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError("the tokenizer has no chat template: LMRelevanceScorer needs a chat (instruct) model")
        self.model = model
        self.tokenizer = tokenizer
        self.instruction = instruction
        self.yes_id, self.no_id = (self._single_token(word) for word in (yes, no))
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = 0 if pad is None else pad  # any id will do: padded positions are masked out

    def _single_token(self, word: str) -> int:
        ids = self.tokenizer.encode(word, add_special_tokens=False)
        if len(ids) != 1:
            raise ValueError(f"{word!r} is {len(ids)} tokens for this tokenizer: the answer words must be one token")
        return ids[0]

    def prompt(self, query: str, passage: str) -> str:
        """The chat-formatted prompt, ending where the assistant's answer begins."""
        content = f"Question: {query}\n\nPassage: {passage}\n\n{self.instruction}"
        return self.tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                                  add_generation_prompt=True)

    @torch.inference_mode()
    def score(self, query: str, passages: Sequence[str], *, batch_size: int = 8) -> np.ndarray:
        """(len(passages),) float32 log-odds of "yes" over "no"."""
        scores = np.zeros(len(passages), dtype=np.float32)
        with eval_mode(self.model):
            for start in range(0, len(passages), batch_size):
                prompts = [self.prompt(query, passage) for passage in passages[start:start + batch_size]]
                rows = self.tokenizer(prompts, add_special_tokens=False)["input_ids"]  # the template has them
                width = max(len(row) for row in rows)
                ids = torch.tensor([[self.pad_id] * (width - len(row)) + row for row in rows])  # (B, T) left-padded
                mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in rows])  # (B, T)
                positions = (mask.cumsum(dim=1) - 1).clamp(min=0)  # (B, T): 0 at each row's first real token
                device = self.model.device
                logits = self.model(input_ids=ids.to(device), attention_mask=mask.to(device),
                                    position_ids=positions.to(device), logits_to_keep=1).logits  # (B, 1, V)
                relevance = yes_no_relevance(logits[:, -1], self.yes_id, self.no_id)
                scores[start:start + len(rows)] = relevance.cpu().numpy()
        return scores


def rerank(query: str, candidates: Sequence[tuple[str, str]], scorer: RelevanceScorer, *,
           top_n: int | None = None) -> list[tuple[str, float]]:
    """``(id, score)`` of the (id, text) candidates, best first; equal scores keep their input order."""
    if top_n is not None and top_n < 0:
        raise ValueError(f"top_n={top_n}: must be None or >= 0")
    if not candidates:
        return []
    scores = scorer.score(query, [text for _, text in candidates])
    order = sorted(range(len(candidates)), key=lambda i: -float(scores[i]))  # sorted() is stable
    return [(candidates[i][0], float(scores[i])) for i in order[:top_n]]
