"""The same DPO run through ``trl.DPOTrainer``: the production reference our loop is checked against.

:func:`llmbook.alignment.preference.train_preference` and trl's trainer must agree step for step when
they see the same tokens, the same batch and the same optimiser. What it takes to make trl see exactly
our tokens and settings (trl 1.16):

- **No re-tokenisation.** ``DPOTrainer`` always runs ``_prepare_dataset`` on a text dataset (extract the
  prompt, append EOS, tokenise prompt and prompt+answer, split where they diverge), and that step can
  add or drop tokens. Its collator (``DataCollatorForPreference``) reads only the columns ``prompt_ids``,
  ``chosen_ids`` and ``rejected_ids``, so a subclass whose ``_prepare_dataset`` returns a dataset of those
  columns unchanged feeds our :class:`~llmbook.alignment.preference.EncodedPair` ids verbatim. The
  subclass also records every batch it hands the model (``TrlDpoRun.batches``), so a test can compare it
  with :func:`~llmbook.alignment.preference.pair_batch`.
- **Defaults that differ from our loop**: ``bf16`` and gradient checkpointing (both on in DPOConfig),
  gradient clipping (``max_grad_norm=1``), a linear LR decay, ``max_length=1024`` truncation, the fused
  AdamW kernel. Here: fp32, no checkpointing, no clipping, a constant LR with no warm-up, no truncation,
  ``adamw_torch`` with torch's defaults and weight decay 0, as in ``train_preference``.
- **The same batch every step.** Shuffling differs between the two loops, so only ``batch_size ==
  len(pairs)`` (full batch) makes the step-by-step losses comparable; anything else is a ValueError.
- **Reference log-probabilities** are precomputed (``precompute_ref_log_probs``) from the model before
  training, as :func:`~llmbook.alignment.preference.reference_logps` does.

trl logs every step; the loss of step k is the loss before the k-th update, as in ``PreferenceRun.losses``.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from llmbook.alignment.preference import EncodedPair

# trl imports bitsandbytes, whose CPU build logs that an optional kernels package is missing, and the trainer
# imports DeepSpeed, which warns that it found no GPU: nothing to act on. DeepSpeed resets its logger's level on
# import, so its one message is filtered instead.
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
logging.getLogger("DeepSpeed").addFilter(lambda record: not record.getMessage().startswith("Setting accelerator"))


@dataclass(kw_only=True)
class TrlDpoRun:
    losses: list[float] = field(default_factory=list)  # per step, before that step's update
    reward_accuracy: list[float] = field(default_factory=list)  # trl's rewards/accuracies
    margins: list[float] = field(default_factory=list)  # trl's rewards/margins
    seconds_per_step: float = 0.0  # median, first step excluded (as PreferenceRun)
    tokens_per_second: float = 0.0  # input tokens (padding included) per second, first step excluded
    setup_seconds: float = 0.0  # trainer construction, reference log-probs included
    step_seconds: list[float] = field(default_factory=list)  # each step, begin to end (see step_timer)
    step_ends: list[float] = field(default_factory=list)  # perf_counter at each step end
    batches: list[dict[str, torch.Tensor]] = field(default_factory=list)  # what trl fed the model, per step (CPU)
    log_history: list[dict[str, Any]] = field(default_factory=list)


def _trainer_class() -> type:
    """A DPOTrainer that takes pre-tokenised pairs as they are and records the batches it trains on."""
    from trl import DPOTrainer

    class PretokenizedDPOTrainer(DPOTrainer):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self.fed: list[dict[str, torch.Tensor]] = []
            super().__init__(*args, **kwargs)

        def _prepare_dataset(self, dataset: Any, processing_class: Any, args: Any, dataset_name: str) -> Any:
            # the ids are final: no prompt extraction, no EOS appended, no tokenisation, no filtering
            missing = {"prompt_ids", "chosen_ids", "rejected_ids"} - set(dataset.column_names)
            if missing:
                raise ValueError(f"pre-tokenised {dataset_name} dataset lacks columns {sorted(missing)}")
            return dataset

        def compute_loss(self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            if model.training:  # the training batches only (not trl's precompute pass, which has its own path)
                keys = ("input_ids", "attention_mask", "completion_mask")
                self.fed.append({k: inputs[k].detach().cpu() for k in keys})
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    return PretokenizedDPOTrainer


def step_timer() -> Any:
    """A ``TrainerCallback`` timing each optimiser step of a transformers/trl trainer: ``times`` from step begin
    to step end (forward, backward, clipping check, optimiser step: the batch is collated before step begin),
    ``ends`` the clock at each step end (consecutive differences: whole steps, collation and logging included).
    CUDA is synchronised at both ends, so queued kernels count in their own step."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.ends: list[float] = []
            self._started = 0.0

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            _sync()
            self._started = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            _sync()
            self.ends.append(time.perf_counter())
            self.times.append(self.ends[-1] - self._started)

    return StepTimer()


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


