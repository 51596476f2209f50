"""The book's base model: the pretraining chapter's recipe, callable from any later chapter.

The pretraining chapter trains a LLaMA-style decoder on the cleaned corpus of the data chapter
with the book tokenizer; fine-tuning, alignment, compression and serving start from it.
:func:`book_base_model` returns it as a cached artifact (Hugging Face ``LlamaForCausalLM``
format plus the tokenizer files), training it first when the cache lacks it — so a later chapter
runs from a clean clone without executing the pretraining notebook.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llmbook.book import artifacts
from llmbook.book.profiles import PretrainingConfig, resolve
from llmbook.chain.corpus import pretraining_corpus, tokenizer_for
from llmbook.chain.pretrained import quiet_transformers
from llmbook.model import DecoderLM, ModelConfig, save_pretrained
from llmbook.progress import ProgressBar
from llmbook.training.data import LoaderConfig, PackedLoader, eval_windows
from llmbook.training.loop import EvalResult, TrainConfig, Trainer, evaluate
from llmbook.training.optim import param_groups
from llmbook.training.schedule import ScheduleConfig

BASE_MODEL_VERSION = 1  # bump when the recipe below changes what gets trained


@dataclass
class CorpusSplit:
    """The tokenized corpus cut into training and validation documents."""

    train_tokens: np.ndarray  # packed training tokens
    val_tokens: np.ndarray  # the first eval_tokens of the held-out documents
    val_bytes: int  # UTF-8 bytes of the scored validation text (for bits per byte)
    n_train_docs: int
    n_docs: int
    eot_id: int  # end-of-text token between documents
    tokenizer: Any  # the book tokenizer
    tokenizer_dir: Path  # its artifact directory (tokenizer.json etc.)
    corpus_key: str  # artifact key of the corpus


def corpus_split(cfg: PretrainingConfig) -> CorpusSplit:
    """Load (or build) the corpus and tokenizer of ``cfg.data_profile``; hold out the last documents."""
    data_cfg = resolve("pretraining_data", cfg.data_profile, seed=cfg.seed)
    corpus = pretraining_corpus(data_cfg)
    tokenizer, tok_artifact = tokenizer_for(data_cfg)
    n_train = corpus.n_docs - max(1, int(round(cfg.val_fraction * corpus.n_docs)))
    split = int(corpus.offsets[n_train])
    val = corpus.tokens[split:][: cfg.eval_tokens]
    scored = [int(i) for i in val[1:] if i != corpus.eot_id]  # every token but the first is predicted
    return CorpusSplit(
        train_tokens=corpus.tokens[:split], val_tokens=val, val_bytes=len(tokenizer.decode_bytes(scored)),
        n_train_docs=n_train, n_docs=corpus.n_docs, eot_id=corpus.eot_id, tokenizer=tokenizer,
        tokenizer_dir=tok_artifact.path, corpus_key=corpus.artifact.key,
    )


def device_and_precision(cfg: PretrainingConfig) -> tuple[str, str]:
    """``("cuda", cfg.precision)`` on a GPU; ``("cpu", "fp32")`` otherwise (CPU bf16 is ~15x slower here)."""
    return ("cuda", cfg.precision) if torch.cuda.is_available() else ("cpu", "fp32")


def base_model_config(cfg: PretrainingConfig, vocab_size: int) -> ModelConfig:
    return ModelConfig(vocab_size=vocab_size, d_model=cfg.d_model, n_layers=cfg.n_layers, n_heads=cfg.n_heads,
                       max_seq_len=cfg.seq_len, attn_impl="sdpa")


def base_train_config(cfg: PretrainingConfig, precision: str, total_steps: int | None = None) -> TrainConfig:
    """AdamW at ``cfg.lr`` with linear warm-up and cosine decay to ``cfg.min_lr_ratio`` (the LLaMA recipe)."""
    steps = total_steps or cfg.steps
    schedule = ScheduleConfig(kind="cosine", total_steps=steps, warmup_steps=min(cfg.warmup_steps, steps - 1),
                              min_lr_ratio=cfg.min_lr_ratio)
    return TrainConfig(lr=cfg.lr, weight_decay=cfg.weight_decay, precision=precision, schedule=schedule)


@dataclass
class BaseModelRun:
    """A trained base model with its curves."""

    model: DecoderLM
    trainer: Trainer  # its optimizer holds AdamW's moments; history has one row per step
    val_curve: list[dict[str, float]] = field(default_factory=list)  # step, val_loss, val_bpb
    final: EvalResult | None = None  # validation at the last step


def train_base_model(cfg: PretrainingConfig, split: CorpusSplit, *, progress: bool = True) -> BaseModelRun:
    """Train the base model for ``cfg.steps`` steps, validating every ``cfg.eval_every``."""
    device, precision = device_and_precision(cfg)
    torch.manual_seed(cfg.seed)
    model = DecoderLM(base_model_config(cfg, split.tokenizer.vocab_size)).to(device)
    train_model = torch.compile(model) if (cfg.compile and device == "cuda") else model
    loader_cfg = LoaderConfig(seq_len=cfg.seq_len, batch_size=cfg.batch_size, seed=cfg.seed)
    loader = PackedLoader(split.train_tokens, loader_cfg)
    train_cfg = base_train_config(cfg, precision)
    optimizer = None  # the book's AdamW, equal to torch's step for step (the chapter checks it) ...
    if device == "cuda":  # ... but one fused kernel beats its ~7 launches per tensor when the GPU is the limit
        optimizer = torch.optim.AdamW(param_groups(model, train_cfg.weight_decay), lr=train_cfg.lr,
                                      betas=train_cfg.betas, eps=train_cfg.eps, fused=True)
    trainer = Trainer(train_model, loader, train_cfg, optimizer=optimizer)

    def validate(step: int) -> EvalResult:
        result = evaluate(train_model, eval_windows(split.val_tokens, cfg.seq_len, 16), n_bytes=split.val_bytes,
                          precision=precision)
        val_curve.append({"step": float(step), "val_loss": result.loss, "val_bpb": float(result.bpb or math.nan)})
        return result

    val_curve: list[dict[str, float]] = []
    final = validate(0)
    bar = None
    if progress:
        bar = ProgressBar(total=cfg.steps, desc="pretrain", unit="step")
    while trainer.step < cfg.steps:
        rows = trainer.run(until_step=min(trainer.step + cfg.eval_every, cfg.steps))
        final = validate(trainer.step)
        if bar is not None:
            bar.update(len(rows))
            bar.set_postfix(loss=f"{rows[-1]['loss']:.3f}", val=f"{final.loss:.3f}",
                            tok_s=f"{rows[-1]['tokens_per_s']:.0f}")
    if bar is not None:
        bar.close()
    return BaseModelRun(model=model, trainer=trainer, val_curve=val_curve, final=final)


def base_model_key(cfg: PretrainingConfig, split: CorpusSplit) -> dict[str, Any]:
    """Everything that determines the trained weights (the artifact's cache key)."""
    _, precision = device_and_precision(cfg)
    fields = ("val_fraction", "steps", "lr", "batch_size", "seq_len", "warmup_steps", "min_lr_ratio", "weight_decay",
              "seed")
    model = dataclasses.asdict(base_model_config(cfg, split.tokenizer.vocab_size))
    return {"version": BASE_MODEL_VERSION, "model": model, "corpus": split.corpus_key, "precision": precision,
            **{f: getattr(cfg, f) for f in fields}}


def book_base_model(
    cfg: PretrainingConfig, *, split: CorpusSplit | None = None, trained: DecoderLM | None = None,
    progress: bool = True,
) -> artifacts.Artifact:
    """The base model of ``cfg`` as an artifact directory (HF format + tokenizer files).

    Built on a cache miss: from ``trained`` when the caller has just trained it (the pretraining
    chapter), else by :func:`train_base_model`. Load it with ``llmbook.model.from_pretrained(path)``
    or ``transformers.LlamaForCausalLM.from_pretrained(path)``.
    """
    split = split or corpus_split(cfg)

    def build(directory: Path) -> None:
        model = trained if trained is not None else train_base_model(cfg, split, progress=progress).model
        device = next(model.parameters()).device
        with quiet_transformers():  # no DeepSpeed accelerator probe, no one-shard "Writing" bar
            save_pretrained(model.cpu(), directory)
        model.to(device)
        for f in split.tokenizer_dir.iterdir():
            if f.name != "manifest.json":
                shutil.copy(f, directory / f.name)

    return artifacts.get_or_build("base_model", base_model_key(cfg, split), build)