@contextlib.contextmanager
def quiet_trl() -> Iterator[None]:
    """No progress bars from datasets' map or trl's reference pass, no transformers info or warnings."""
    import datasets
    import transformers

    bars = not datasets.are_progress_bars_disabled()
    verbosity = transformers.logging.get_verbosity()
    tqdm_env = os.environ.get("TQDM_DISABLE")
    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    os.environ["TQDM_DISABLE"] = "1"  # trl's "Computing reference log probs" bar reads it
    try:
        yield
    finally:
        if bars:
            datasets.enable_progress_bars()
        transformers.logging.set_verbosity(verbosity)
        if tqdm_env is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = tqdm_env


def trl_dpo_train(model: nn.Module, tokenizer: Any, pairs: Sequence[EncodedPair], *, steps: int, batch_size: int,
                  lr: float, beta: float, seed: int, output_dir: str | os.PathLike[str]) -> TrlDpoRun:
    """``steps`` full-batch DPO (sigmoid) steps with ``trl.DPOTrainer`` on a copy of ``model``, fed the
    ids of ``pairs`` unchanged; ``model`` itself is not modified. The settings match
    ``train_preference(method="dpo")``: AdamW (torch defaults, weight decay 0) at a constant ``lr``,
    no gradient clipping, fp32, reference log-probabilities of the initial model precomputed; the
    parameters trained are those with ``requires_grad``. Like any transformers Trainer it seeds torch's
    global RNG with ``seed``."""
    if batch_size != len(pairs):
        raise ValueError(f"batch_size={batch_size} != {len(pairs)} pairs: the two loops shuffle differently, so "
                         "only full-batch training gives both the same batch at every step")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import DPOConfig

    device = next(model.parameters()).device
    # trl patches the model (fused LM head, pad id) and may set the tokenizer's pad token: copies of both
    policy, tokenizer = copy.deepcopy(model).train(), copy.deepcopy(tokenizer)
    dataset = Dataset.from_dict({"prompt_ids": [p.prompt_ids for p in pairs],
                                 "chosen_ids": [p.chosen_ids for p in pairs],
                                 "rejected_ids": [p.rejected_ids for p in pairs]})
    config = DPOConfig(
        output_dir=str(output_dir), max_steps=steps, per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=1, learning_rate=lr, lr_scheduler_type="constant", warmup_steps=0,
        weight_decay=0.0, optim="adamw_torch", max_grad_norm=0.0,  # 0: no clipping, as in our loop
        beta=beta, loss_type=["sigmoid"], max_length=None, precompute_ref_log_probs=True,
        precompute_ref_batch_size=batch_size, gradient_checkpointing=False, bf16=False, fp16=False,
        use_cpu=device.type == "cpu", logging_strategy="steps", logging_steps=1, eval_strategy="no",
        save_strategy="no", report_to=[], disable_tqdm=True, seed=seed, data_seed=seed,
        dataloader_num_workers=0, remove_unused_columns=True,
    )
    timer = step_timer()
    with quiet_trl():
        started = time.perf_counter()
        trainer = _trainer_class()(model=policy, args=config, train_dataset=dataset, processing_class=tokenizer,
                                   callbacks=[timer])
        setup = time.perf_counter() - started
        trainer.remove_callback(PrinterCallback)  # it prints every log dict when tqdm is disabled
        trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry and "step" in entry]
    if len(logs) != steps:
        raise RuntimeError(f"trl logged {len(logs)} training losses for {steps} steps")
    tokens = [b["input_ids"].numel() for b in trainer.fed]
    timed = slice(1, None) if steps > 1 else slice(None)
    return TrlDpoRun(
        losses=[float(e["loss"]) for e in logs],
        reward_accuracy=[float(e["rewards/accuracies"]) for e in logs],
        margins=[float(e["rewards/margins"]) for e in logs],
        seconds_per_step=sorted(timer.times[timed])[len(timer.times[timed]) // 2],  # train_preference's rule
        tokens_per_second=sum(tokens[timed]) / sum(timer.times[timed]),
        setup_seconds=setup,
        step_seconds=timer.times,
        step_ends=timer.ends,
        batches=trainer.fed,
        log_history=list(trainer.state.log_history),
    )


def trl_dpo_run(model: nn.Module, tokenizer: Any, pairs: Sequence[EncodedPair], *, steps: int, batch_size: int,
                lr: float, beta: float, seed: int, output_dir: str | os.PathLike[str]) -> list[float]:
    """trl's per-step DPO training losses (see :func:`trl_dpo_train`)."""
    return trl_dpo_train(model, tokenizer, pairs, steps=steps, batch_size=batch_size, lr=lr, beta=beta, seed=seed,
                         output_dir=output_dir).losses
